"""Run a fine-tuning experiment from a config file.

    python -m experiments.run                                   # the embedded default
    python -m experiments.run --config experiments/configs/smollm2.py:lozo,sst2 --config.steps=200
    python -m experiments.run --config ... --config.resume=True  # continue a killed run

The same command runs on a laptop CPU and on every host of a TPU VM slice; there, add
``--config.distributed=auto`` (and a ``--config.mesh``) on every host (see the README).
"""

import sys
from pathlib import Path

from absl import app, logging
from ml_collections import config_flags

from zojax import train

CONFIGS = Path(__file__).parent / "configs"


def check_override_names(argv: list[str]) -> None:
    """Reject ``--config.<field>`` overrides of unknown fields, listing the valid ones."""
    valid = sorted(train.default_config().keys())
    for arg in argv[1:]:
        if arg.startswith("--config."):
            field = arg[len("--config.") :].split("=")[0]
            if field not in valid:
                sys.exit(f"error: unknown config field {field!r}; valid fields: {', '.join(valid)}")


if __name__ == "__main__":
    check_override_names(sys.argv)  # before the flag definition parses the overrides
_CONFIG = config_flags.DEFINE_config_file("config", str(CONFIGS / "default.py"), "Experiment config file.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config.<field>=<value>")
    logging.set_verbosity(logging.ERROR)  # orbax reports routine save timings as warnings
    try:
        train.run(_CONFIG.value)
    except (ValueError, FileExistsError, FloatingPointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
