r"""`python -m unfoldmem` runs the command-line interface."""

from unfoldmem.cli import main

main()
