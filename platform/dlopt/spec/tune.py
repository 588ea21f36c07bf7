"""Search domains a spec field may hold instead of a value.

They mirror `ray.tune`'s sampling functions by name so a spec reads like a Tune
search space, but they are plain Pydantic data: a spec must validate, plan and
serialize without Ray (docs/architecture.md, "Layers"). `dlopt.runtime.search` turns them
into Ray domains.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Domain(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def points(self) -> list[Any]:
        """Values that must satisfy the field's own constraints (bounds or every choice)."""
        raise NotImplementedError


class Choice(_Domain):
    domain: Literal["choice"] = "choice"
    values: list[Any] = Field(min_length=1)

    def points(self):
        return list(self.values)


class Grid(_Domain):
    domain: Literal["grid"] = "grid"
    values: list[Any] = Field(min_length=1)

    def points(self):
        return list(self.values)


class Uniform(_Domain):
    domain: Literal["uniform"] = "uniform"
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"uniform needs low < high, got {self.low} >= {self.high}")
        return self

    def points(self):
        return [self.low, self.high]


class LogUniform(_Domain):
    domain: Literal["loguniform"] = "loguniform"
    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"loguniform needs low < high, got {self.low} >= {self.high}")
        return self

    def points(self):
        return [self.low, self.high]


class RandInt(_Domain):
    """Integers in [low, high), as in `ray.tune.randint`."""

    domain: Literal["randint"] = "randint"
    low: int
    high: int

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"randint needs low < high, got {self.low} >= {self.high}")
        return self

    def points(self):
        return [self.low, self.high - 1]


Domain = Annotated[Union[Choice, Grid, Uniform, LogUniform, RandInt], Field(discriminator="domain")]
DOMAIN_KINDS = {"choice", "grid", "uniform", "loguniform", "randint"}


def choice(values) -> Choice:
    return Choice(values=list(values))


def grid(values) -> Grid:
    return Grid(values=list(values))


# Ray Tune spells it grid_search; accept both.
grid_search = grid


def uniform(low: float, high: float) -> Uniform:
    return Uniform(low=low, high=high)


def loguniform(low: float, high: float) -> LogUniform:
    return LogUniform(low=low, high=high)


def randint(low: int, high: int) -> RandInt:
    return RandInt(low=low, high=high)


def is_domain_dict(value: Any) -> bool:
    return isinstance(value, dict) and value.get("domain") in DOMAIN_KINDS
