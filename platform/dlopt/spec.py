"""The experiment spec: the user-facing contract, validated before anything starts.

This module imports neither ray nor torch (DESIGN rule 1): `dlopt validate` and
`dlopt plan` must answer in a second and refuse bad input before Ray or MLflow run.
Catalog names are listed here as plain tuples; tests check they match the torch-side
catalogs, so a name the spec accepts always builds.

Any field typed `S[...]` may hold a search domain from `dlopt.tune` instead of a
value; each bound or choice of a domain is checked against that field's own
constraints, so `tune.loguniform(1e-4, 1)` on a field with `gt=0` passes and
`tune.uniform(-1, 1)` does not.
"""
from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WrapSerializer,
    WrapValidator,
    model_validator,
)

from dlopt import tune as _tune

# ---------------------------------------------------------------- catalog names
DATASETS = ("digits", "synthetic", "linear_1d", "mnist", "fashion_mnist", "cifar10")
LOCAL_DATASETS = ("mnist", "fashion_mnist", "cifar10")  # read from Data.root (dlopt.vision_data)
ARCHS = ("mlp", "linear", "lenet5", "cnn", "resnet")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "leaky_relu", "elu", "silu")
INITS = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
         "orthogonal", "normal_fan_in")
OPTIMIZERS = ("gd", "sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("constant", "step", "multistep", "exponential", "inverse_time", "linear", "cosine",
             "cosine_restarts", "one_cycle")
ALGORITHMS = ("grid", "random", "bayesian", "bayesian_gp", "hyperopt")
SCHEDULERS = ("fifo", "asha", "hyperband", "median", "pbt")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")


def _is_import_path(name: str) -> bool:
    """Custom components are named "pkg.module:attr" (DESIGN rule 4)."""
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
        if _tune.is_domain_dict(value):
            value = TypeAdapter(_tune.Domain).validate_python(value)
        if not isinstance(value, _tune._Domain):
            return handler(value)
        normalized = []
        for point in value.points():
            try:
                checked = adapter().validate_python(point)
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(
                    f"search domain {value.domain} value {point!r} is invalid for this field"
                    f"{' at ' + where if where else ''}: {first['msg']}"
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


# ---------------------------------------------------------------- sections
class Data(_Base):
    dataset: S[Name(DATASETS, "dataset")] = "digits"
    batch_size: S[int, Field(ge=1)] = 64
    val_fraction: S[float, Field(gt=0, lt=1)] = 0.2
    # Held out from training and selection; evaluated once on the chosen model (dlopt.evaluation).
    test_fraction: S[float, Field(ge=0, lt=1)] = 0.2
    root: Optional[str] = None
    download: bool = False
    # synthetic data (dataset="synthetic"): generated from Experiment.seed
    task: Literal["classification", "regression"] = "classification"
    n_samples: int = Field(1000, ge=10)
    n_features: int = Field(20, ge=1)
    n_classes: int = Field(4, ge=2)
    noise: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _fractions(self):
        for v in _points(self.val_fraction):
            for t in _points(self.test_fraction):
                if v + t >= 0.9:
                    raise ValueError(
                        f"val_fraction + test_fraction = {v + t:g} leaves under 10% to train"
                    )
        return self


class Model(_Base):
    arch: S[Name(ARCHS, "model arch")] = "mlp"
    hidden: S[list[S[int]]] = Field(default_factory=lambda: [128])
    activation: S[Name(ACTIVATIONS, "activation", custom=False)] = "relu"
    dropout: S[float, Field(ge=0, lt=1)] = 0.0
    init: S[Name(INITS, "init", custom=False)] = "default"

    @model_validator(mode="after")
    def _hidden_positive(self):
        if isinstance(self.hidden, list):
            for i, h in enumerate(self.hidden):
                if any(p < 1 for p in _points(h)):
                    raise ValueError(f"hidden[{i}] must be >= 1")
        return self


class Optimizer(_Base):
    name: S[Name(OPTIMIZERS, "optimizer")] = "adam"
    lr: S[float, Field(gt=0)] = 1e-3
    momentum: S[float, Field(ge=0, lt=1)] = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: S[float, Field(ge=0)] = 0.0
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _nesterov(self):
        if self.nesterov:
            if self.name not in ("sgd", "gd"):
                raise ValueError("nesterov applies to name='sgd' or 'gd' only")
            if any(m <= 0 for m in _points(self.momentum)):
                raise ValueError("nesterov needs momentum > 0")
        for b in self.betas:
            if not 0 <= b < 1:
                raise ValueError("betas must lie in [0, 1)")
        return self


class Schedule(_Base):
    name: S[Name(SCHEDULES, "schedule", custom=False)] = "constant"
    interval: Optional[Literal["step", "epoch"]] = None
    warmup_epochs: S[int, Field(ge=0)] = 0
    step_size: S[int, Field(ge=1)] = 10
    gamma: S[float, Field(gt=0, le=1)] = 0.1
    milestones: list[int] = Field(default_factory=list)
    decay_steps: Optional[S[float, Field(gt=0)]] = None
    power: S[float, Field(gt=0)] = 1.0
    min_lr: S[float, Field(ge=0)] = 0.0
    restart_mult: int = Field(1, ge=1)


class Regularization(_Base):
    l1: S[float, Field(ge=0)] = 0.0
    l2: S[float, Field(ge=0)] = 0.0
    label_smoothing: S[float, Field(ge=0, lt=1)] = 0.0
    grad_clip_norm: Optional[S[float, Field(gt=0)]] = None
    grad_clip_value: Optional[S[float, Field(gt=0)]] = None
    early_stopping_patience: Optional[int] = Field(None, ge=1)


class Prune(_Base):
    stage: Literal["prune"] = "prune"
    method: Literal["magnitude"] = "magnitude"
    scope: S[Literal["layer", "global"]] = "global"
    structured: bool = False
    norm: Literal["l1", "l2"] = "l1"
    sparsity: S[float, Field(ge=0, lt=1)] = 0.5
    schedule: S[Literal["one_shot", "gradual"]] = "one_shot"
    start_epoch: int = Field(0, ge=0)
    end_epoch: Optional[int] = Field(None, ge=1)
    frequency: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _window(self):
        if self.end_epoch is not None and self.end_epoch <= self.start_epoch:
            raise ValueError("end_epoch must be after start_epoch")
        if self.structured and self.scope == "global":
            raise ValueError("structured pruning ranks rows within a layer: use scope='layer'")
        return self


class Quantize(_Base):
    stage: Literal["quantize"] = "quantize"
    method: S[Literal["dynamic", "static", "qat"]] = "dynamic"
    dtype: Literal["int8"] = "int8"
    calibration_batches: int = Field(8, ge=1)
    qat_epochs: int = Field(2, ge=1)


class Distill(_Base):
    stage: Literal["distill"] = "distill"
    teacher: str = Field(pattern=r"^models:/[^/@]+(@[^/@]+|/\d+)$")
    temperature: S[float, Field(gt=0)] = 4.0
    alpha: S[float, Field(ge=0, le=1)] = 0.7


Stage = Annotated[Union[Prune, Quantize, Distill], Field(discriminator="stage")]


class Search(_Base):
    algorithm: Name(ALGORITHMS, "search algorithm", custom=False) = "random"
    num_samples: int = Field(1, ge=1)
    scheduler: Name(SCHEDULERS, "scheduler", custom=False) = "fifo"
    metric: str = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    objectives: Optional[dict[str, Literal["max", "min"]]] = None
    max_concurrent_trials: Optional[int] = Field(None, ge=1)
    seed: Optional[int] = None
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    perturbation_interval: int = Field(2, ge=1)
    # spec path -> tune.uniform/loguniform (resampled) or a list of values (PBT steps through it)
    pbt_mutations: Optional[dict[str, Union[_tune.Domain, list[float]]]] = None

    @model_validator(mode="after")
    def _objectives(self):
        if self.objectives is not None:
            if len(self.objectives) < 2:
                raise ValueError("objectives needs at least two metrics; use metric/mode for one")
            if self.scheduler != "fifo":
                raise ValueError(
                    f"scheduler {self.scheduler!r} needs a single metric; "
                    "a multi-objective search runs with scheduler='fifo'"
                )
            if self.algorithm == "hyperopt":
                raise ValueError("algorithm 'hyperopt' optimizes a single metric; a multi-objective "
                                 "search runs with 'bayesian', 'bayesian_gp', 'random' or 'grid'")
        if self.scheduler == "pbt" and not self.pbt_mutations:
            raise ValueError("scheduler='pbt' needs pbt_mutations (fields PBT may perturb)")
        if self.pbt_mutations and self.scheduler != "pbt":
            raise ValueError("pbt_mutations is only used with scheduler='pbt'")
        if self.scheduler != "fifo" and self.objectives is None and self.metric in FINAL_METRICS:
            raise ValueError(f"scheduler {self.scheduler!r} compares trials every epoch, but "
                             f"{self.metric!r} is only reported at the end; use a per-epoch "
                             "metric (val_accuracy, val_loss) or scheduler='fifo'")
        return self


# Metrics a trial reports only in its final (compression) report, never per epoch.
FINAL_METRICS = ("compressed_val_accuracy", "model_bytes", "dense_bytes", "compression_ratio",
                 "sparsity", "latency_ms")
# Per-epoch validation metrics by task (names from dlopt.metrics with the prefix val_;
# tests/test_metrics.py checks the two agree). val_top5_accuracy needs more than 5 classes.
VAL_METRICS = {
    "classification": ("val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1",
                       "val_top5_accuracy"),
    "regression": ("val_loss", "val_mse", "val_mae", "val_r2"),
}


def _metric_task_problems(spec) -> list[str]:
    """A selection metric the task never reports would leave the sweep without a best trial."""
    if ":" in spec.data.dataset:
        return []  # a custom dataset's task is known only once it loads
    task = spec.task
    other = "regression" if task == "classification" else "classification"
    wrong = set(VAL_METRICS[other]) - set(VAL_METRICS[task])
    if spec.data.dataset == "synthetic" and task == "classification" and spec.data.n_classes <= 5:
        wrong.add("val_top5_accuracy")
    named = ([("search.metric", spec.search.metric)] if spec.search.objectives is None else
             [(f"search.objectives.{k}", k) for k in spec.search.objectives])
    return [f"{path}: a {task} task does not report {name}; its validation metrics are "
            f"{', '.join(m for m in VAL_METRICS[task] if m not in wrong)}"
            for path, name in named if name in wrong]


# Domains a grid cannot enumerate.
CONTINUOUS_DOMAINS = ("uniform", "loguniform", "randint")


def _search_problems(spec: "Experiment") -> list[str]:
    """Search settings that only make sense together with the rest of the spec."""
    problems = []
    search = spec.search
    doms = domains(spec)
    if search.algorithm == "grid":
        for path, dom in doms.items():
            if dom["domain"] in CONTINUOUS_DOMAINS:
                problems.append(f"{path}: algorithm='grid' cannot enumerate tune.{dom['domain']}; "
                                "use tune.grid/tune.choice values or algorithm='random'")
    for path, dom in doms.items():
        if dom["domain"] in ("choice", "grid") and domains({"v": dom["values"]}):
            problems.append(f"{path}: a search domain inside tune.{dom['domain']} values is not "
                            "sampled; list concrete values (e.g. one pipeline per sparsity)")
    if search.scheduler == "pbt":
        min_epochs = min(_points(spec.epochs))
        if search.perturbation_interval >= min_epochs:
            problems.append(f"search.perturbation_interval: {search.perturbation_interval} must be "
                            f"below epochs ({min_epochs}): PBT exploits checkpoints written before "
                            "the end of a trial")
        problems += _pbt_mutation_problems(spec, doms)
    return problems


def _pbt_mutation_problems(spec: "Experiment", doms: dict) -> list[str]:
    """Each mutated field exists, is continuous (a float), and every mutation value fits it."""
    problems = []
    base = spec.model_dump(mode="json")
    base["search"] = {}  # validating copies must not re-enter these checks
    for path, mutation in (spec.search.pbt_mutations or {}).items():
        where = f"search.pbt_mutations.{path}"
        if path.split(".")[0] in ("search", "resources", "tracking", "name", "seed", "epochs"):
            problems.append(f"{where}: PBT perturbs training fields; {path!r} cannot change "
                            "while a trial runs")
            continue
        try:
            node: Any = base
            for key in path.split("."):
                node = node[int(key)] if isinstance(node, list) else node[key]
        except (KeyError, IndexError, ValueError, TypeError):
            problems.append(f"{where}: no field {path!r} in the spec")
            continue
        current = doms[path]["low"] if path in doms and "low" in doms[path] else (
            doms[path]["values"][0] if path in doms else node)
        if isinstance(current, bool) or not isinstance(current, float):
            problems.append(f"{where}: PBT perturbs continuous (float) fields; {path!r} holds "
                            f"{current!r}")
            continue
        if isinstance(mutation, _tune.RandInt):
            problems.append(f"{where}: use tune.uniform/tune.loguniform, tune.choice or a list "
                            "of floats, not tune.randint")
            continue
        values = mutation.points() if isinstance(mutation, _tune._Domain) else mutation
        for value in values:
            trial = json.loads(json.dumps(base))
            set_path(trial, path, value)
            try:
                Experiment.model_validate(trial)
            except ValidationError as err:
                first = err.errors()[0]
                msg = first["msg"].splitlines()[0]
                problems.append(f"{where}: value {value!r} is invalid for {path}: {msg}")
                break
    return problems


class Resources(_Base):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(0, ge=-1)
    placement: Literal["pack", "spread"] = "pack"
    # "ddp": a full model copy per worker; "fsdp": FSDP2, each worker holds 1/N of every
    # weight (dlopt.train.sharding); "pipeline": each worker holds consecutive layers of an
    # mlp and microbatches stream through them (dlopt.train.pipeline).
    strategy: Literal["ddp", "fsdp", "pipeline"] = "ddp"
    # A 1-worker trial runs the same loop inside its Tune trial (no TorchTrainer, no second
    # process: ~15 s less start-up per trial); False forces a TorchTrainer worker anyway.
    in_trial: bool = True


class Tracking(_Base):
    experiment: Optional[str] = None
    register_as: Optional[str] = None
    alias: str = "champion"
    # How often a trial reports metrics + checkpoint to Tune: "auto" keeps reporting under
    # ~5% of the loop's time (short epochs are reported in batches; dlopt.train.cadence),
    # N reports every N-th epoch, 1 every epoch. MLflow gets every epoch either way.
    report_every: Union[Literal["auto"], Annotated[int, Field(ge=1)]] = "auto"


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
    compression: S[list[Stage]] = Field(default_factory=list)
    search: Search = Field(default_factory=Search)
    resources: Resources = Field(default_factory=Resources)
    tracking: Tracking = Field(default_factory=Tracking)

    @model_validator(mode="after")
    def _cross_field(self):
        problems = []
        if "16-mixed" in _points(self.precision) and not self.resources.use_gpu:
            problems.append("precision: '16-mixed' needs a GPU (GradScaler on CUDA); "
                            "use 'bf16-mixed' on CPU or set resources.use_gpu=True")
        max_epochs = max(_points(self.epochs))
        min_epochs = min(_points(self.epochs))
        if self.search.scheduler in ("asha", "hyperband") and self.search.grace_period >= min_epochs:
            problems.append(f"search.grace_period: {self.search.grace_period} must be below "
                            f"epochs ({min_epochs}) or no trial can be stopped early")
        problems += _metric_task_problems(self)
        local = [d for d in _points(self.data.dataset) if d in LOCAL_DATASETS]
        if local and self.data.root is None:
            problems.append(f"data.root: dataset {local[0]!r} is read from a local copy; set "
                            "data.root to the folder holding its raw files")
        if self.data.download:
            problems.append("data.download: dlopt cannot download datasets (that needs torchvision, "
                            "which does not work with the pinned torch); copy the raw files under "
                            "data.root and leave download=False")
        for options in _compression_options(self.compression):
            problems += _check_stage_order(options, max_epochs)
        has_grid = any(d["domain"] == "grid" for d in domains(self).values())
        if has_grid and self.search.algorithm in ("bayesian", "bayesian_gp", "hyperopt"):
            problems.append(f"search.algorithm: {self.search.algorithm!r} cannot expand "
                            "tune.grid domains; use tune.choice or algorithm='grid'/'random'")
        problems += _search_problems(self)
        problems += _strategy_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def spec_hash(self) -> str:
        """Content hash of the resolved spec; tags runs and registered versions."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def task(self) -> str:
        return "regression" if (self.data.dataset == "linear_1d" or self.data.task == "regression"
                                and self.data.dataset == "synthetic") else "classification"


def _strategy_problems(spec: "Experiment") -> list[str]:
    """Combinations with resources.strategy that cannot work, each with the reason."""
    strategy = spec.resources.strategy
    if strategy == "pipeline":
        return _pipeline_problems(spec)
    if strategy != "fsdp":
        return []
    problems = []
    if spec.resources.num_workers < 2:
        problems.append("resources.strategy: 'fsdp' shards every weight across workers; with "
                        "num_workers=1 there is nothing to shard (use 'ddp' or num_workers >= 2)")
    # L1/L2 penalties, pruning and QAT work on the DTensor shards (dlopt.stages.regularization,
    # dlopt.stages.prune_sharded, dlopt.train.sharding.shard): nothing more to refuse.
    return problems


def _pipeline_problems(spec: "Experiment") -> list[str]:
    """What a pipeline (dlopt.train.pipeline) cannot run: each stage holds some layers, and
    the loss exists only inside the schedule on the last stage."""
    problems, why = [], "with strategy 'pipeline' (each worker holds only its stage's layers)"
    if any(a != "mlp" for a in _points(spec.model.arch)):
        problems.append("model.arch: strategy 'pipeline' splits an nn.Sequential into stages; "
                        "use arch 'mlp' (or strategy 'ddp'/'fsdp')")
    layers = [len(h) + 1 for h in _points(spec.model.hidden)] if spec.model.arch == "mlp" else [1]
    if spec.resources.num_workers < 2 or spec.resources.num_workers > min(layers):
        problems.append(f"resources.num_workers: strategy 'pipeline' needs 2 to {min(layers)} "
                        "workers here (one stage per worker, at least one Linear layer each)")
    if any(p != "32" for p in _points(spec.precision)):
        problems.append(f"precision: only '32' is implemented {why}")
    reg = spec.regularization
    for name in ("l1", "l2"):
        if any(_points(getattr(reg, name))):
            problems.append(f"regularization.{name}: the penalty would have to join the loss "
                            f"computed inside the schedule on the last stage {why}; use "
                            "optimizer.weight_decay")
    if reg.grad_clip_norm is not None:
        problems.append(f"regularization.grad_clip_norm: the norm spans every stage {why}; use "
                        "grad_clip_value")
    for options in _compression_options(spec.compression):
        for i, s in enumerate(options):
            if s.stage in ("prune", "distill") or (s.stage == "quantize"
                                                   and "qat" in _points(s.method)):
                problems.append(f"compression.{i}: {s.stage} acts during training on every "
                                f"layer at once, not implemented {why}; post-training "
                                "quantize ('dynamic'/'static') is")
    return list(dict.fromkeys(problems))


def _compression_options(compression) -> list[list]:
    if isinstance(compression, _tune._Domain):
        return [TypeAdapter(list[Stage]).validate_python(v) for v in compression.points()]
    return [compression]


def _check_stage_order(stages: list, epochs: int) -> list[str]:
    problems = []
    kinds = [s.stage for s in stages]
    if "quantize" in kinds and "prune" in kinds and kinds.index("quantize") < kinds.index("prune"):
        problems.append("compression: quantize is listed before prune; pruning an int8 model "
                        "is not supported, list prune first")
    if "distill" in kinds and kinds.index("distill") != 0:
        problems.append("compression: distill trains the student and must come first")
    if kinds.count("quantize") > 1 or kinds.count("prune") > 1 or kinds.count("distill") > 1:
        problems.append("compression: each stage kind may appear once")
    for i, s in enumerate(stages):
        if s.stage == "prune":
            end = s.end_epoch if s.end_epoch is not None else s.start_epoch + 1
            if end > epochs or s.start_epoch >= epochs:
                problems.append(f"compression.{i}.end_epoch: pruning window ends at epoch {end} "
                                f"but the run has {epochs} epochs")
    return problems


# ---------------------------------------------------------------- domains and resolution
def domains(spec: Union[Experiment, dict]) -> dict[str, dict]:
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


def set_path(data: dict, path: str, value) -> None:
    """Set a dotted path ("optimizer.lr", "model.hidden.0") inside spec JSON."""
    keys = path.split(".")
    node = data
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


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
