"""Field types of the spec: catalog names and searchable fields (`S[...]`).

This module imports neither ray nor torch (docs/architecture.md, "Layers"): `dlopt validate` and
`dlopt plan` must answer in a second and refuse bad input before Ray or MLflow run.
Catalog names are listed here as plain tuples; tests check they match the torch-side
catalogs, so a name the spec accepts always builds.

Any field typed `S[...]` may hold a search domain from `dlopt.tune` instead of a
value; each bound or choice of a domain is checked against that field's own
constraints, so `tune.loguniform(1e-4, 1)` on a field with `gt=0` passes and
`tune.uniform(-1, 1)` does not.
"""
from __future__ import annotations

import re
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    TypeAdapter,
    ValidationError,
    WrapSerializer,
    WrapValidator,
)

from dlopt.spec import tune as _tune

# ---------------------------------------------------------------- catalog names
DATASETS = ("digits", "synthetic", "linear_1d", "mnist", "fashion_mnist", "cifar10")
LOCAL_DATASETS = ("mnist", "fashion_mnist", "cifar10")  # read from Data.root (dlopt.ml.vision_data)
ARCHS = ("mlp", "linear", "lenet5", "cnn", "resnet")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "leaky_relu", "elu", "silu")
INITS = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
         "orthogonal", "normal_fan_in")
OPTIMIZERS = ("gd", "sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("constant", "step", "multistep", "exponential", "inverse_time", "linear", "cosine",
             "cosine_restarts", "one_cycle")
ALGORITHMS = ("grid", "random", "bayesian", "bayesian_gp", "hyperopt")
SCHEDULERS = ("fifo", "asha", "hyperband", "median", "pbt")
# A distillation teacher: a registered model version by alias or number.
TEACHER_URI = re.compile(r"^models:/(?P<name>[^/@]+)(@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


def _is_import_path(name: str) -> bool:
    """Custom components are named "pkg.module:attr" (docs/architecture.md, "Catalogs")."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr and all(p.isidentifier() for p in module.split(".")))


def _catalog_name(catalog: tuple[str, ...], what: str, custom: bool = True):
    def check(value: str) -> str:
        if value in catalog or (custom and _is_import_path(value)):
            return value
        extra = ' or an import path "pkg.module:attr"' if custom else ""
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(catalog)}{extra}")

    return check


def Name(catalog: tuple[str, ...], what: str, custom: bool = True):
    from pydantic import AfterValidator

    return Annotated[str, AfterValidator(_catalog_name(catalog, what, custom))]


# ---------------------------------------------------------------- searchable fields
def _domain_check(adapter_holder: dict, tp):
    def adapter() -> TypeAdapter:
        if "a" not in adapter_holder:
            adapter_holder["a"] = TypeAdapter(tp)
        return adapter_holder["a"]

    def check(value, handler):
        if _tune.is_domain_dict(value) or isinstance(value, _tune._Domain):
            value = _tune.checked(value)  # its own checks, reported at this field
        if not isinstance(value, _tune._Domain):
            return handler(value)
        normalized = []
        for point in value.points():
            try:
                checked = adapter().validate_python(point)
            except ValidationError as err:
                first = err.errors()[0]
                where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
                raise ValueError(
                    f"tune.{value.domain} value {point!r} is invalid for this field"
                    f"{' at ' + where.lstrip('.') if where else ''}: {first['msg']}"
                ) from None
            normalized.append(adapter().dump_python(checked, mode="json"))
        if isinstance(value, (_tune.Choice, _tune.Grid)):
            value = type(value)(values=normalized)
        return value

    return check


def _domain_dump(value, handler):
    if isinstance(value, _tune._Domain):
        return value.model_dump(mode="json")
    return handler(value)


class _SearchableFactory:
    """`S[float]`: a float, or a search domain whose every point is a valid float here."""

    def __getitem__(self, item):
        # S[float, Field(gt=0)]: the constraints travel inside the type, so a domain's
        # bounds are checked against them too.
        tp = Annotated[item[0], *item[1:]] if isinstance(item, tuple) else item
        return Annotated[tp, WrapValidator(_domain_check({}, tp)), WrapSerializer(_domain_dump)]


S = _SearchableFactory()


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _points(value) -> list:
    """Every value a field can take (its bounds or choices when it holds a domain)."""
    if isinstance(value, _tune._Domain):
        return value.points()
    return [value]
