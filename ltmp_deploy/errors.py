"""The one exception type for mistakes a user can make (bad files, bad options).

The CLI prints its message as one line and exits non-zero; library callers catch it.
"""


class LTMPError(Exception):
    """A user-facing error: the message names the file or option and says what is wrong."""


class UnsupportedModelError(LTMPError):
    """The model cannot be patched with LTMP (wrong family or an unknown block type)."""
