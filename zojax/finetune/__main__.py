"""``python -m zojax.finetune``: the ``zojax-train`` command line."""

import sys

from zojax.finetune.cli import main

sys.exit(main())
