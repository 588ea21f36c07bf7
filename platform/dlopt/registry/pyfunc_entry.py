"""Models-from-code entry MLflow executes on load: it only imports dlopt's wrapper."""
import mlflow

from dlopt.registry.serving import DloptModel

mlflow.models.set_model(DloptModel())
