"""`python -m vaelab ...` runs the same command line as `vaelab ...`, exit status included."""

import sys

from vaelab.cli import main

sys.exit(main())
