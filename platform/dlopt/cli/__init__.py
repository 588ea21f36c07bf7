"""Layer 10, the `dlopt` console script: owns the terminal, `--verbose` and the exit codes."""
from dlopt.cli.main import main

__all__ = ["main"]
