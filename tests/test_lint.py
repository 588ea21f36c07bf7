"""The linter passes: ruff, configured in pyproject.toml ([tool.ruff]), over the code, the
tests, the benchmarks and the experiments. Its RUF100 makes a `# noqa` that suppresses
nothing fail, so every noqa left names a finding of a selected rule."""
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["platform", "tests", "benchmarks", "experiments"]


def _ruff() -> str:
    return str(Path(sys.executable).with_name("ruff"))


def test_ruff_passes():
    out = subprocess.run([_ruff(), "check", "--no-cache", *CHECKED], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_ruff_is_the_pinned_dev_dependency():
    """The ruff that ran is the one pyproject.toml pins, so its rules mean the same everywhere."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [d for d in project["project"]["optional-dependencies"]["dev"] if d.startswith("ruff")]
    out = subprocess.run([_ruff(), "--version"], capture_output=True, text=True, check=True)
    assert pins == [f"ruff=={out.stdout.split()[1]}"]
    assert "RUF100" in project["tool"]["ruff"]["lint"]["select"]


def test_ruff_reports_a_stale_noqa(tmp_path):
    """The check above could fail: a noqa with nothing to suppress is a finding."""
    (tmp_path / "stale.py").write_text("x = 1  # noqa: E731\n")
    out = subprocess.run([_ruff(), "check", "--no-cache", "--config",
                          str(ROOT / "pyproject.toml"), str(tmp_path / "stale.py")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and "RUF100" in out.stdout, out.stdout + out.stderr


def test_benchmarks_and_experiments_import_only_names_that_exist():
    """What ruff cannot see across modules: a benchmark's `from dlopt.x import name` whose
    name moved (benchmarks run by hand, so nothing else would notice)."""
    import ast

    from dlopt_testing import resolve

    stale = []
    for path in sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("experiments/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dlopt"):
                stale += [f"{path.name}:{node.lineno} {node.module}.{a.name}" for a in node.names
                          if not resolve(f"{node.module}.{a.name}")]
    assert stale == []
