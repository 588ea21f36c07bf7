"""Layer 2, torch building blocks: datasets, model, init, optimizer, schedule and metric catalogs.

Each catalog is a literal dict name -> builder (docs/architecture.md, "Catalogs"). No Ray, no MLflow.
"""
