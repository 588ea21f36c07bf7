"""The MLflow experiment a sweep writes to: found, or created where its artifacts belong.

Opened once by the Tracker (dlopt.tracking.store) on the driver (docs/architecture.md,
"One MLflow writer: the driver").
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

# MLflow 3's UI opens an experiment by this tag's kind; without it, an experiment with no
# traces may open in the GenAI view. "custom_model_development" is its model-training kind
# (the value MLflow's UI names ExperimentKind.CUSTOM_MODEL_DEVELOPMENT).
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_TAGS = {EXPERIMENT_KIND: "custom_model_development"}


def open_experiment(client, name: str, artifact_root: Optional[Path] = None) -> str:
    """The id of the experiment `name`, created when missing (its artifacts under
    `artifact_root`), tagged with its kind when an older dlopt made it without."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        # a local store's artifacts live beside it (dlopt.tracking.uris.artifact_root),
        # not under whatever the working directory is
        location = (str(artifact_root / re.sub(r"[^\w.-]", "_", name))
                    if artifact_root is not None else None)
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    if exp.tags.get(EXPERIMENT_KIND) is None:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND,
                                  EXPERIMENT_TAGS[EXPERIMENT_KIND])
    return exp.experiment_id
