"""Dotted paths into spec JSON: where the search domains are, setting a value, MLflow params."""
from __future__ import annotations

import re
from typing import Any, Union

from pydantic import BaseModel

from dlopt.spec import tune as _tune


# ---------------------------------------------------------------- domains and resolution
def domains(spec: Union[BaseModel, dict]) -> dict[str, dict]:
    """Dotted path -> domain (as JSON) for every field of the spec that holds one."""
    data = spec.model_dump(mode="json") if isinstance(spec, BaseModel) else spec
    found: dict[str, dict] = {}

    def walk(node, path):
        if _tune.is_domain_dict(node):
            found[path] = node
        elif isinstance(node, dict):
            for k, v in node.items():
                if path == "" and k == "search":
                    continue  # pbt_mutations hold domains for PBT, not for the initial space
                walk(v, f"{path}.{k}" if path else k)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}.{i}")

    walk(data, "")
    return found


def shown(path: str) -> str:
    """A path as errors print it: dotted, list indexes in brackets (`compression[0].sparsity`).

    One style for every message (pydantic's own locations, section checks, cross-field checks);
    `--set` and `set_path` accept it as well as the dotted form (`compression.0.sparsity`).
    """
    return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", path)


def join(*parts: str) -> str:
    """`join("model", "hidden[1]")` -> `model.hidden[1]`; empty parts are skipped."""
    out = ""
    for part in parts:
        if part:
            out = part if not out else out + (part if part.startswith("[") else "." + part)
    return out


def set_path(data: dict, path: str, value) -> None:
    """Set a path ("optimizer.lr", "model.hidden.0" or "model.hidden[0]") inside spec JSON."""
    keys = re.sub(r"\[(\d+)\]", r".\1", path).split(".")
    node = data
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value



def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted params for MLflow (`optimizer.lr`); lists of scalars stay one value."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
    elif isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}.{i}"))
    else:
        out[prefix] = data
    return out
