"""Hugging Face hub names, offline or online: one line within seconds when a name cannot be had.

``transformers`` and ``datasets`` retry an unreachable hub for tens of seconds, printing a warning
per try, before the error that says what happened. :func:`locate` decides up front, in about a
second: a local directory is used as it is; a name in the Hugging Face cache is used from the
cache (offline, ``local_files_only``) when the hub cannot be reached or ``HF_HUB_OFFLINE`` is set;
a name that is neither cached nor reachable is a one-line :class:`~rdprune.errors.UserError` that
says how to get it here. :func:`load_error` turns the library's errors (a gated model without a
login, an unknown name) into one line.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from rdprune.errors import UserError

#: seconds to wait for the hub before treating it as unreachable
TIMEOUT = 3.0


def hub_reachable(timeout: float = TIMEOUT) -> bool:
    """Whether the hub endpoint answers at all (any HTTP status; proxies from the environment)."""
    from huggingface_hub import constants

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"),
                               timeout=timeout)
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):
        return False
    return True


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for the cache only."""
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cached(name: str, filename: str) -> bool:
    """Whether ``filename`` of the hub repository ``name`` is in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, filename), str)
    except ValueError:  # not a valid repository id
        return False


def locate(name: str, key: str, filename: str = "config.json") -> tuple[str, bool]:
    """Where to load the hub model or tokenizer ``name`` (the setting ``key``) from.

    Returns:
        ``(name or local path, local_files_only)``.

    Raises:
        UserError: not a directory, not cached, and the hub is unreachable or offline mode is on.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), True
    if cached(name, filename):
        return name, offline() or not hub_reachable()
    from huggingface_hub import constants

    how = (f"download it on a machine with internet (`huggingface-cli download {name}`) and "
           f"copy the cache ({constants.HF_HUB_CACHE}) here, or set {key} to a local directory "
           "(a save_pretrained folder)")
    if offline():
        raise UserError(f"{key}={name} is not in the Hugging Face cache and HF_HUB_OFFLINE is "
                        f"set: {how}")
    if not hub_reachable():
        raise UserError(f"{key}={name}: {constants.ENDPOINT} cannot be reached and it is not in "
                        f"the Hugging Face cache: {how}; then HF_HUB_OFFLINE=1 uses the cache")
    return name, False


def load_error(name: str, key: str, error: BaseException) -> UserError:
    """One line for the library's error when loading ``name`` (the setting ``key``) failed."""
    text = " ".join(str(error).split())
    lowered = text.lower()
    if "gated" in lowered or "401" in text or "403" in text or "restricted" in lowered:
        return UserError(f"{key}={name} is gated: accept its license on "
                         f"https://huggingface.co/{name} and log in (`huggingface-cli login`, or "
                         "set HF_TOKEN)")
    if "not a valid model identifier" in lowered or "repository not found" in lowered or \
            "404" in text:
        return UserError(f"{key}={name} is not a model on the Hugging Face hub (nor a local "
                         "directory)")
    return UserError(f"{key}={name} cannot be loaded ({text[:160]})")
