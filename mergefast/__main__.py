"""`python -m mergefast` runs the command line."""

from .cli import run

run()
