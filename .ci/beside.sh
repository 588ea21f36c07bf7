#!/usr/bin/env bash
# Background load for .ci/run's hermeticity check (issue 30): what another user of the machine
# runs while the tests do. An `mlflow server` on a free loopback port and, in a loop until
# killed, a small `dlopt run` (digits, 1 worker, few epochs) tracking to it, which starts its
# own Ray; everything under its own HOME, Ray temp dir and working folder, $1. It writes its
# pids to $1/pids and stops them itself on SIGTERM (.ci/run's trap sends it).
set -uo pipefail
work="$1"
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$root/.venv/bin/python"
mkdir -p "$work/home" "$work/ray"
export HOME="$work/home" RAY_TMPDIR="$work/ray" PYTHONUNBUFFERED=1
unset MLFLOW_TRACKING_URI RAY_ADDRESS
cd "$work"
port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$py" -m mlflow server --backend-store-uri "sqlite:///$work/mlflow.db" --artifacts-destination \
    "$work/mlartifacts" --host 127.0.0.1 --port "$port" --workers 1 >"$work/server.log" 2>&1 &
server=$!  # its own process group (uvicorn's workers too): stopped as a group
cat >"$work/beside.py" <<'SPEC'
from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking, tune

experiment = Experiment(
    name="ci-beside", seed=0, epochs=3,
    data=Data(dataset="digits", batch_size=64),
    model=Model(hidden=[32]),
    optimizer=Optimizer(name="adam", lr=tune.loguniform(1e-3, 3e-2)),
    search=Search(algorithm="random", metric="val_accuracy", mode="max", num_samples=4,
                  max_concurrent_trials=1),
    resources=Resources(num_workers=1),
    tracking=Tracking(experiment="ci-beside", register_as="ci-beside-model"),
)
SPEC
sweep=""
stop() {
    # the sweep's own process group (its driver and the Ray it started): Ctrl-C, then kill
    [ -n "$sweep" ] && kill -INT -- -"$sweep" 2>/dev/null && sleep 20 && kill -KILL -- -"$sweep" 2>/dev/null
    kill -TERM -- -"$server" 2>/dev/null; sleep 2; kill -KILL -- -"$server" 2>/dev/null
    wait
    exit 0
}
trap stop TERM INT
for _ in $(seq 120); do  # the server's start
    "$py" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=2)" \
        2>/dev/null && break
    sleep 1 & wait $!
done
runs=0
while true; do
    setsid "$py" -m dlopt run beside.py --tracking-uri "http://127.0.0.1:$port" --storage "$work/ray_results" \
        >>"$work/sweeps.log" 2>&1 &
    sweep=$!
    if wait "$sweep"; then
        runs=$((runs + 1))
        echo "$runs" >"$work/sweeps-done"
    else
        sleep 5 & wait $!
    fi
done
