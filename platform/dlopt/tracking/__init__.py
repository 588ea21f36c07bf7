"""Layer 7, MLflow tracking from the driver (docs/architecture.md, "One MLflow writer: the driver").

One concern per module; import the one you need (this package re-exports nothing):
- `uris`: default tracking URI, credentials out of URIs, git commit, fail-fast reachability;
- `scrub`: secrets out of text and out of every MLflow write (`ScrubbingClient`);
- `retry`: transient store errors, bounded retry (`retry_transient`, `RetryingClient`);
- `names`: run names, param text, the metric values of a trial report;
- `store`: the write queue (`Tracker`) and the look-ups `--resume` needs;
- `perturbations`: PBT config changes recorded beside a trial's params;
- `callback`: the Ray Tune callback feeding the Tracker (the only one importing Ray).
`uris`, `scrub`, `retry` and `names` load neither Ray nor MLflow.
"""
