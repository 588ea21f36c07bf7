"""Layer 8, the MLflow model registry: registering, loading, serving, evaluating models, teachers."""
