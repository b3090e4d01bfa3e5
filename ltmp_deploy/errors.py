"""The one exception type for mistakes a user can make (bad files, bad options).

The CLI prints its message as one line and exits non-zero; library callers catch it.
"""


class LTMPError(Exception):
    """A user-facing error: the message names the file or option and says what is wrong."""


class UnsupportedModelError(LTMPError):
    """The model cannot be patched with LTMP (wrong family or an unknown block type)."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
