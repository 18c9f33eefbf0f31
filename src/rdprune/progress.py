"""Progress bars for long work: live on a terminal, sparse in batch logs (SLURM files)."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """A tqdm bar that refreshes at most every 30 s when stderr is not a terminal."""
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 30.0)
    return tqdm(iterable, **kwargs)


def close_all() -> None:
    """Close every open bar (clears their lines), e.g. before a one-line message on interrupt."""
    for b in list(getattr(tqdm, "_instances", ())):
        b.close()
