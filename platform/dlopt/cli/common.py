"""What every `dlopt` command shares: loading the spec, exit codes, logging to the terminal.

Imported by dlopt.cli.main and dlopt.cli.submit (main imports submit, never the reverse).
"""
from __future__ import annotations

import logging
import sys

EXIT_INVALID = 2


def load_spec(args):
    """The validated Experiment of `args.spec` (with `--set` overrides); on an invalid spec,
    one line per problem naming the field path, and exit 2 before Ray or MLflow load."""
    from dlopt.spec.load import SpecError, load

    try:
        return load(args.spec, getattr(args, "set", None) or ())
    except SpecError as err:
        for line in err.lines:
            print(line, file=sys.stderr)
        sys.exit(EXIT_INVALID)


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each record (pytest and others swap it)."""

    dlopt_cli = True

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(verbose: bool = False) -> None:
    """dlopt's log records to stderr as plain lines: INFO and up, DEBUG with --verbose.

    The messages carry their own "warning:" / "error:" prefix where they need one. Calling
    it again (main() run twice in one process) replaces the handler instead of adding one.
    """
    logger = logging.getLogger("dlopt")
    for handler in [h for h in logger.handlers if getattr(h, "dlopt_cli", False)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
