"""`python -m dlopt`: the same as the `dlopt` console script."""
import sys

from dlopt.cli.main import main

sys.exit(main())
