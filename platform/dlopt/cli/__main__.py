"""`python -m dlopt.cli` (what `dlopt submit` runs on a cluster)."""
import sys

from dlopt.cli.main import main

sys.exit(main())
