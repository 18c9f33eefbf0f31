"""User-facing errors.

A :class:`UserError` means the request cannot be satisfied as given (bad sparsity, missing data,
unknown model name, ...). ``run.py`` prints its message as one line and exits non-zero, without a
traceback: the message itself must say what is wrong and how to fix it.
"""


class UserError(Exception):
    """An error in the user's input or environment, reported as one line."""


def one_line(error: BaseException, limit: int | None = 200) -> str:
    """``"Type: first line of the message"`` (just ``"Type"`` without a message), for messages
    that quote another error in one line; the first line is cut to ``limit`` characters."""
    text = str(error).strip()
    first = text.splitlines()[0][:limit] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
