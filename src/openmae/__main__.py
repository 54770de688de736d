"""``python -m openmae`` and ``torchrun -m openmae``."""

import sys

from openmae.cli.main import main

sys.exit(main())
