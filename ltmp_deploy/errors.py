"""The one exception type for mistakes a user can make (bad files, bad options).

The CLI prints its message as one line and exits non-zero; library callers catch it.
"""

from __future__ import annotations


class LTMPError(Exception):
    """A user-facing error: the message names the file or option and says what is wrong."""


class UnsupportedModelError(LTMPError):
    """The model cannot be patched with LTMP (wrong family or an unknown block type)."""


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type when it has none), for one-line errors;
    at most ``limit`` characters when given (a library's message can be a whole page)."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if limit is None else line[:limit]
