"""`python -m dlopt.cli` (what `dlopt submit` runs on a cluster)."""
from dlopt.cli.main import console

console()
