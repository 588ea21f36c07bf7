"""Layer 5, training: the loop, its strategies (DDP, FSDP, pipeline) and the report cadence.

No Ray, no MLflow (docs/architecture.md, "Layers").
"""
