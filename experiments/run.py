"""``python -m experiments.run`` in a checkout: the ``zojax-train`` command line
(``zojax.finetune.cli``), e.g.

    python -m experiments.run                                          # the embedded default
    python -m experiments.run --config=smollm2:lozo,sst2 --config.steps=200 --workdir=runs/x
"""

import sys

from zojax.finetune.cli import main

if __name__ == "__main__":
    sys.exit(main())
