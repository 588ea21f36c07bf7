"""The README's test command, ./run-tests: it is what .ci/run runs, and its set-up steps.

The script is run from a copy in a temporary directory (it works in its own directory), with a
PATH holding only fakes (id, apt-get, sudo) and the few real tools it needs, and a fake .venv
whose pip and python log how they were called: nothing is installed and no pytest is started.
"""

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "run-tests"


def readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"Run the tests[^\n]*\n\n```bash\n([^\n]*)\n```", readme)
    assert m, "README.md: no ```bash block after 'Run the tests'"
    return m.group(1).strip()


def last_command(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")][-1]


def test_ci_runs_exactly_the_readme_test_command():
    assert last_command(ROOT / ".ci" / "run") == readme_test_command()


def test_ci_has_no_install_step_of_its_own():
    ci = (ROOT / ".ci" / "run").read_text()
    for word in ("apt-get", "pip install", "venv"):
        assert word not in "\n".join(
            ln for ln in ci.splitlines() if not ln.lstrip().startswith("#")
        ), word


def test_readme_test_command_is_the_executable_entry_point():
    cmd = readme_test_command()
    assert cmd == "./run-tests"
    assert SCRIPT.is_file()
    assert SCRIPT.stat().st_mode & stat.S_IXUSR
    # git keeps the executable bit: a fresh clone can run it as written in README
    out = subprocess.run(
        ["git", "ls-files", "-s", "run-tests"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    if out:  # tracked (not yet committed while being written)
        assert out.startswith("100755"), out


def _exe(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.fixture
def sandbox(tmp_path):
    """A copy of run-tests with pyproject.toml, a fake .venv, and a bin dir for PATH."""
    work = tmp_path / "repo"
    work.mkdir()
    shutil.copy2(SCRIPT, work / "run-tests")
    shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")
    log = tmp_path / "log"
    log.touch()
    venv_bin = work / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    _exe(venv_bin / "pip", f'echo "pip $*" >> {log}\n')
    _exe(
        venv_bin / "python",
        f'echo "python $* RAY_USAGE_STATS_ENABLED=$RAY_USAGE_STATS_ENABLED '
        f'MLFLOW_ENABLE_TELEMETRY=$MLFLOW_ENABLE_TELEMETRY DO_NOT_TRACK=$DO_NOT_TRACK" >> {log}\n',
    )
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in ("bash", "env", "dirname", "sha256sum", "cat"):
        real = shutil.which(tool)
        assert real, tool
        (bin_ / tool).symlink_to(real)

    def run(*args, uid=1000, missing=None, **fakes):
        _exe(bin_ / "id", f"echo {uid}\n")
        for name, body in fakes.items():
            _exe(bin_ / name.replace("_", "-"), body)
        env = {"PATH": str(bin_), "HOME": str(tmp_path)}
        if missing is not None:
            env["DLOPT_ASSUME_MISSING"] = missing
        return subprocess.run(
            [str(work / "run-tests"), *args],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    run.log = log
    run.work = work
    return run


def test_without_root_or_sudo_it_names_the_install_command_and_stops(sandbox):
    # no apt-get, no sudo on PATH, uid 1000; chromium and its driver are not on PATH either
    # (real detection, no override)
    r = sandbox("-x")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    m = re.search(r"sudo apt-get install -y ([a-z0-9 .-]+)$", lines[0])
    assert m, lines[0]
    pkgs = m.group(1).split()
    assert pkgs[:2] == ["chromium", "chromium-driver"], pkgs
    assert sandbox.log.read_text() == "", (
        "pytest or pip ran although packages are missing"
    )


def test_missing_postgres_is_named(sandbox):
    r = sandbox(missing="postgresql")
    assert r.returncode != 0
    assert r.stderr.strip().endswith("sudo apt-get install -y postgresql"), r.stderr
    assert sandbox.log.read_text() == ""


def test_root_with_failing_apt_names_the_command_without_sudo(sandbox):
    r = sandbox(
        uid=0, missing="chromium chromium-driver postgresql", apt_get="exit 100\n"
    )
    assert r.returncode != 0
    line = r.stderr.strip()
    assert "\n" not in line
    assert line.endswith(": apt-get install -y chromium chromium-driver postgresql"), (
        line
    )
    assert "sudo" not in line
    assert sandbox.log.read_text() == ""


def test_installs_with_sudo_then_sets_up_and_runs_pytest(sandbox):
    r = sandbox(
        "-m",
        "not integration",
        missing="chromium chromium-driver",
        sudo=f'echo "sudo $*" >> {sandbox.log}\nexec "$@"\n',
        apt_get=f'echo "apt-get $* DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> {sandbox.log}\n',
    )
    assert r.returncode == 0, r.stderr
    log = sandbox.log.read_text().splitlines()
    assert (
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver"
        in log
    )
    assert (
        "apt-get install -y -qq chromium chromium-driver DEBIAN_FRONTEND=noninteractive"
        in log
    )
    assert "pip install -q --disable-pip-version-check -e .[dev]" in log
    assert log[-1] == (
        "python -m pytest -q -p no:cacheprovider -m not integration "
        "RAY_USAGE_STATS_ENABLED=0 MLFLOW_ENABLE_TELEMETRY=false DO_NOT_TRACK=1"
    )


def test_second_run_skips_the_set_up(sandbox):
    assert sandbox(missing="").returncode == 0
    assert sandbox("tests/test_spec.py", missing="").returncode == 0
    log = sandbox.log.read_text().splitlines()
    assert [ln for ln in log if ln.startswith("pip ")] == [
        "pip install -q --disable-pip-version-check -e .[dev]"
    ], "pip install ran again although pyproject.toml did not change"
    assert log[-1].startswith(
        "python -m pytest -q -p no:cacheprovider tests/test_spec.py "
    )
    # a changed pyproject.toml installs again
    with open(sandbox.work / "pyproject.toml", "a") as f:
        f.write("\n# changed\n")
    assert sandbox(missing="").returncode == 0
    assert (
        sum(ln.startswith("pip ") for ln in sandbox.log.read_text().splitlines()) == 2
    )
