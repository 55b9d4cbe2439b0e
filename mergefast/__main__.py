"""`python -m mergefast` runs the command line."""

from .cli import main

main()
