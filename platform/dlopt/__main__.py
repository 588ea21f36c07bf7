"""`python -m dlopt`: the same as the `dlopt` console script."""
from dlopt.cli.main import console

console()
