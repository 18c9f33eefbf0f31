"""Compose the paper experiments and check them against the official protocol.

The protocol itself (the specification, :func:`~rdprune.report.protocol.describe`) is
:mod:`rdprune.report.protocol`; this module is what needs the project's config directory.

- :func:`check` composes each paper experiment (``experiment=<name>`` from a config directory,
  :data:`rdprune.report.protocol.EXPERIMENTS`) and compares it setting by setting with
  :func:`rdprune.report.protocol.experiment_settings`, target and schedule included.
- :func:`to_markdown` writes that comparison as the tables of ``results/protocol.md``.
- ``python -m rdprune.report.protocol_check [--config-dir DIR] [--out results/protocol.md] [overrides]``
  prints (writes) it; exit status 1 when any setting differs, 2 on bad input (one line).

The config directory is ``--config-dir``, else ``$RDPRUNE_CONF``, else ``./conf`` under the current
directory (:func:`config_dir`): nothing assumes where the package is installed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from omegaconf import DictConfig

from rdprune.run.spec import profiles
from rdprune.errors import UserError
from rdprune.report.protocol import (
    DESCRIPTION,
    EXPERIMENTS,
    FIXES,
    Fix,
    Row,
    compare,
    experiment_settings,
    format_value,
)

#: environment variable naming the config directory (the project's ``conf/``)
CONF_ENV = "RDPRUNE_CONF"


def config_dir(given: str | Path | None = None) -> Path:
    """The config directory: ``given``, else ``$RDPRUNE_CONF``, else ``./conf`` (absolute).

    Raises:
        UserError: the directory chosen holds no ``config.yaml``, or none was given and there is
            no ``./conf`` here.
    """
    for path, source in ((given, "--config-dir"), (os.environ.get(CONF_ENV) or None, CONF_ENV)):
        if path is not None:
            path = Path(path).expanduser().resolve()
            if not (path / "config.yaml").is_file():
                raise UserError(f"{source}={path} is not a config directory (no config.yaml): "
                                "point it at the project's conf/")
            return path
    here = Path.cwd() / "conf"
    if (here / "config.yaml").is_file():
        return here
    raise UserError(f"no config directory: no ./conf under {Path.cwd()}; pass --config-dir "
                    f"(the project's conf/) or set {CONF_ENV}")


def compose_experiment(name: str, overrides: Iterable[str] = (),
                       conf: str | Path | None = None) -> DictConfig:
    """The project's config with ``experiment=name`` and ``overrides`` (Hydra compose API), from
    the config directory ``conf`` (default: :func:`config_dir`)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir(conf))):
        return compose("config", overrides=[f"experiment={name}", *overrides])


def check(names: Iterable[str] | None = None, overrides: Iterable[str] = (),
          conf: str | Path | None = None) -> dict[str, tuple[list[Row], list[Fix]]]:
    """Compose each paper experiment (with ``overrides``, from ``conf``) and compare it with the
    official one.

    Returns:
        ``{experiment: (rows, fixes)}``: every setting compared, and the deliberate fixes.
    """
    conf = config_dir(conf)
    out = {}
    for name in names or EXPERIMENTS:
        p = EXPERIMENTS[name]
        cfg = compose_experiment(name, overrides, conf)
        fixes = [f for f in FIXES if f.applies(p.model, p.dataset, profiles(cfg))]
        out[name] = (compare(cfg, experiment_settings(p)), fixes)
    return out


def to_markdown(results: Mapping[str, tuple[list[Row], list[Fix]]], command: str) -> str:
    """The comparison as Markdown: a summary, then one table per experiment and its fixes."""
    lines = ["# Paper experiments vs the official protocol", "", "Made by:", "",
             f"    {command}", "",
             "Each paper experiment (`conf/experiment/`) composed and compared, setting by "
             "setting, with the official code's (`src/rdprune/report/protocol.py`, written from "
             "its `tools/modelloaders.py`). Deliberate differences that fix official bugs are code "
             "behaviour, listed separately with their reasons.", "",
             "| experiment | differences | deliberate fixes |", "|---|---:|---|"]
    for name, (rows, fixes) in results.items():
        n = sum(r.status == "differs" for r in rows)
        lines.append(f"| `{name}` | {n} | " + ", ".join(f"bug {f.bug}" for f in fixes) + " |")
    for name, (rows, fixes) in results.items():
        lines += ["", f"## {name}", "", "| setting | key | this config | official | |",
                  "|---|---|---|---|---|"]
        for r in rows:
            mark = {"differs": "**DIFFERS**", "n/a": "n/a"}.get(r.status, "")
            lines.append(f"| {DESCRIPTION.get(r.key, r.key)} | `{r.key}` | "
                         f"{format_value(r.value)} | {format_value(r.official)} | {mark} |")
        lines += ["", "Deliberate fixes of official bugs:", ""]
        lines += [f"- bug {f.bug}, {f.what}: {f.ours}. Official: {f.official}." for f in fixes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m rdprune.report.protocol_check [--config-dir DIR] [--out FILE] [overrides...]``: print
    (and write) the table; 0: no difference, 1: some setting differs, 2: bad input."""
    p = argparse.ArgumentParser(prog="python -m rdprune.report.protocol_check",
                                description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", help="config overrides applied to every experiment")
    p.add_argument("--config-dir", help=f"the project's conf/ (default: ${CONF_ENV}, else ./conf)")
    p.add_argument("--out", help="also write the Markdown to this file")
    args = p.parse_args(argv)
    command = " ".join(["python -m rdprune.report.protocol_check",
                        *(sys.argv[1:] if argv is None else argv)])
    try:
        results = check(overrides=args.overrides, conf=args.config_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = to_markdown(results, command)
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return int(any(r.status == "differs" for rows, _ in results.values() for r in rows))


if __name__ == "__main__":
    sys.exit(main())
