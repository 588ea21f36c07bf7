"""Driver-side checks that need the outside world, run by `dlopt run` before Ray starts.

`spec` validation is pure (no Ray, no torch, no MLflow). Two refusals need more:
- can a trial ever be placed? For a local run dlopt itself decides how many logical CPUs
  Ray gets (`sweep.local_cpus_needed`), so the answer is exact: it oversubscribes the
  machine's cores up to `MAX_LOCAL_OVERSUBSCRIPTION` times (DDP on a 2-core laptop) and
  no further, and GPUs cannot be invented. For `--address` the cluster is only known after
  connecting, and an autoscaling cluster may still grow, so `cluster_warnings` only warns.
- does a distillation teacher `models:/NAME@ALIAS` exist in the registry? Asked on the
  driver (workers hold no MLflow credentials); a SQLite store that does not exist yet is
  not created just to find it empty.
- can a custom arch do what its compression asks? Built with the dataset's shapes: exported
  to ONNX and quantized (`export_problems`), traced by torch.fx for structured pruning
  (`traceable_problems`), each refused with the library's own reason.
Problems come back as `SpecError` lines naming the field, so the CLI exits 2.
"""
from __future__ import annotations

import os
from typing import Optional

from dlopt.registry import teachers
from dlopt.spec import Experiment
from dlopt.spec.checks import _compression_options
from dlopt.spec.fields import TEACHER_URI, _points
from dlopt.spec.load import SpecError
from dlopt.tracking.uris import redact_uri, sqlite_path

# A local run may put up to this many training processes on one core (slow but it runs);
# a trial that needs more can never be placed on this machine.
MAX_LOCAL_OVERSUBSCRIPTION = 4


def local_capacity(count_gpus: bool = True) -> dict[str, float]:
    """What a local Ray started by dlopt can ever offer: logical CPUs and real GPUs.

    Counting GPUs imports torch (~1.5 s on the driver): skipped when nothing asks for one."""
    gpus = 0
    try:
        if count_gpus:
            import torch

            gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA means no GPUs
        gpus = 0
    return {"CPU": float((os.cpu_count() or 1) * MAX_LOCAL_OVERSUBSCRIPTION), "GPU": float(gpus)}


def local_gpus(spec: Experiment) -> Optional[float]:
    """GPUs a local run's trials can use (torch.cuda.device_count()); None for a CPU spec,
    which counts none (and loads no torch for it)."""
    return local_capacity(True)["GPU"] if spec.resources.use_gpu else None


def placement_problems(spec: Experiment, capacity: dict[str, float], where: str) -> list[str]:
    """One trial's bundle (num_workers x resources per worker) against what `where` has."""
    res = spec.resources
    problems = []
    cpus = res.num_workers * res.cpus_per_worker
    if res.cpus_per_worker > capacity.get("CPU", 0):
        problems.append(f"resources.cpus_per_worker: {res.cpus_per_worker:g} CPUs per worker, but "
                        f"{where} can offer at most {capacity.get('CPU', 0):g}")
    elif cpus > capacity.get("CPU", 0):
        problems.append(f"resources.num_workers: {res.num_workers} workers x {res.cpus_per_worker:g} "
                        f"CPUs = {cpus:g} CPUs per trial, but {where} can offer at most "
                        f"{capacity.get('CPU', 0):g}; no trial could ever start")
    return problems + gpu_placement_problems(res, capacity.get("GPU", 0.0), where)


def gpu_placement_problems(res, gpus: float, where: str) -> list[str]:
    """One trial's GPUs (num_workers x gpus_per_worker) against the GPUs `where` has.

    Sums over the machine: a worker's GPUs must be on one node, which a local run (one node)
    meets whenever the sum fits."""
    if not res.use_gpu:
        return []
    if gpus <= 0:
        return [f"resources.use_gpu: trials need GPUs, but {where} has none"]
    need = res.num_workers * res.worker_gpus
    if res.worker_gpus > gpus:
        return [f"resources.gpus_per_worker: {res.worker_gpus:g} GPUs per worker, but {where} "
                f"has {gpus:g}"]
    if need > gpus + 1e-9:
        return [f"resources.num_workers: {res.num_workers} workers x {res.worker_gpus:g} GPU(s) "
                f"= {need:g} GPUs per trial, but {where} has {gpus:g}"]
    return []


def teacher_problems(spec: Experiment, tracking_uri: str) -> list[str]:
    """Every `Distill.teacher` must name an existing registered model version."""
    wanted = []
    for options in _compression_options(spec.compression):
        for i, stage in enumerate(options):
            if stage.stage == "distill":
                wanted.append((f"compression[{i}].teacher", stage.teacher))
    if not wanted:
        return []
    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        return [f"{field}: {uri} not found: the MLflow store {redact_uri(tracking_uri)} does not "
                "exist yet" for field, uri in wanted]
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    problems = []
    for field, uri in wanted:
        if not TEACHER_URI.match(uri):
            continue  # the spec's own validation refuses a malformed URI
        try:
            teachers.resolve_version(client, uri)
        except MlflowException:
            problems.append(f"{field}: {uri} not found in the model registry at "
                            f"{redact_uri(tracking_uri)}")
    return problems


def export_problems(spec: Experiment) -> list[str]:
    """A custom arch that is quantized must export to ONNX and leave no float Linear/Conv.

    The catalog's archs are known to (tests/test_onnx_int8.py); a custom one is built here with
    the dataset's shapes and run through the same export and ONNX Runtime quantization a trial
    does at fit_end (dlopt.ml.onnx_int8), so a model that cannot be exported is refused before
    Ray starts instead of failing after training."""
    stages = [(i, s) for options in _compression_options(spec.compression)
              for i, s in enumerate(options) if s.stage == "quantize"]
    archs = [a for a in _points(spec.model.arch) if ":" in a]
    if not stages or not archs:
        return []
    # deferred on purpose: torch and ONNX only when a custom arch is quantized
    from dlopt.ml import data as data_mod
    from dlopt.ml import models, onnx_int8

    datasets = data_mod.load(spec.data, spec.seed)
    problems = []
    for arch in archs:
        try:
            model = models.build(spec.model.model_copy(update={"arch": arch}),
                                 datasets.input_shape, datasets.out_features)
        except Exception:  # noqa: BLE001 - building is the trial's to report, not export's
            continue
        try:
            int8 = onnx_int8.quantize(onnx_int8.export(model, datasets.val.x[:1]), "dynamic")
        except Exception as err:  # noqa: BLE001 - any exporter error means: cannot export
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            problems.append(f"model.arch: {arch!r} cannot be exported to ONNX for int8 "
                            f"(compression.{stages[0][0]}): {first}")
            continue
        left = onnx_int8.unquantized_layers(int8)
        if left:
            problems.append(f"compression.{stages[0][0]}: ONNX Runtime cannot quantize "
                            f"{left[0]} of arch {arch!r}; int8 would leave it in float")
        elif not any(op in onnx_int8.op_counts(int8) for op in ("MatMulInteger", "ConvInteger")):
            problems.append(f"model.arch: {arch!r} has no Linear or Conv layer ONNX Runtime "
                            f"can quantize (compression.{stages[0][0]})")
    return problems


def traceable_problems(spec: Experiment) -> list[str]:
    """A custom arch that is pruned structurally must be an nn.Sequential chain
    (dlopt.ml.shrink) or torch.fx-traceable (its dependency groups, dlopt.ml.residual).

    Built here with the dataset's shapes and traced as the trial's Prune stage would at setup,
    so an untraceable model is refused with fx's reason before Ray starts, not in a trial."""
    stages = [i for options in _compression_options(spec.compression)
              for i, s in enumerate(options) if s.stage == "prune" and s.structured]
    archs = [a for a in _points(spec.model.arch) if ":" in a]
    if not stages or not archs:
        return []
    # deferred on purpose: torch only when a custom arch is pruned structurally
    from dlopt.ml import data as data_mod
    from dlopt.ml import models, residual, shrink

    datasets = data_mod.load(spec.data, spec.seed)
    problems = []
    for arch in archs:
        try:
            model = models.build(spec.model.model_copy(update={"arch": arch}),
                                 datasets.input_shape, datasets.out_features)
            shrink.chain(model)
            continue  # a chain: cut by dlopt.ml.shrink, no tracing needed
        except ValueError:
            pass
        except Exception:  # noqa: BLE001 - building is the trial's to report
            continue
        try:
            residual.check_traceable(model)
        except ValueError as err:
            problems.append(f"model.arch: {arch!r} cannot be pruned structurally "
                            f"(compression[{stages[0]}]): {str(err)[:300]}")
            continue
        if spec.resources.strategy == "fsdp":
            problems.append(f"resources.strategy: 'fsdp': structured pruning of the graph model "
                            f"{arch!r} (compression[{stages[0]}]) masks whole dependency groups; "
                            "not implemented on FSDP shards (use strategy 'ddp')")
    return problems


def augment_problems(spec: Experiment) -> list[str]:
    """Augmentation a custom dataset cannot take: crop/flip/cutmix on rows that are not images,
    mixup/cutmix on a regression task. The spec checks the built-in datasets without data
    (dlopt.spec.augmentation); a custom dataset's rows and task are known once it loads, so it
    is loaded here once, as a trial would, before Ray starts."""
    aug = spec.regularization.augment
    custom = [d for d in _points(spec.data.dataset) if ":" in d]
    if aug is None or not custom:
        return []
    # deferred on purpose: torch and the user's dataset only when a custom dataset is augmented
    from dlopt.ml import data as data_mod
    from dlopt.stages import augment

    problems = []
    for dataset in custom:
        datasets = data_mod.load(spec.data.model_copy(update={"dataset": dataset}), spec.seed)
        try:
            augment.build(_widest(aug), spec.seed, 0, datasets.input_shape, datasets.task,
                          datasets.out_features)
        except ValueError as err:
            problems.append(f"{err} (dataset {dataset!r})")
    return list(dict.fromkeys(problems))


def _widest(aug):
    """The Augment with every searched field at the value that asks most of the data."""
    values = {name: max(_points(getattr(aug, name)))
              for name in ("crop_padding", "flip", "mixup_alpha", "cutmix_alpha")}
    return aug.model_copy(update=values)


def check(spec: Experiment, tracking_uri: str, address: Optional[str]) -> None:
    """Raise SpecError before Ray starts when the run can never succeed."""
    problems = []
    if not address:
        problems += placement_problems(spec, local_capacity(spec.resources.use_gpu), "this machine")
    problems += teacher_problems(spec, tracking_uri)
    problems += export_problems(spec)
    problems += traceable_problems(spec)
    problems += augment_problems(spec)
    problems += source_problems(spec)
    problems += local_copy_problems(spec)
    if problems:
        raise SpecError(problems)


def source_problems(spec: Experiment) -> list[str]:
    """A streamed source's problems, from its files' metadata only (dlopt.ml.sources.scan:
    a missing path, an empty split, a class folder without images, labels outside the
    classes, image headers of different sizes); a function source: can it be imported."""
    source = spec.data.source
    if source is None:
        return []
    if source.format == "function":
        from dlopt.ml.components import import_path

        try:
            import_path(source.function)
        except Exception as err:  # noqa: BLE001 - any import failure is the user's to fix
            return [f"data.source.function: cannot import {source.function!r}: {err}"]
        return []
    from dlopt.ml import sources  # reads metadata only; no torch, no Ray

    # a searched fraction: checked at its smallest (the emptiest split it can make)
    data = spec.data.model_copy(update={
        "val_fraction": min(_points(spec.data.val_fraction)),
        "test_fraction": min(_points(spec.data.test_fraction))})
    return list(sources.scan(data, spec.seed).problems)


def local_copy_problems(spec: Experiment) -> list[str]:
    """An in-memory built-in image dataset (`Data(dataset="mnist", root=ROOT)`) whose standard
    files are not under data.root: one line naming what is missing and where dlopt looked
    (the same locator as the trial's reader and the streamed `Source(format="mnist")`)."""
    from dlopt.ml import source_files  # file names and sizes only; no torch, no Ray

    data = spec.data
    if data.source is not None or data.root is None:
        return []  # a missing root is the spec's own problem (dlopt.spec.checks)
    import pyarrow.fs as pafs

    fs, root = source_files.filesystem(data.root)
    problems = []
    for dataset in dict.fromkeys(_points(data.dataset)):
        if dataset not in source_files.BUILT_IN:
            continue
        found, folders = source_files.built_in_files(fs, root, dataset)
        if fs.get_file_info(root).type == pafs.FileType.NotFound:
            problems.append(f"data.root: {data.root} does not exist ({dataset} reads its files "
                            "there)")
        elif any(p is None for p in found.values()):
            problems.append(f"data.root: {source_files.missing_files(dataset, root, found, folders)}")
    return list(dict.fromkeys(problems))


def cluster_warnings(spec: Experiment) -> list[str]:
    """After connecting to --address: a trial bigger than the cluster is now (it may autoscale)."""
    import ray

    now = ray.cluster_resources()
    return [f"warning: {p} now; trials wait until the cluster grows"
            for p in placement_problems(spec, now, "the cluster")]
