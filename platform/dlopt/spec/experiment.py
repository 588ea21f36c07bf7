"""The experiment spec: the user-facing contract, validated before anything starts.

This package imports neither ray nor torch (docs/architecture.md, "Layers"): `dlopt validate`
and `dlopt plan` must answer in a second and refuse bad input before Ray or MLflow run.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, model_validator

from dlopt.spec import checks
from dlopt.spec.fields import S, _Base
from dlopt.spec.paths import domains, set_path
from dlopt.spec.sections import (
    Data,
    Model,
    Optimizer,
    Regularization,
    Resources,
    Schedule,
    Search,
    StageSpec,
    Tracking,
)


class Experiment(_Base):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    seed: int = 0
    epochs: S[int, Field(ge=1)] = 10
    data: Data = Field(default_factory=Data)
    model: Model = Field(default_factory=Model)
    optimizer: Optimizer = Field(default_factory=Optimizer)
    schedule: Schedule = Field(default_factory=Schedule)
    regularization: Regularization = Field(default_factory=Regularization)
    precision: S[Literal["32", "bf16-mixed", "16-mixed"]] = "32"
    compression: S[list[StageSpec]] = Field(default_factory=list)
    search: Search = Field(default_factory=Search)
    resources: Resources = Field(default_factory=Resources)
    tracking: Tracking = Field(default_factory=Tracking)

    @model_validator(mode="after")
    def _cross_field(self):
        problems = checks.cross_field_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def spec_hash(self) -> str:
        """Content hash of the resolved spec; tags runs and registered versions."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def task(self) -> str:
        regression = self.data.task == "regression" and (self.data.dataset == "synthetic"
                                                         or self.data.source is not None)
        return "regression" if self.data.dataset == "linear_1d" or regression else "classification"


def resolve(spec_json: dict, assignment: dict[str, Any]) -> "Experiment":
    """A concrete Experiment: the base spec with each domain replaced by its sampled value."""
    data = json.loads(json.dumps(spec_json))
    for path in sorted(assignment, key=lambda p: p.count(".")):
        set_path(data, path, assignment[path])
    spec = Experiment.model_validate(data)
    left = domains(spec)
    if left:
        raise ValueError(f"unresolved search domains: {', '.join(left)}")
    return spec
