"""``python -m longreach ...``: the same command line as the ``longreach`` script."""

import sys

from .cli import main

sys.exit(main())
