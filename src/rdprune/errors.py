"""User-facing errors.

A :class:`UserError` means the request cannot be satisfied as given (bad sparsity, missing data,
unknown model name, ...). ``run.py`` prints its message as one line and exits with code 2,
without a traceback: the message itself must say what is wrong and how to fix it.

They are the standard exception types too, so that a caller of the API can catch them as usual:
a bad value is a ``ValueError`` (:class:`UserError`), a value of the wrong type also a
``TypeError`` (:class:`UserTypeError`), a missing file or folder also a ``FileNotFoundError``
(:class:`UserFileNotFoundError`).
"""


class UserError(ValueError):
    """An error in the user's input or environment, reported as one line."""


class UserTypeError(UserError, TypeError):
    """A user's argument or setting of the wrong type (e.g. ``calib`` neither a tensor nor a
    DataLoader)."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user pointed at does not exist (a checkpoint, a dataset)."""


def one_line(error: BaseException, limit: int | None = 200) -> str:
    """``"Type: first line of the message"`` (just ``"Type"`` without a message), for messages
    that quote another error in one line; the first line is cut to ``limit`` characters."""
    text = str(error).strip()
    first = text.splitlines()[0][:limit] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
