"""A model version the sweep registered: what the driver, the review and the CLI pass on.

One typed record for both ways a sweep registers (the single best trial with the spec's
alias, or every Pareto-optimal trial with the front's aliases), made in dlopt.driver.finalize
and dlopt.driver.front; the test-split report adds its metrics by making a new one
(docs/architecture.md, "Registration after the sweep").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    alias: Optional[str]  # the alias shown first (None: a Pareto version the aliases skip)
    run_id: Optional[str]  # the trial's MLflow run the model was logged under
    trial_id: str
    aliases: tuple[str, ...] = ()  # every alias pointing here (Pareto: several may)
    pareto_rank: Optional[int] = None  # multi-objective sweeps only
    objectives: Optional[dict[str, float]] = None  # multi-objective: the trial's values
    test_metrics: dict[str, float] = field(default_factory=dict)  # the test-split report

    @property
    def uri(self) -> str:
        """How a user loads it: by alias where it has one, else by version."""
        if self.alias:
            return f"models:/{self.name}@{self.alias}"
        return self.version_uri

    @property
    def version_uri(self) -> str:
        """This exact version, whatever the aliases point at later."""
        return f"models:/{self.name}/{self.version}"

    @property
    def label(self) -> str:
        """`NAME vVERSION`, as tags and reports name it."""
        return f"{self.name} v{self.version}"
