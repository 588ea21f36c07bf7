"""A sweep whose MLflow server is slow to answer its first requests still starts (issue 30).

A real `mlflow server` (SQLite) behind a loopback proxy that holds every API request arriving
in the first STALL_S seconds until that window ends: the sweep's first `experiments/get-by-name`
outlives the driver's 10 s MLflow HTTP timeout (dlopt.tracking.scope.HTTP_ENV), as on a loaded
machine. The start-up calls retry like the writes (dlopt.tracking.startup), so the sweep opens
its experiment and parent run once the server answers, and finishes with everything logged once.
"""
import os
import signal
import socket
import threading
import time

from mlflow.tracking import MlflowClient

from dlopt import Data, Experiment, Model, Optimizer, Resources, Search, Tracking
from dlopt.driver.sweep import run
from dlopt_testing import free_port, mlflow_server

STALL_S = 15.0


class StallingProxy:
    """Loopback TCP proxy: a request whose first bytes name an `/api/` path and that arrives
    within STALL_S of the first such request waits until that window has passed, then goes
    through; everything else (the /health probe) at once. Counts the requests it held."""

    def __init__(self, upstream: int, stall_s: float):
        self.upstream, self.stall_s = upstream, stall_s
        self.window_end = None
        self.held = 0
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        with conn:
            first = conn.recv(65536)
            if b" /api/" in first.split(b"\r\n", 1)[0]:
                with self.lock:
                    now = time.monotonic()
                    if self.window_end is None:
                        self.window_end = now + self.stall_s
                    wait = self.window_end - now
                    self.held += wait > 0
                if wait > 0:
                    time.sleep(wait)
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                return
            with up:
                up.sendall(first)
                threading.Thread(target=self._pipe, args=(conn, up), daemon=True).start()
                self._pipe(up, conn)

    @staticmethod
    def _pipe(src, dst):
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass

    def close(self):
        self.server.close()


def test_sweep_start_survives_a_server_that_stalls_its_first_requests(tmp_path):
    port = free_port()
    server = mlflow_server(tmp_path / "mlflow.db", tmp_path / "artifacts", port, tmp_path / "server.log")
    proxy = StallingProxy(port, STALL_S)
    try:
        spec = Experiment(
            name="stall", seed=0, epochs=2,
            data=Data(dataset="linear_1d", batch_size=32), model=Model(hidden=[8]),
            optimizer=Optimizer(name="adam", lr=0.01), search=Search(metric="val_loss", mode="min"),
            resources=Resources(num_workers=1), tracking=Tracking(experiment="it-stall"))
        uri = f"http://127.0.0.1:{proxy.port}"
        t0 = time.monotonic()
        run(spec, tracking_uri=uri, storage=str(tmp_path / "ray_results"), progress=False)
        took = time.monotonic() - t0
        assert proxy.held >= 1 and took > STALL_S, (proxy.held, took)
        client = MlflowClient(f"http://127.0.0.1:{port}")
        exp = client.get_experiment_by_name("it-stall")
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if r.data.tags.get("dlopt.role") == "sweep"]
        children = [r for r in runs if r.data.tags.get("dlopt.role") == "trial"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED", runs
        assert len(children) == 1 and children[0].info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(children[0].info.run_id, "train_loss")]
        assert steps == [1, 2]
    finally:
        proxy.close()
        os.killpg(server.pid, signal.SIGKILL)  # the server's own session, started above
        server.wait()
