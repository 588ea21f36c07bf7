"""Search domains a spec field may hold instead of a value.

They mirror `ray.tune`'s sampling functions by name so a spec reads like a Tune
search space, but they are plain Pydantic data: a spec must validate, plan and
serialize without Ray (docs/architecture.md, "Layers"). `dlopt.runtime.search` turns them
into Ray domains.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Domain(BaseModel):
    # Built unchecked by `tune.loguniform(...)` and friends; checked (`checked`) when placed in
    # a field, so an error names the field (`optimizer.lr: tune.loguniform low must be > 0`)
    # rather than the domain (`loguniform.low: ...`), which the user cannot place.
    model_config = ConfigDict(extra="forbid", frozen=True, revalidate_instances="always")

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
KINDS = {c.model_fields["domain"].default: c for c in (Choice, Grid, Uniform, LogUniform, RandInt)}
DOMAIN_KINDS = set(KINDS)


def _problem(kind: str, e: dict) -> str:
    """One pydantic error of a domain, in the words of the spec file (`tune.loguniform(...)`)."""
    field = ".".join(str(p) for p in e["loc"])
    ctx = e.get("ctx") or {}
    if e["type"] == "greater_than":
        return f"tune.{kind} {field} must be > {ctx['gt']:g}"
    if e["type"] == "too_short":
        return f"tune.{kind} needs at least {ctx.get('min_length', 1)} value"
    msg = e["msg"].removeprefix("Value error, ")
    if not field:
        return f"tune.{msg}" if msg.startswith(kind) else f"tune.{kind}: {msg}"
    return f"tune.{kind} {field}: {msg}"


def checked(value: Any) -> "_Domain":
    """A domain (instance or its JSON) validated; ValueError with one line per problem, each
    worded for the field the domain was placed in (the caller's error names that field)."""
    data = value.__dict__ if isinstance(value, _Domain) else value
    kind = data.get("domain")
    if kind not in KINDS:
        raise ValueError(f"unknown search domain {kind!r}; valid: {', '.join(sorted(KINDS))}")
    try:
        return KINDS[kind].model_validate(dict(data))
    except ValidationError as err:
        raise ValueError("; ".join(_problem(kind, e) for e in err.errors())) from None


def choice(values) -> Choice:
    return Choice.model_construct(values=list(values))


def grid(values) -> Grid:
    return Grid.model_construct(values=list(values))


# Ray Tune spells it grid_search; accept both.
grid_search = grid


def uniform(low: float, high: float) -> Uniform:
    return Uniform.model_construct(low=low, high=high)


def loguniform(low: float, high: float) -> LogUniform:
    return LogUniform.model_construct(low=low, high=high)


def randint(low: int, high: int) -> RandInt:
    return RandInt.model_construct(low=low, high=high)


def is_domain_dict(value: Any) -> bool:
    return isinstance(value, dict) and value.get("domain") in DOMAIN_KINDS
