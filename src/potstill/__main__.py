"""`python -m potstill ...`: the `potstill` command, for an environment whose scripts are not on PATH."""

from potstill.cli import main

main()
