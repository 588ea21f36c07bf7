"""Load a spec file (Python module defining `experiment`, or YAML/JSON) into an Experiment.

Errors come back as `SpecError` holding one line per problem, each naming the field
path, so the CLI can print them and exit 2 before Ray or MLflow start.
"""
from __future__ import annotations

import json
import re
import runpy
import traceback
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from dlopt.spec.experiment import Experiment
from dlopt.spec.paths import join, set_path, shown

# A Python spec builds sections first (`Optimizer(lr=-1)` fails before `Experiment`
# sees it), so the error's location starts inside the section: put the section back.
_SECTION_OF_MODEL = {
    "Data": "data", "Model": "model", "Optimizer": "optimizer", "Schedule": "schedule",
    "Regularization": "regularization", "Search": "search", "Resources": "resources",
    "Tracking": "tracking", "Prune": "compression[prune]", "Quantize": "compression[quantize]",
    "Distill": "compression[distill]", "Experiment": "",
}


class SpecError(Exception):
    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def error_lines(err: ValidationError, prefix: str = "", where: str = "") -> list[str]:
    """One line per problem, each starting with its field path in one style: dotted, list
    indexes in brackets (`model.hidden[1]: must be >= 1`, dlopt.spec.paths.shown). A message
    that starts with a path relative to the failing model (`hidden[1]: ...`, raised by a
    section's own check) is joined onto that model's path. `where` (`file.py:12`) is appended."""
    lines = []
    for e in err.errors(include_url=False):
        path = join(prefix, _clean_loc(e["loc"]))
        msg = e["msg"].removeprefix("Value error, ")
        for part in msg.split("\n"):
            head, sep, rest = part.partition(": ")
            if sep and _looks_like_path(head):
                line = f"{join(path, shown(head))}: {rest}"
            else:
                line = f"{path or 'spec'}: {part}"
            lines.append(f"{line} ({where})" if where else line)
    return lines


def _looks_like_path(text: str) -> bool:
    parts = re.sub(r"\[(\d+|[a-z_]+)\]", "", text).split(".")
    return all(p.isidentifier() or p.isdigit() for p in parts)


def _clean_loc(loc: tuple) -> str:
    """pydantic's location as a path, without the discriminator tag it inserts for stages:
    ("compression", 0, "prune", "x") -> compression[0].x."""
    out = ""
    for i, part in enumerate(loc):
        if i > 0 and isinstance(loc[i - 1], int) and part in ("prune", "quantize", "distill"):
            continue
        out = join(out, f"[{part}]" if isinstance(part, int) else str(part))
    return out


def _user_line(err: BaseException, path: Path) -> str:
    """`file.py:12`: the last line of the spec file itself in the error's traceback."""
    target, line = path.resolve(), None
    for frame in traceback.extract_tb(err.__traceback__):
        if Path(frame.filename).resolve() == target:
            line = frame.lineno
    return f"{path}:{line}" if line is not None else str(path)


def _validate(data: Any) -> Experiment:
    try:
        return Experiment.model_validate(data)
    except ValidationError as err:
        raise SpecError(error_lines(err)) from None


def load_file(path: str | Path) -> Experiment:
    path = Path(path)
    if not path.exists():
        raise SpecError([f"spec: file not found: {path}"])
    if path.suffix in (".yaml", ".yml", ".json"):
        import yaml  # JSON is YAML; one parser for both

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise SpecError([f"spec: cannot parse {path}: {err}"]) from None
        if not isinstance(data, dict):
            raise SpecError([f"spec: {path} must hold a mapping of Experiment fields"])
        return _validate(data)
    if path.suffix != ".py":
        raise SpecError([f"spec: {path}: expected a .py, .yaml, .yml or .json file"])
    try:
        namespace = runpy.run_path(str(path), run_name="__dlopt_spec__")
    except ValidationError as err:
        return _raise_section_error(err, _user_line(err, path))
    except SyntaxError as err:
        raise SpecError([f"spec: {path}:{err.lineno}: {err.msg}"]) from None
    except Exception as err:  # noqa: BLE001 - the user's own code failed: say where
        raise SpecError([f"spec: {_user_line(err, path)}: {type(err).__name__}: {err}"]) from None
    if "experiment" not in namespace:
        raise SpecError([f"spec: {path} must define a variable named `experiment`"])
    experiment = namespace["experiment"]
    if isinstance(experiment, Experiment):
        return experiment
    return _validate(experiment)


def _raise_section_error(err: ValidationError, where: str):
    section = _SECTION_OF_MODEL.get(err.title, err.title.lower())
    raise SpecError(error_lines(err, prefix=section, where=where)) from None


def parse_override(text: str) -> tuple[str, Any]:
    """`--set optimizer.lr=0.01` -> ("optimizer.lr", 0.01); values are JSON, else strings."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise SpecError([f"--set {text}: expected FIELD.PATH=VALUE"])
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def apply_overrides(spec: Experiment, overrides: Iterable[str]) -> Experiment:
    overrides = list(overrides)
    if not overrides:
        return spec
    data = spec.model_dump(mode="json")
    for text in overrides:
        key, value = parse_override(text)
        set_path(data, key, value)
    return _validate(data)


def load(path: str | Path, overrides: Iterable[str] = ()) -> Experiment:
    return apply_overrides(load_file(path), overrides)
