"""A Hydra callback that refuses to reuse the run directory of a finished run.

``python run.py hydra.run.dir=<dir>`` on a directory that already holds a ``metrics.json`` would
let Hydra overwrite that run's ``.hydra/`` files (and a failure would put a ``FAILED`` marker next
to valid results). Hydra writes them before the job starts, so the check runs earlier, at
``on_run_start``. A requeued or resumed job is unaffected: its directory has no metrics.json yet.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class FinishedRunGuard(Callback):
    """Exit with a one-line error if the single run's directory holds a finished run."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        out = Path(str(config.hydra.run.dir))
        if (out / "metrics.json").is_file():
            print(f"error: hydra.run.dir={out} holds a finished run (metrics.json): choose a new "
                  "directory (or delete that run) - nothing was written", file=sys.stderr)
            sys.exit(2)
