"""The one exception type for problems a user can cause and fix (bad recipe, missing data, ...)."""
from __future__ import annotations


class SemiclustError(Exception):
    """A user-fixable problem; the message names the problem and the fix.

    The CLI prints it as one paragraph (no traceback) and exits with `exit_code`:
    2 for invalid input (recipe, arguments, files), 1 for a run that failed while training.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def examples(items: list, limit: int = 5, quote: bool = True) -> str:
    """The first `limit` items of a list for a message, quoted, and how many more there are:
    "'a', 'b', 'c' and 4 more". Every "first few, then the rest" list of a message goes through here."""
    shown = ", ".join(f"'{item}'" if quote else str(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
