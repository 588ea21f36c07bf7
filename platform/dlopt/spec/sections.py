"""The spec's sections: one Pydantic model per part of an experiment (the API)."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from dlopt.spec import tune as _tune
from dlopt.spec.augmentation import Augment
from dlopt.spec.fields import (
    ACTIVATIONS,
    ALGORITHMS,
    ARCHS,
    DATASETS,
    INITS,
    OPTIMIZERS,
    SCHEDULERS,
    SCHEDULES,
    TEACHER_URI,
    Name,
    S,
    _Base,
    _points,
)
from dlopt.spec.metric_names import FINAL_METRICS
from dlopt.spec.source import Source


# ---------------------------------------------------------------- sections
class Data(_Base):
    dataset: S[Name(DATASETS, "dataset")] = "digits"
    batch_size: S[int, Field(ge=1)] = 64
    val_fraction: S[float, Field(gt=0, lt=1)] = 0.2
    # Held out from training and selection; evaluated once on the chosen model (dlopt.registry.evaluation).
    test_fraction: S[float, Field(ge=0, lt=1)] = 0.2
    root: Optional[str] = None
    download: bool = False
    # synthetic data (dataset="synthetic"): generated from Experiment.seed
    task: Literal["classification", "regression"] = "classification"
    n_samples: int = Field(1000, ge=10)
    n_features: int = Field(20, ge=1)
    n_classes: int = Field(4, ge=2)
    noise: float = Field(0.1, ge=0)
    # data read in a stream instead of `dataset` (Source; its task is `task`)
    source: Optional[Source] = None

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
                    raise ValueError(f"hidden[{i}]: must be >= 1")
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
                raise ValueError("nesterov: applies to name='sgd' or 'gd' only")
            if any(m <= 0 for m in _points(self.momentum)):
                raise ValueError("nesterov: needs momentum > 0")
        for b in self.betas:
            if not 0 <= b < 1:
                raise ValueError("betas: must lie in [0, 1)")
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
    # training batches only, on the device (dlopt.stages.augment); None: no augmentation
    augment: Optional[Augment] = None


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
    # "uniform": every layer at `sparsity` (scope 'layer') or one global ranking (scope
    # 'global'); "sensitivity": one sparsity per layer chosen on the validation split so that
    # `sparsity` of all target weights is pruned (dlopt.stages.pruning.allocation)
    allocation: Literal["uniform", "sensitivity"] = "uniform"

    @model_validator(mode="after")
    def _window(self):
        if self.end_epoch is not None and self.end_epoch <= self.start_epoch:
            raise ValueError("end_epoch: must be after start_epoch")
        if self.allocation == "sensitivity" and self.structured:
            raise ValueError("allocation: 'sensitivity' chooses unstructured per-layer "
                             "sparsities; use structured=false")
        if self.allocation == "sensitivity" and self.scope == "global":
            raise ValueError("allocation: 'sensitivity' chooses one sparsity per layer; "
                             "use scope='layer'")
        if self.structured and self.scope == "global":
            raise ValueError("scope: structured pruning ranks rows within a layer; use scope='layer'")
        return self


class Quantize(_Base):
    stage: Literal["quantize"] = "quantize"
    method: S[Literal["dynamic", "static", "qat"]] = "dynamic"
    dtype: Literal["int8"] = "int8"
    calibration_batches: int = Field(8, ge=1)
    qat_epochs: int = Field(2, ge=1)


class Share(_Base):
    """Weight sharing (Han et al. 2016, "Deep Compression", sec. 3): each Linear/Conv weight's
    non-zero values are clustered by 1-D k-means into 2**bits centroids (one of them 0 where
    the layer was pruned), the centroids are fine-tuned for the last `finetune_epochs` epochs,
    and the artifact stores codebook + entropy-coded indices (dlopt.stages.sharing)."""

    stage: Literal["share"] = "share"
    method: Literal["kmeans"] = "kmeans"
    bits: S[int, Field(ge=2, le=8)] = 5
    finetune_epochs: int = Field(2, ge=0)


class Distill(_Base):
    stage: Literal["distill"] = "distill"
    teacher: str = Field(pattern=TEACHER_URI.pattern)
    temperature: S[float, Field(gt=0)] = 4.0
    alpha: S[float, Field(ge=0, le=1)] = 0.7


# One entry of `Experiment.compression`: what a stage is configured with. The object that
# runs it in the loop is a `dlopt.stages.Stage`.
StageSpec = Annotated[Union[Prune, Quantize, Share, Distill], Field(discriminator="stage")]


# Which Search settings each scheduler and algorithm hands to Ray/Optuna/HyperOpt
# (dlopt.runtime.search), and their defaults. A setting the chosen one does not use is
# refused, so nothing is validated and then silently dropped.
SCHEDULER_SETTINGS = {"fifo": (), "asha": ("grace_period", "reduction_factor"),
                      "hyperband": ("reduction_factor",), "median": ("grace_period",),
                      "pbt": ("perturbation_interval", "pbt_mutations")}
MODEL_BASED = ("bayesian", "bayesian_gp", "hyperopt")
SETTING_DEFAULTS = {"grace_period": 1, "reduction_factor": 2.0, "perturbation_interval": 2}


def default_warmup(num_samples: int) -> int:
    """Random trials before a model-based sampler models: a quarter of the budget, at least 2
    (a model needs two points) and at most 10 (Optuna's own default). A 10-trial sweep models
    from trial 3, a 30-trial one from trial 8 (benchmarks/search_quality.py measures it)."""
    return max(2, min(10, num_samples // 4))


def default_population(num_samples: int) -> int:
    """NSGA-II's generation size: a quarter of the budget, at least 4, at most Optuna's 50,
    so a 16-trial sweep breeds three generations past its random first one."""
    return max(4, min(50, num_samples // 4))


class Search(_Base):
    algorithm: Name(ALGORITHMS, "search algorithm", custom=False) = "random"
    num_samples: int = Field(1, ge=1)
    scheduler: Name(SCHEDULERS, "scheduler", custom=False) = "fifo"
    metric: str = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    objectives: Optional[dict[str, Literal["max", "min"]]] = None
    max_concurrent_trials: Optional[int] = Field(None, ge=1)
    seed: Optional[int] = None
    # Scheduler settings (None: the default in SETTING_DEFAULTS, for the schedulers that
    # use them; see SCHEDULER_SETTINGS).
    grace_period: Optional[int] = Field(None, ge=1)  # asha, median
    reduction_factor: Optional[float] = Field(None, gt=1)  # asha, hyperband
    perturbation_interval: Optional[int] = Field(None, ge=1)  # pbt
    # spec path -> tune.uniform/loguniform (resampled) or a list of values (PBT steps through it)
    pbt_mutations: Optional[dict[str, Union[_tune.Domain, list[float]]]] = None
    # Model-based samplers (bayesian = Optuna TPE, bayesian_gp = Optuna GP, hyperopt): random
    # trials before the first modelled one; None: default_warmup(num_samples).
    warmup_trials: Optional[int] = Field(None, ge=1)
    # Multi-objective bayesian (Optuna NSGA-II): trials per generation, the first one random;
    # None: default_population(num_samples).
    population_size: Optional[int] = Field(None, ge=2)
    # Configurations tried first ({spec path: value}, a value for every searched path;
    # spec.checks validates each against its field), then the algorithm's own.
    points_to_evaluate: Optional[list[dict[str, Any]]] = None
    # An earlier sweep (MLflow parent run id or sweep name): its trials' configs and results
    # go to the Optuna sampler before the first new trial (dlopt.driver.warmstart).
    warm_start: Optional[str] = None
    # Sweep-level stops (dlopt.runtime.search.sweep_stopper): a wall-clock budget, a goal
    # (metric -> value that ends the sweep once a trial reaches it), and a plateau (the top
    # N results' standard deviation below 0.001 of the metric: Ray's ExperimentPlateauStopper).
    time_budget_s: Optional[float] = Field(None, gt=0)
    stop_when: Optional[dict[str, float]] = None
    stop_on_plateau: Optional[int] = Field(None, ge=2)

    def used_settings(self) -> tuple[str, ...]:
        """The optional settings the chosen scheduler and algorithm pass on."""
        used = SCHEDULER_SETTINGS[self.scheduler]
        if self.algorithm == "bayesian" and self.objectives:
            used += ("population_size",)
        elif self.algorithm in MODEL_BASED:
            used += ("warmup_trials",)
        return used

    def setting(self, name: str):
        """A used setting's value: the spec's, else its default (None when unused)."""
        if name not in self.used_settings():
            return None
        value = getattr(self, name)
        if value is not None:
            return value
        if name == "warmup_trials":
            return default_warmup(self.num_samples)
        if name == "population_size":
            return default_population(self.num_samples)
        return SETTING_DEFAULTS.get(name)

    @field_validator("pbt_mutations", mode="before")
    @classmethod
    def _mutation_domains(cls, value):
        """Each domain's own checks, named by its key (`search.pbt_mutations.optimizer.lr: ...`)."""
        if not isinstance(value, dict):
            return value
        out, problems = {}, []
        for path, v in value.items():
            try:
                is_domain = _tune.is_domain_dict(v) or isinstance(v, _tune._Domain)
                out[path] = _tune.checked(v) if is_domain else v
            except ValueError as err:
                problems.append(f"{path}: {err}")
        if problems:
            raise ValueError("\n".join(problems))
        return out

    @model_validator(mode="after")
    def _objectives(self):
        if self.objectives is not None:
            if len(self.objectives) < 2:
                raise ValueError("objectives: needs at least two metrics; use metric/mode for one")
            if self.scheduler != "fifo":
                raise ValueError(
                    f"objectives: scheduler {self.scheduler!r} needs a single metric; "
                    "a multi-objective search runs with scheduler='fifo'"
                )
            if self.algorithm == "hyperopt":
                raise ValueError("objectives: algorithm 'hyperopt' optimizes a single metric; a multi-objective "
                                 "search runs with 'bayesian', 'bayesian_gp', 'random' or 'grid'")
        if self.scheduler == "pbt" and not self.pbt_mutations:
            raise ValueError("pbt_mutations: scheduler='pbt' needs pbt_mutations (fields PBT may perturb)")
        if self.scheduler != "fifo" and self.objectives is None and self.metric in FINAL_METRICS:
            raise ValueError(f"metric: scheduler {self.scheduler!r} compares trials every epoch, but "
                             f"{self.metric!r} is only reported at the end; use a per-epoch "
                             "metric (val_accuracy, val_loss) or scheduler='fifo'")
        return self


class Resources(_Base):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    # GPUs each worker reserves (use_gpu only; unset: 1). Below 1, several 1-worker trials
    # share one GPU (Ray's fractional GPUs); a whole number above 1, several GPUs per worker
    # (spec.checks._gpu_problems; docs/architecture.md, "GPU resources").
    gpus_per_worker: Optional[float] = Field(None, gt=0)
    # Ray's `memory` resource each worker reserves, in GiB (None: none reserved). A scheduling
    # reservation, not a limit Ray enforces: Ray places a worker only where that much is
    # unreserved, so workers that stream a large source (Data.source) are not packed onto a
    # node beyond its RAM (docs/architecture.md, "GPU resources").
    memory_per_worker_gb: Optional[float] = Field(None, gt=0)
    max_failures: int = Field(0, ge=-1)
    placement: Literal["pack", "spread"] = "pack"
    # "ddp": a full model copy per worker; "fsdp": FSDP2, each worker holds 1/N of every
    # weight (dlopt.train.sharding); "pipeline": each worker holds consecutive layers of an
    # mlp and microbatches stream through them (dlopt.train.pipeline).
    strategy: Literal["ddp", "fsdp", "pipeline"] = "ddp"
    # A 1-worker trial runs the same loop inside its Tune trial (no TorchTrainer, no second
    # process: ~15 s less start-up per trial); False forces a TorchTrainer worker anyway.
    in_trial: bool = True
    # torch's deterministic algorithms and no cuDNN autotuning (dlopt.ml.devices
    # .configure_kernels): reruns give the same weights, at some speed on a GPU.
    deterministic: bool = False

    @property
    def worker_gpus(self) -> float:
        """GPUs each worker reserves: gpus_per_worker, 1 with use_gpu when unset, else 0."""
        if not self.use_gpu:
            return 0.0
        return 1.0 if self.gpus_per_worker is None else float(self.gpus_per_worker)


class Tracking(_Base):
    experiment: Optional[str] = None
    register_as: Optional[str] = None
    alias: str = "champion"
    # How often a trial reports metrics + checkpoint to Tune: "auto" keeps reporting under
    # ~5% of the loop's time (short epochs are reported in batches; dlopt.train.cadence),
    # N reports every N-th epoch, 1 every epoch. MLflow gets every epoch either way.
    report_every: Union[Literal["auto"], Annotated[int, Field(ge=1)]] = "auto"
