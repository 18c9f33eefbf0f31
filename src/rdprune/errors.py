"""User-facing errors.

A :class:`UserError` means the request cannot be satisfied as given (bad sparsity, missing data,
unknown model name, ...). ``run.py`` prints its message as one line and exits non-zero, without a
traceback: the message itself must say what is wrong and how to fix it.
"""


class UserError(Exception):
    """An error in the user's input or environment, reported as one line."""
