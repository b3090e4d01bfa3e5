"""The cost-model file (``ltmp-deploy cost``): its one reader, and the latency it predicts for a fixed-mode
schedule. Standard library, numpy and jsonschema only (the field side reads it too).

A block entering with ``n`` tokens and leaving with ``k`` is predicted to cost its attention over ``n``
(the passing block's time at ``n`` less its MLP's), its MLP over ``k``, and, when it merges or prunes,
the extra of a reducing block at ``n``: that of a block that only merges where it prunes nothing
(``merge_extra_ms``; files measured before it was timed give the merging and pruning block's). The block
and MLP tables are interpolated linearly between the token counts they were measured at (a count the
backend runs faster stays faster); the extras, each the difference of four timings, are smoothed by a
least-squares quadratic in ``n``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ltmp_deploy.errors import LTMPError
from ltmp_deploy.files import read_json
from ltmp_deploy.schemas import check

SCHEMA = "ltmp-deploy-cost-model/1"
_PAIRS = (("tokens", "block_ms"), ("tokens", "mlp_ms"), ("reduce_tokens", "fixed_extra_ms"))
_PAIRS += (("reduce_tokens", "threshold_extra_ms"), ("reduce_tokens", "merge_extra_ms"))


def check_cost_model(doc: Any, where: str) -> dict[str, Any]:
    """``doc`` when it is a whole cost model (schema, and every table as long as its token counts,
    which rise), else a one-line LTMPError starting with ``where``."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise LTMPError(f"{where}: not an ltmp-deploy cost model (schema {found!r}, expected {SCHEMA!r})")
    check(doc, "cost-model", where)
    seen = set()
    for i, entry in enumerate(doc["batches"]):
        if entry["batch"] in seen:
            raise LTMPError(f"{where}: $.batches[{i}]: batch {entry['batch']} is given twice")
        seen.add(entry["batch"])
        for tokens, values in _PAIRS:
            if values not in entry:  # optional: the schema names the required ones
                continue
            if len(entry[tokens]) != len(entry[values]):
                count = f"{len(entry[values])} values for {len(entry[tokens])} token counts"
                raise LTMPError(f"{where}: $.batches[{i}].{values}: {count}")
            if any(b <= a for a, b in zip(entry[tokens], entry[tokens][1:])):
                raise LTMPError(f"{where}: $.batches[{i}].{tokens}: token counts must rise")
    return doc


def read_cost_model(path: str | os.PathLike) -> CostModel:
    """The cost model in ``path``, checked."""
    return CostModel(check_cost_model(read_json(path, "a cost model"), str(path)))


@dataclass(frozen=True)
class CostModel:
    doc: dict[str, Any]

    @property
    def batches(self) -> list[int]:
        return [e["batch"] for e in self.doc["batches"]]

    def _entry(self, batch: int) -> dict[str, Any]:
        for entry in self.doc["batches"]:
            if entry["batch"] == batch:
                return entry
        raise LTMPError(f"the cost model has batch sizes {self.batches}, not {batch}: measure it with --batch {batch}")

    def block_ms(self, batch: int, n_in: float, n_out: float, kind: str | None = "fixed") -> float:
        """Predicted milliseconds of one block at ``batch``; ``kind``: the extra it pays, "fixed" (merges
        and prunes), "merge" (only merges), "threshold", or None (passes its tokens on)."""
        e = self._entry(batch)
        attention = np.interp(n_in, e["tokens"], e["block_ms"]) - np.interp(n_in, e["tokens"], e["mlp_ms"])
        ms = attention + np.interp(n_out, e["tokens"], e["mlp_ms"])
        if kind is not None:
            ms += _smooth(e["reduce_tokens"], e[_extra_key(e, kind)], np.asarray([n_in]))[0]
        return float(ms)

    def tables(self, batch: int, num_tokens: int) -> tuple[np.ndarray, ...]:
        """At every token count 0..``num_tokens``: attention, MLP, and fixed mode's reduction extra for a block
        that merges and prunes and for one that only merges (ms)."""
        e = self._entry(batch)
        n = np.arange(num_tokens + 1)
        mlp = np.interp(n, e["tokens"], e["mlp_ms"])
        attention = np.interp(n, e["tokens"], e["block_ms"]) - mlp
        extras = (_smooth(e["reduce_tokens"], e[_extra_key(e, kind)], n) for kind in ("fixed", "merge"))
        return (attention, mlp, *extras)

    def schedule_ms(self, batch: int, num_tokens: int, merges: Sequence[int], keeps: Sequence[int]) -> float:
        """Predicted milliseconds of a fixed schedule's blocks (the patch embedding and head left out)."""
        total, n = 0.0, num_tokens
        for r, k in zip(merges, keeps):
            total += self.block_ms(batch, n, k, fixed_kind(r, n, k))
            n = k
        return total


def fixed_kind(r: int, n: int, k: int) -> str | None:
    """The extra a fixed-mode block pays: "merge" when it only merges, "fixed" when it prunes, None when
    it keeps all ``n`` tokens."""
    if k == n and not r:
        return None
    return "merge" if r and k == n - r else "fixed"


def _extra_key(entry: dict[str, Any], kind: str) -> str:
    key = f"{kind}_extra_ms"
    return key if key in entry else "fixed_extra_ms"


def _smooth(tokens: Sequence[int], extra: Sequence[float], at: np.ndarray) -> np.ndarray:
    """A reducing block's extra at the counts ``at``: a least-squares polynomial (quadratic with enough
    points) through the measured extras, never below zero."""
    degree = min(2, len(tokens) - 1)
    if degree < 1:
        return np.full(at.shape, max(float(extra[0]), 0.0))
    coef = np.polyfit(np.asarray(tokens, float), np.asarray(extra, float), degree)
    return np.clip(np.polyval(coef, at.astype(float)), 0.0, None)
