"""Distillation teachers on the worker: the model files the driver shipped, rebuilt here.

The driver (dlopt.registry.teachers.fetch) resolves each `Distill.teacher` URI once, to one
registry version, and reads its files. They travel as bytes in the trial config
(docs/architecture.md, "Only JSON crosses processes") as `{uri: TeacherFiles.to_payload()}`
and are handed to the Distill stage's constructor (dlopt.stages.catalog.build); `load`
rebuilds the teacher with `build_from_dir` (no pickle). No MLflow here, and no module state:
a run without the teacher's files handed to it cannot distill.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

# what crosses processes: {uri: {"name", "version", "files": {file name: bytes}}}
TeacherPayloads = Mapping[str, dict]


@dataclass(frozen=True)
class TeacherFiles:
    """One teacher, pinned to a registry version, with its saved model files."""

    name: str
    version: str
    files: Mapping[str, bytes]

    def to_payload(self) -> dict:
        return {"name": self.name, "version": self.version, "files": dict(self.files)}

    @classmethod
    def from_payload(cls, payload: dict) -> "TeacherFiles":
        return cls(str(payload["name"]), str(payload["version"]), dict(payload["files"]))


def pinned(payloads: Optional[TeacherPayloads], uri: str) -> TeacherFiles:
    """The files the driver handed over for `uri`; an error names the URI if there are none."""
    if not payloads or uri not in payloads:
        raise LookupError(f"distillation teacher {uri} was not handed to this run: the driver "
                          "resolves teachers (dlopt.registry.teachers.fetch) and passes them to "
                          "the loop as `teachers`")
    return TeacherFiles.from_payload(payloads[uri])


def load(teacher: TeacherFiles, device: str = "cpu"):
    """The teacher module, in eval mode and without gradients, on `device`."""
    # torch loads here, not when the driver imports this module
    from dlopt.artifact.files import build_from_dir

    with tempfile.TemporaryDirectory(prefix="dlopt-teacher-") as d:
        for name, data in teacher.files.items():
            (Path(d) / name).write_bytes(data)
        model = build_from_dir(Path(d))
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
