"""Layer 3, saved models: safetensors weights + the resolved spec, dense or compact (sparse int8).

What a trial saves and what the registry, serving and `dlopt.load_model` rebuild. No Ray, no MLflow.
"""
