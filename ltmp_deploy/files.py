"""Writing files whole or not at all.

Every file the toolkit produces goes through :func:`atomic_output`: the content is written to a
temporary file in the same folder and renamed into place only when writing finished, so an
interrupted run never leaves a half-written checkpoint, graph or engine behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ltmp_deploy.errors import LTMPError, first_line


def ensure_writable(path: str | os.PathLike) -> Path:
    """Fail early, before long work, when ``path`` cannot be written."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise LTMPError(f"{target}: cannot write, folder {folder} does not exist")
    _probe(folder, f"{target}: cannot write, folder {folder} is not writable")
    if target.is_dir():
        raise LTMPError(f"{target}: is a folder, expected a file path")
    return target


def ensure_writable_folder(path: str | os.PathLike, option: str = "") -> Path:
    """Fail early, before long work, when files cannot be written into the folder ``path`` (made
    later if missing). ``option`` (e.g. "--triton-repo") is named in the message."""
    folder = Path(path)
    label = f"{option} {folder}" if option else str(folder)
    if folder.exists() and not folder.is_dir():
        raise LTMPError(f"{label}: is a file, not a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise LTMPError(f"{label}: cannot be made, {existing} is a file")
    _probe(existing, f"{label}: cannot write into {existing}; choose another folder")
    return folder


def _identity(path: str | os.PathLike) -> tuple[str, tuple[int, int] | None]:
    """The resolved path and, for an existing file, its (device, inode): a link or a second name of
    the same file gives the same identity."""
    try:
        st = os.stat(path)
        inode: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except OSError:
        inode = None
    return os.path.realpath(path), inode


def refuse_overwriting_inputs(
    outputs: Iterable[tuple[str, str | os.PathLike | None]], inputs: Iterable[str | os.PathLike | None]
) -> None:
    """A one-line LTMPError, before anything is written, when an output (``(option, path)``) is one
    of the command's inputs: the same path, or the same file through a link or another name."""
    known: dict[object, str] = {}
    for item in inputs:
        if item is None or not os.path.exists(item) or os.path.isdir(item):
            continue
        real, inode = _identity(item)
        known[real] = known[inode] = os.fspath(item)
    for option, out in outputs:
        if out is None:
            continue
        real, inode = _identity(out)
        same = known.get(real) or (known.get(inode) if inode is not None else None)
        if same is not None:
            label = f"{option} {os.fspath(out)}" if option else os.fspath(out)
            raise LTMPError(f"{label}: is the input {same}; writing it would destroy it, choose another path")


def _probe(folder: Path, message: str) -> None:
    """Write and drop a file in ``folder``: the mode bits do not tell (root ignores them, a read-only
    mount does not)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise LTMPError(f"{message} ({err.strerror or err})") from None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` if the block succeeds."""
    target = ensure_writable(path)
    folder = target.parent if str(target.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".part", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); a finished output gets the mode any new file
        # would get here, so a shared model folder stays readable by the team.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces (models and engines run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: str | os.PathLike, what: str) -> object:
    """The JSON document in ``path``; a one-line LTMPError naming the file when it is missing or not
    readable JSON, saying it is not ``what`` (e.g. "a bench result")."""
    import json

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LTMPError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise LTMPError(f"{path}: not {what} (not readable JSON: {first_line(err)})") from None
