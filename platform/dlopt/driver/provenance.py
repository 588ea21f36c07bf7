"""Where a sweep came from: the experiment file, its git commit, who ran it, the command.

The sweep's parent run carries these as MLflow's system tags, so the UI shows the source and
the review's "Reproduce" section can print the command. The experiment file is named by the
caller (the CLI passes the file it loaded); a sweep started from a Python script records the
script, as MLflow itself does.
"""
from __future__ import annotations

import getpass
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from dlopt.tracking.uris import git_commit


def _dlopt_args(argv: Sequence[str]) -> Optional[list[str]]:
    """The arguments after the program when argv is a `dlopt ...` call (console script or -m)."""
    if not argv:
        return None
    prog = Path(argv[0])
    if prog.name == "dlopt" or (prog.name == "__main__.py" and prog.parent.name in ("dlopt", "cli")):
        return list(argv[1:])
    return None


def source_tags(argv: Sequence[str] = (), spec_file: Optional[str] = None,
                commit: Optional[str] = None, find_commit: bool = True) -> dict[str, str]:
    """MLflow's system tags for the run's source: the experiment file, its git commit, the command.

    `spec_file` is the experiment file when the caller loaded one (`dlopt run FILE` passes
    FILE); without it, a Python script in `argv` (`dlopt.run(experiment)` in a script) is the
    source. The command is `dlopt ...` when argv is a `dlopt run|submit` call, else
    `python SCRIPT ...`. The commit is the one checked out where the source file lives (else
    the working directory).
    """
    argv = list(argv or sys.argv)
    args = _dlopt_args(argv)
    source, command = spec_file, None
    if args and args[0] in ("run", "submit"):
        command = " ".join(shlex.quote(a) for a in ["dlopt", *args])
    elif argv and argv[0] and argv[0] != "-c":
        source = source or argv[0]
        command = " ".join(shlex.quote(a) for a in ["python", *argv])
    tags = {"mlflow.source.type": "LOCAL", "mlflow.user": getpass.getuser()}
    if source:
        tags["mlflow.source.name"] = source
    if command:
        tags["dlopt.command"] = command[:5000]
    if commit is None and find_commit:
        folder = Path(source).resolve().parent if source and Path(source).exists() else None
        commit = (git_commit(folder) if folder else None) or git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags
