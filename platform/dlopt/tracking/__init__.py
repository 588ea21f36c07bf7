"""Layer 7, MLflow tracking from the driver: URIs, scrubbing, retries, the write queue, the Tune callback.

Import the submodule you need: `dlopt.tracking.scrub` and `dlopt.tracking.uris` load neither Ray nor MLflow.
"""
