"""The command line: ``zojax-train``, ``python -m zojax.finetune`` and, in a checkout,
``python -m experiments.run`` all run :func:`main`.

    zojax-train                                          # the embedded default, in runs/default
    zojax-train --config=smollm2:lozo,sst2 --config.data_dir=data --workdir=runs/sst2
    zojax-train --config=my_config.py:arg --config.steps=200
    zojax-train export --workdir=runs/sst2 --out=hf      # a run's checkpoint -> transformers folder
    zojax-train --help                                   # every config field, one line each

Run the same command again to continue a killed run (bit-exact) or, once finished, to see
its summary.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

CONFIGS = Path(__file__).parent / "configs"
USAGE = """usage: zojax-train [--config=NAME[:ARG] | --config=FILE.py[:ARG]] [--workdir=DIR] [--config.FIELD=VALUE ...]
       zojax-train export --workdir=DIR [--step=N | --step=best] [--out=DIR] [--adapter]

Fine-tunes a language model as the config says, in the run folder DIR (the config's workdir).
Running the same command again continues a killed run, or shows a finished run's summary.
"""


def bundled() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.py") if not p.stem.startswith("_"))


def load_config(spec: str):
    """The config of ``--config=spec``: a bundled name or a .py file, with an optional
    ``:argument`` for its ``get_config``."""
    name, _, argument = spec.partition(":")
    path = Path(name) if name.endswith(".py") or Path(name).is_file() else CONFIGS / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"unknown config {name!r}: not a file, and the bundled configs are {bundled()}")
    module_spec = importlib.util.spec_from_file_location(f"zojax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(argument) if argument else module.get_config()


def parse_value(field: str, text: str, current):
    """``text`` as the type of the field's ``current`` value."""
    try:
        if isinstance(current, bool):
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
    except ValueError:
        raise ValueError(f"--config.{field}: {text!r} is not a {type(current).__name__}") from None
    return text


def split_arguments(argv: list[str]) -> list[tuple[str, str | None]]:
    """``--name=value`` / ``--name value`` / ``--flag`` as (name, value) pairs."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; use --config.<field>=<value>")
        name, eq, value = arg[2:].partition("=")
        if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--") and name not in ("help", "adapter"):
            value, eq = argv[i + 1], "="
            i += 1
        out.append((name, value if eq else None))
        i += 1
    return out


def help_text() -> str:
    from zojax.finetune.config import fields
    from zojax.optim import registry

    width = max(len(f.name) for f in fields())
    lines = [USAGE, f"Bundled configs: {', '.join(bundled())}.", "Optimizers:"]
    lines += [f"  {n:<16} {registry.get(n).doc}" for n in registry.names()]
    lines += ["", "Config fields (--config.FIELD=VALUE; default in brackets; * may change when a run continues):"]
    lines += [f"  {f.name:<{width}} {'*' if f.resumable else ' '} {f.doc} [{f.default!r}]" for f in fields()]
    return "\n".join(lines)


def configure(argv: list[str]):
    """The config of the command line ``argv`` (without the program name)."""
    from zojax.finetune.config import fields

    pairs = split_arguments(argv)
    known = {f.name for f in fields()}
    spec, overrides = "default", []
    for name, value in pairs:
        if name == "config":
            spec = value or ""
        elif name == "workdir":
            overrides.append(("workdir", value))
        elif name == "profile":
            overrides.append(("profile", value or "5"))
        elif name.startswith("config."):
            field = name[len("config.") :]
            if field not in known:
                raise ValueError(f"unknown config field {field!r}; valid fields: {', '.join(sorted(known))}")
            if value is None:
                raise ValueError(f"--config.{field} needs a value")
            overrides.append((field, value))
        else:
            raise ValueError(f"unknown option --{name}; see --help")
    cfg = load_config(spec)
    for field, value in overrides:
        cfg[field] = parse_value(field, value, cfg[field])
    return cfg


def export_command(argv: list[str]) -> None:
    from zojax.finetune.export import export_run

    options = dict(split_arguments(argv))
    unknown = set(options) - {"workdir", "step", "out", "adapter"}
    if unknown or not options.get("workdir"):
        raise ValueError(f"export takes --workdir=DIR [--step=N|best] [--out=DIR] [--adapter]; got {sorted(options)}")
    step = options.get("step") or "best"
    out = export_run(Path(options["workdir"]), None if step == "best" else int(step), options.get("out"),
                     adapter="adapter" in options)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    """Run (or continue) the run the command line describes; errors print one line and
    exit 1."""
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(help_text())
        return 0
    # zojax needs no torch: transformers' "PyTorch was not found" advice does not apply.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # orbax reports routine save timings as warnings
    from zojax.finetune.loop import run

    try:
        if argv[:1] == ["export"]:
            export_command(argv[1:])
        else:
            run(configure(argv))
    except (ValueError, FileExistsError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
