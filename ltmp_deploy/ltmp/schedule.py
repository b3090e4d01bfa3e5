"""Fixed-mode schedules: per block, how many sources merge (r) and how many tokens remain (k)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ltmp_deploy.errors import LTMPError


@dataclass(frozen=True)
class Schedule:
    """Per block ``(r_l, k_l)``: ``r_l`` sources merge, then ``k_l`` tokens are kept."""

    merges: tuple[int, ...]
    keeps: tuple[int, ...]

    @classmethod
    def from_pairs(cls, pairs: Sequence[Sequence[int]]) -> Schedule:
        try:
            merges = tuple(int(r) for r, _ in pairs)
            keeps = tuple(int(k) for _, k in pairs)
        except (TypeError, ValueError) as err:
            raise LTMPError(f"schedule: expected a list of [r, k] pairs, got {pairs!r}") from err
        return cls(merges, keeps)

    def pairs(self) -> list[list[int]]:
        return [[r, k] for r, k in zip(self.merges, self.keeps)]

    def token_counts(self, num_tokens: int) -> list[tuple[int, int]]:
        """(tokens entering, tokens leaving) for every block."""
        counts, n = [], num_tokens
        for k in self.keeps:
            counts.append((n, k))
            n = k
        return counts

    def validate(self, depth: int, num_tokens: int, num_prefix: int) -> None:
        """Raise LTMPError unless every block's (r, k) is possible for the tokens it receives."""
        if len(self.merges) != depth:
            raise LTMPError(f"schedule has {len(self.merges)} blocks, the model has {depth}")
        n = num_tokens
        for i, (r, k) in enumerate(zip(self.merges, self.keeps)):
            mergeable = max(0, (n + 1) // 2 - (num_prefix + 1) // 2)  # non-prefix sources
            if not 0 <= r <= mergeable:
                raise LTMPError(f"schedule block {i}: r={r} but only {mergeable} of its {n} tokens can merge")
            if not num_prefix <= k <= n - r:
                raise LTMPError(
                    f"schedule block {i}: k={k} must lie in [{num_prefix}, {n - r}] ({n} tokens in, {r} merged)"
                )
            n = k

    @classmethod
    def identity(cls, depth: int, num_tokens: int) -> Schedule:
        return cls((0,) * depth, (num_tokens,) * depth)
