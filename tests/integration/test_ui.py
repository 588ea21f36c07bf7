"""Review in the MLflow UI, checked for real: `dlopt ui` starts MLflow's server (`mlflow ui`)
on loopback over a fresh SQLite store, the `dlopt` CLI runs a sweep against it over HTTP, then
its REST API and headless Chromium (Selenium) on the UI pages check what a person sees.

Screenshots land in test-artifacts/ui/ (gitignored). Chromium comes from Debian
(`apt-get install chromium chromium-driver`, done by .ci/run); without it this test fails.
"""
import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = ROOT / "test-artifacts" / "ui"
EXPERIMENT = "ui-review"
SPEC = '''
from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking, tune

experiment = Experiment(
    name="ui-sweep", seed=0, epochs=3,
    data=Data(dataset="digits", batch_size=64),
    model=Model(hidden=[64]),
    optimizer=Optimizer(name="adam", lr=tune.grid([0.003, 0.03])),
    search=Search(algorithm="grid", metric="val_accuracy", mode="max", max_concurrent_trials=1),
    resources=Resources(num_workers=1),
    tracking=Tracking(experiment="ui-review", register_as="ui-model"),
)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not healthy after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    """Stop the server we started: its own process group (uvicorn and job runner included)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def git_head():
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def api(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def artifact_text(base: str, run_id: str, path: str) -> str:
    query = urllib.parse.urlencode({"path": path, "run_uuid": run_id})
    with urllib.request.urlopen(f"{base}/get-artifact?{query}", timeout=30) as resp:
        return resp.read().decode()


def tags_of(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`dlopt ui` with no flags in a fresh folder: a real `mlflow ui` (MLflow's server) on
    127.0.0.1 over the default local store, ./mlflow.db (SQLite), artifacts in ./mlartifacts."""
    work = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    # its own HOME: `dlopt ui` prefers ~/dlopt/mlflow.db when one exists (a sweep run as a
    # Ray job leaves it there), and this test is about the folder's own store
    home = work / "home"
    home.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
           "HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "dlopt.cli", "ui", "--port", str(port)],
                            cwd=work, env=env, stdout=open(work / "server.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc)
        yield {"url": base, "log": work / "server.log", "store": work / "mlflow.db"}
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def sweep(server, tmp_path_factory):
    """`dlopt run` of a 2-trial digits sweep (1 worker, 3 epochs) against the server."""
    server = server["url"]
    work = tmp_path_factory.mktemp("ui-sweep")
    SHOTS.mkdir(parents=True, exist_ok=True)
    spec = (SHOTS / "ui_sweep.py").relative_to(ROOT)  # inside the checkout: a git commit applies
    (ROOT / spec).write_text(SPEC)
    # the real console entry, from the repository root (its git commit is the source's)
    out = subprocess.run([sys.executable, "-m", "dlopt.cli", "run", str(spec), "--tracking-uri",
                          server, "--storage", str(work / "ray")], cwd=ROOT, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    exp = api(server, f"experiments/get-by-name?experiment_name={EXPERIMENT}")["experiment"]
    runs = api(server, "runs/search", {"experiment_ids": [exp["experiment_id"]],
                                       "max_results": 100})["runs"]
    parents = [r for r in runs if "mlflow.parentRunId" not in tags_of(r)]
    assert len(parents) == 1, [r["info"]["run_name"] for r in runs]
    parent = parents[0]
    children = [r for r in runs if tags_of(r).get("mlflow.parentRunId") == parent["info"]["run_id"]]
    return {"out": out, "exp_id": exp["experiment_id"], "parent": parent, "children": children,
            "runs": runs, "spec": spec}


def test_terminal_shows_table_and_summary_without_library_noise(sweep, server):
    server = server["url"]
    out, parent = sweep["out"], sweep["parent"]
    stdout = out.stdout
    assert re.search(r"-- ui-sweep-\d{8}-\d{6}: 2/2 trials finished \(0 running, 0 pending, 2 done\)",
                     stdout), stdout
    assert re.search(r"trial-00[12] lr=0.03\s+DONE\s+epoch\s+3/3\s+val_accuracy 0\.\d+", stdout), stdout
    assert re.search(r"sweep ui-sweep-\d{8}-\d{6}: 2/2 trials ok in \d+ s", stdout)
    assert re.search(r"best trial trial-00[12] lr=0\.0?03 \(val_accuracy = 0\.\d+\)", stdout), stdout
    assert "registered models:/ui-model@champion (version 1)" in stdout
    route = f"#/experiments/{sweep['exp_id']}/runs/{parent['info']['run_id']}?workflowType=machine_learning"
    assert f"open the UI: {server}/{route}" in stdout
    both = stdout + out.stderr
    for noise in ("Configuration for experiment", "View detailed results here", "View run",
                  "UserWarning", "Successfully registered model", "Created version", " INFO "):
        assert noise not in both, (noise, both)


def test_rest_parent_child_names_tags_and_artifacts(sweep, server):
    server = server["url"]
    parent, children = sweep["parent"], sweep["children"]
    pid = parent["info"]["run_id"]
    assert len(sweep["runs"]) == 3 and len(children) == 2
    assert re.fullmatch(r"ui-sweep-\d{8}-\d{6}", parent["info"]["run_name"])
    names = sorted(c["info"]["run_name"] for c in children)
    assert [n.split(" ")[1] for n in names] in (["lr=0.003", "lr=0.03"], ["lr=0.03", "lr=0.003"])
    assert sorted(n.split(" ")[0] for n in names) == ["trial-001", "trial-002"]

    tags = tags_of(parent)
    assert tags["mlflow.source.name"] == str(sweep["spec"])
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"
    if git_head():  # a git checkout: the commit checked out at the sweep is recorded
        commit = tags["mlflow.source.git.commit"]
        ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=ROOT)
        assert ancestor.returncode == 0, commit
    note = tags["mlflow.note.content"]
    best_child = next(c for c in children if c["info"]["run_id"] in note.split("**Best trial:**")[1]
                      .splitlines()[0])
    assert f"**Best trial:** [{best_child['info']['run_name']}]" in note
    assert "**2/2 trials ok**" in note
    assert "**Registered:** [ui-model version 1](#/models/ui-model/versions/1) as `@champion`" in note
    assert f"dlopt run {sweep['spec']} --tracking-uri {server}" in note
    assert f"get-artifact?path=review%2Flearning_curves.png&run_uuid={pid}" in note
    for name in names:
        assert f"[{name}](" in note

    listed = {f["path"] for f in api(server, f"artifacts/list?run_id={pid}&path=review")["files"]}
    # 2 trials: parallel coordinates, but too few for importance (dlopt.driver.importance)
    assert listed == {"review/results.csv", "review/results.html", "review/learning_curves.png",
                      "review/parallel_coordinates.png", "review/parallel_coordinates.html"}
    assert "**Stopped:** all 2 trials ran." in note
    table = list(csv.DictReader(io.StringIO(artifact_text(server, pid, "review/results.csv"))))
    assert sorted(r["trial"] for r in table) == names
    assert all(float(r["val_accuracy"]) > 0.8 for r in table)
    for child in children:
        cid = child["info"]["run_id"]
        files = {f["path"] for f in api(server, f"artifacts/list?run_id={cid}")["files"]}
        # no compression stages: no compression report (nothing to report)
        assert "spec.json" in files and "compression_report.json" not in files, files
        assert tags_of(child)["dlopt.model_checkpoint"]


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(f"headless Chromium is required: {missing} not found "
                    "(apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"dlopt-chromium-{os.getpid()}"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={profile}", "--window-size=1400,1100"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def visible_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def wait_for(driver, predicate, what: str, timeout: float = 90.0):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: predicate(d))
    except Exception as err:  # any failure: keep a screenshot, then say what was missing
        driver.save_screenshot(str(SHOTS / "failure.png"))
        raise AssertionError(f"not visible after {timeout} s: {what}\n{visible_text(driver)[:3000]}") from err


def close_assistant(driver) -> None:
    """The UI opens its 'MLflow Assistant' side panel on a first visit; a person closes it."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label=Close]"):
        if button.is_displayed():
            button.click()


def test_browser_experiment_page_lists_sweep_and_trials(sweep, server, browser):
    server = server["url"]
    from selenium.webdriver.common.by import By

    parent_name = sweep["parent"]["info"]["run_name"]
    child_names = [c["info"]["run_name"] for c in sweep["children"]]
    browser.get(f"{server}/#/experiments/{sweep['exp_id']}?workflowType=machine_learning")
    wait_for(browser, lambda d: parent_name in visible_text(d), f"parent run {parent_name}")
    close_assistant(browser)
    # children are grouped under the sweep's run: expand it as a person would
    expander = browser.find_element(By.CSS_SELECTOR, ".ag-row button.du-bois-light-btn-link")
    expander.click()
    wait_for(browser, lambda d: all(n in visible_text(d) for n in child_names),
             f"child runs {child_names}")
    for name in child_names:
        link = browser.find_element(By.XPATH, f"//a[normalize-space()='{name}']")
        assert link.is_displayed()
    assert sweep["spec"].name[:8] in visible_text(browser)  # the Source column
    browser.save_screenshot(str(SHOTS / "experiment.png"))


def test_browser_parent_run_shows_description_and_learning_curves(sweep, server, browser):
    server = server["url"]
    from selenium.webdriver.common.by import By

    parent = sweep["parent"]
    pid = parent["info"]["run_id"]
    child_names = [c["info"]["run_name"] for c in sweep["children"]]
    browser.get(f"{server}/#/experiments/{sweep['exp_id']}/runs/{pid}?workflowType=machine_learning")
    wait_for(browser, lambda d: "trials ok" in visible_text(d), "the run description")
    close_assistant(browser)
    text = visible_text(browser)
    assert parent["info"]["run_name"] in text and "Best trial:" in text
    for name in child_names:  # "Child runs" in the run's details
        assert name in text, name
    browser.save_screenshot(str(SHOTS / "parent-run.png"))

    more = [b for b in browser.find_elements(By.XPATH, "//*[normalize-space()='Show more']")
            if b.is_displayed()]
    assert more, "the description has no 'Show more' control"
    more[0].click()
    image = wait_for(
        browser, lambda d: next((i for i in d.find_elements(By.TAG_NAME, "img")
                                 if "learning_curves.png" in (i.get_attribute("src") or "")
                                 and d.execute_script("return arguments[0].complete && "
                                                      "arguments[0].naturalWidth", i)), None),
        "the learning-curve image")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", image)
    assert image.is_displayed()
    assert browser.execute_script("return arguments[0].naturalWidth", image) > 500
    assert image.size["width"] > 300 and image.size["height"] > 150
    # the trials table in the description names every child and links to its run
    for name in child_names:
        link = browser.find_element(By.XPATH, f"//a[normalize-space()='{name}']")
        assert f"/runs/{next(c['info']['run_id'] for c in sweep['children'] if c['info']['run_name'] == name)}" \
            in link.get_attribute("href")
    browser.save_screenshot(str(SHOTS / "parent-run-curves.png"))


def test_browser_shows_parallel_coordinates(sweep, server, browser):
    """The review's parallel-coordinates plot inline in the description (the HTML page is
    checked in tests/test_importance.py; the UI's artifact route does not render it)."""
    server = server["url"]
    from selenium.webdriver.common.by import By

    pid = sweep["parent"]["info"]["run_id"]
    browser.get(f"{server}/#/experiments/{sweep['exp_id']}/runs/{pid}?workflowType=machine_learning")
    wait_for(browser, lambda d: "trials ok" in visible_text(d), "the run description")
    close_assistant(browser)
    more = [b for b in browser.find_elements(By.XPATH, "//*[normalize-space()='Show more']")
            if b.is_displayed()]
    if more:  # the browser may keep the description expanded from the test before
        more[0].click()
    image = wait_for(
        browser, lambda d: next((i for i in d.find_elements(By.TAG_NAME, "img")
                                 if "parallel_coordinates.png" in (i.get_attribute("src") or "")
                                 and d.execute_script("return arguments[0].complete && "
                                                      "arguments[0].naturalWidth", i)), None),
        "the parallel-coordinates image")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", image)
    assert image.is_displayed() and image.size["width"] > 300
    browser.save_screenshot(str(SHOTS / "parent-run-parallel.png"))


def test_dlopt_ui_serves_local_store_on_loopback(server):
    """The server above is `dlopt ui`: it printed its loopback URL and serves ./mlflow.db."""
    first = server["log"].read_text().splitlines()[0]
    port = server["url"].rsplit(":", 1)[1]
    assert first == (f"MLflow UI for sqlite:///{server['store']} at "
                     f"http://127.0.0.1:{port}/#/experiments?workflowType=machine_learning")
    assert server["store"].stat().st_size > 0
    names = {e["name"] for e in api(server["url"], "experiments/search",
                                    {"max_results": 10})["experiments"]}
    assert "Default" in names
    with urllib.request.urlopen(server["url"] + "/", timeout=10) as resp:
        assert resp.status == 200 and b"<html" in resp.read().lower()
