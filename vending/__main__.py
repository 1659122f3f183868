"""``python -m vending``: the same command as the ``vending`` console script."""

import sys

from vending.cli import main

sys.exit(main())
