"""Layer 7, MLflow tracking from the driver (docs/architecture.md, "One MLflow writer: the driver").

One concern per module; import the one you need (this package re-exports nothing):
- `uris`: default tracking URI, credentials out of URIs, git commit, fail-fast reachability;
- `scrub`: secrets out of text and out of every MLflow write (`ScrubbingClient`);
- `retry`: transient store errors, bounded retry (`retry_transient`, `RetryingClient`);
- `names`: run names, param text, the metric values of a trial report;
- `store`: the write queue (`Tracker`, used through its methods and read-only properties)
  and the look-ups `--resume` needs; `records` builds and makes its write records,
  `experiments` opens the sweep's experiment, `journal` and `coalesce` serve the queue;
- `scope`: what the driver's process gets while a sweep writes (MLflow's URI and HTTP
  settings, `sqlite`'s WAL listener), each restored on exit;
- `perturbations`: PBT config changes recorded beside a trial's params;
- `callback`: the Ray Tune callback feeding the Tracker (the only one importing Ray).
`uris`, `scrub`, `retry` and `names` load neither Ray nor MLflow (`uris.sqlite_path` is
dlopt's one parser of SQLite URIs).
"""
