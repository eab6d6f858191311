"""`python -m vaelab ...` runs the same command line as `vaelab ...`."""

from vaelab.cli import main

main()
