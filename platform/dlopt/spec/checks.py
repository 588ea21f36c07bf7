"""Cross-field checks of an Experiment: each returns one line per problem, naming the field."""
from __future__ import annotations

import json
import math
from typing import Any

from pydantic import TypeAdapter, ValidationError

from dlopt.spec import tune as _tune
from dlopt.spec.augmentation import augment_problems
from dlopt.spec.fields import LOCAL_DATASETS, _points
from dlopt.spec.metric_names import VAL_METRICS
from dlopt.spec.paths import domains, set_path, shown
from dlopt.spec.sections import SCHEDULER_SETTINGS, StageSpec
from dlopt.spec.start_points import start_problems


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


def _search_problems(spec) -> list[str]:
    """Search settings that only make sense together with the rest of the spec."""
    problems = []
    search = spec.search
    doms = domains(spec)
    if search.algorithm == "grid":
        for path, dom in doms.items():
            if dom["domain"] in CONTINUOUS_DOMAINS:
                problems.append(f"{shown(path)}: algorithm='grid' cannot enumerate tune.{dom['domain']}; "
                                "use tune.grid/tune.choice values or algorithm='random'")
    for path, dom in doms.items():
        if dom["domain"] in ("choice", "grid") and domains({"v": dom["values"]}):
            problems.append(f"{shown(path)}: a search domain inside tune.{dom['domain']} values is not "
                            "sampled; list concrete values (e.g. one pipeline per sparsity)")
    min_epochs = min(_points(spec.epochs))
    if search.scheduler == "pbt":
        interval = search.setting("perturbation_interval")
        if interval >= min_epochs:
            problems.append(f"search.perturbation_interval: {interval} must be "
                            f"below epochs ({min_epochs}): PBT exploits checkpoints written before "
                            "the end of a trial")
        problems += _pbt_mutation_problems(spec, doms)
    grace = search.setting("grace_period")
    if grace is not None and search.scheduler == "asha" and grace >= min_epochs:
        problems.append(f"search.grace_period: {grace} must be below epochs ({min_epochs}) or "
                        "no trial can be stopped early")
    if grace is not None and search.scheduler == "median" and grace >= min_epochs:
        problems.append(f"search.grace_period: {grace} must be below epochs ({min_epochs}): the "
                        "median rule stops no trial before its grace period")
    eta = search.setting("reduction_factor")
    max_epochs = max(_points(spec.epochs))  # HyperBand's max_t (dlopt.runtime.search)
    if search.scheduler == "hyperband" and round(math.log(max_epochs) / math.log(eta)) < 1:
        # Ray's HyperBand: round(log(max_t) / log(eta)) + 1 brackets; one bracket stops nothing.
        problems.append(f"search.reduction_factor: {eta:g} leaves HyperBand a single bracket at "
                        f"{max_epochs} epoch(s), so no trial is stopped early; use more epochs "
                        "or a smaller reduction_factor")
    return problems + _unused_setting_problems(search)


SAMPLERS = {"bayesian": "Optuna TPE", "bayesian_gp": "Optuna GP", "hyperopt": "HyperOpt TPE"}


def search_warnings(search) -> list[str]:
    """Budgets that run a model-based search as random search: valid, but worth a warning
    (`dlopt validate`, `dlopt plan`). One line per problem, naming the field."""
    n = search.num_samples
    population = search.setting("population_size")
    if population is not None and population >= n:
        return [f"search.population_size: NSGA-II's first generation ({population} trials) is "
                f"random and num_samples={n} ends inside it: this multi-objective search is "
                f"random search; use num_samples > {population} or a smaller population_size"]
    warmup = search.setting("warmup_trials")
    if warmup is not None and warmup >= n:
        return [f"search.warmup_trials: the first {warmup} trials are random and num_samples={n} "
                f"ends inside them: {SAMPLERS[search.algorithm]} never models here; use "
                f"num_samples > {warmup} or fewer warmup_trials"]
    return []


def _users(name: str) -> str:
    """Who uses an optional Search setting, for the refusal line."""
    if name == "warmup_trials":
        return ("algorithm 'bayesian_gp' / 'hyperopt', or 'bayesian' with a single metric "
                "(a multi-objective 'bayesian' search sets population_size)")
    if name == "population_size":
        return "algorithm 'bayesian' with objectives (Optuna NSGA-II)"
    users = [k for k, v in SCHEDULER_SETTINGS.items() if name in v]
    return "scheduler " + " / ".join(repr(u) for u in users)


def _unused_setting_problems(search) -> list[str]:
    """A setting the chosen scheduler/algorithm would not receive is refused: it was never
    going to act, and checking it then dropping it would mislead."""
    used = search.used_settings()
    problems = []
    for name in ("grace_period", "reduction_factor", "perturbation_interval", "pbt_mutations",
                 "warmup_trials", "population_size"):
        if getattr(search, name) is not None and name not in used:
            problems.append(f"search.{name}: only used with {_users(name)}; scheduler "
                            f"{search.scheduler!r} with algorithm {search.algorithm!r} would "
                            "not use it (remove it)")
    return problems


def _pbt_mutation_problems(spec, doms: dict) -> list[str]:
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
                type(spec).model_validate(trial)
            except ValidationError as err:
                first = err.errors()[0]
                msg = first["msg"].splitlines()[0]
                problems.append(f"{where}: value {value!r} is invalid for {path}: {msg}")
                break
    return problems



def _gpu_problems(res) -> list[str]:
    """resources.gpus_per_worker against use_gpu, Ray's fractions and NCCL."""
    g = res.gpus_per_worker
    if g is None:
        return []
    if not res.use_gpu:
        return ["resources.gpus_per_worker: only meaningful with resources.use_gpu=True "
                "(a CPU trial reserves no GPU)"]
    if g > 1 and g != int(g):
        return [f"resources.gpus_per_worker: {g:g} GPUs; above 1 Ray places whole GPUs only "
                f"(use {int(g)} or {int(g) + 1}, or a fraction below 1)"]
    if g < 1 and res.num_workers > 1:
        # Ray may pack two workers of one trial onto the same GPU, and NCCL refuses two ranks
        # on one device ("Duplicate GPU detected"): fractions share a GPU between trials only.
        return [f"resources.gpus_per_worker: {g:g} of a GPU with num_workers={res.num_workers}: "
                "Ray may place two ranks of one trial on the same GPU, which NCCL refuses; "
                "fractions are for 1-worker trials (use a whole GPU per worker for DDP/FSDP/"
                "pipeline)"]
    return []


def _strategy_problems(spec) -> list[str]:
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
    # dlopt.stages.pruning.sharded, dlopt.train.sharding.shard); weight sharing clusters whole
    # weights (dlopt.stages.sharing), not shards.
    for options in _compression_options(spec.compression):
        for i, s in enumerate(options):
            if s.stage == "share":
                problems.append(f"compression[{i}]: share clusters each layer's whole weight; "
                                "not implemented on FSDP shards (use strategy 'ddp')")
            if s.stage == "prune" and s.allocation == "sensitivity":
                problems.append(f"compression[{i}].allocation: 'sensitivity' measures each "
                                "layer's whole weight; not implemented on FSDP shards (use "
                                "strategy 'ddp')")
            if s.stage == "prune" and s.structured and "resnet" in _points(spec.model.arch):
                # graph models mask whole dependency groups (dlopt.stages.pruning.groups); a
                # custom graph arch is refused by the driver's preflight, which builds it
                problems.append(f"compression[{i}].structured: the resnet's channels are masked "
                                "per dependency group; not implemented on FSDP shards (use "
                                "strategy 'ddp')")
    return problems


def _pipeline_problems(spec) -> list[str]:
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
    if spec.data.source is not None:
        # every rank would read the whole stream, and Ray Data need not give two readers the
        # same order: rank 0's inputs would meet the last rank's labels of other rows
        problems.append(f"data.source: a streamed source is not implemented {why}: every stage "
                        "must see the same batches in the same order, which Ray Data's streams "
                        "do not promise; use strategy 'ddp'/'fsdp', or an in-memory dataset")
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
            if s.stage in ("prune", "distill", "share") or (s.stage == "quantize"
                                                   and "qat" in _points(s.method)):
                problems.append(f"compression[{i}]: {s.stage} acts during training on every "
                                f"layer at once, not implemented {why}; post-training "
                                "quantize ('dynamic'/'static') is")
    return list(dict.fromkeys(problems))


def _compression_options(compression) -> list[list]:
    if isinstance(compression, _tune._Domain):
        return [TypeAdapter(list[StageSpec]).validate_python(v) for v in compression.points()]
    return [compression]


def _check_stage_order(stages: list, epochs: int) -> list[str]:
    problems = []
    kinds = [s.stage for s in stages]
    if "quantize" in kinds and "prune" in kinds and kinds.index("quantize") < kinds.index("prune"):
        problems.append("compression: quantize is listed before prune; pruning an int8 model "
                        "is not supported, list prune first")
    if "distill" in kinds and kinds.index("distill") != 0:
        problems.append("compression: distill trains the student and must come first")
    if any(kinds.count(k) > 1 for k in set(kinds)):
        problems.append("compression: each stage kind may appear once")
    problems += _share_problems(stages, epochs)
    for i, s in enumerate(stages):
        if s.stage == "prune":
            end = s.end_epoch if s.end_epoch is not None else s.start_epoch + 1
            if end > epochs or s.start_epoch >= epochs:
                problems.append(f"compression[{i}].end_epoch: pruning window ends at epoch {end} "
                                f"but the run has {epochs} epochs")
    return problems


def _share_problems(stages: list, epochs: int) -> list[str]:
    """Weight sharing (dlopt.stages.sharing) ties each weight to a centroid for the last
    finetune_epochs: pruning must be over by then, and int8 would replace the codebook."""
    kinds = [s.stage for s in stages]
    if "share" not in kinds:
        return []
    i = kinds.index("share")
    share, problems = stages[i], []
    if "quantize" in kinds:
        problems.append(f"compression[{i}]: share stores each weight as a codebook index; "
                        "quantize would replace the codebook with int8 weights; list one of them")
    if "prune" in kinds and kinds.index("prune") > i:
        problems.append("compression: share is listed before prune; list prune first")
    if share.finetune_epochs > epochs:
        problems.append(f"compression[{i}].finetune_epochs: {share.finetune_epochs} fine-tuning "
                        f"epochs but the run has {epochs} epochs")
    start = max(epochs - share.finetune_epochs, 0)
    for s in stages:
        if s.stage == "prune":
            end = s.end_epoch if s.end_epoch is not None else s.start_epoch + 1
            if end > start:
                problems.append(f"compression[{i}].finetune_epochs: weight sharing starts at epoch "
                                f"{start} but pruning goes on until epoch {end}; end pruning "
                                "first (prune end_epoch) or fine-tune fewer epochs")
    return problems


# Catalog archs by what compression can do with them (dlopt.ml.shrink, dlopt.ml.onnx_int8).
CONV_ARCHS = {"lenet5": "Conv2d", "cnn": "Conv2d", "resnet": "Conv2d"}
ZERO_AT_ZERO = ("relu", "tanh", "gelu", "leaky_relu", "elu", "silu")  # act(0) == 0


def _export_problems(spec) -> list[str]:
    """Compression the saved model cannot carry: a removed conv channel whose act(0) != 0
    (its constant output would vary with the next conv's zero padding), and QAT, which
    fake-quantizes Linear layers only."""
    problems = []
    archs = _points(spec.model.arch)
    for options in _compression_options(spec.compression):
        for i, s in enumerate(options):
            if s.stage == "prune" and s.structured:
                for arch in archs:
                    # resnet and custom archs: dependency groups (dlopt.ml.residual); a model
                    # torch.fx cannot trace is refused by the driver (preflight.traceable_problems)
                    if arch in CONV_ARCHS:
                        bad = [a for a in _points(spec.model.activation) if a not in ZERO_AT_ZERO]
                        if bad:
                            problems.append(
                                f"model.activation: {bad[0]!r} is non-zero at 0, so a removed "
                                f"channel of arch {arch!r} would leave a padding-dependent "
                                f"constant; structured pruning of conv nets needs one of "
                                f"{', '.join(ZERO_AT_ZERO)}")
            if s.stage == "quantize" and "qat" in _points(s.method):
                for arch in archs:
                    if arch in CONV_ARCHS:
                        problems.append(
                            f"compression.{i}.method: 'qat' fake-quantizes nn.Linear only "
                            f"(torchao); the {CONV_ARCHS[arch]} layers of arch {arch!r} cannot be "
                            "quantization-aware trained; use 'static' or 'dynamic' (ONNX Runtime "
                            "quantizes Conv2d too)")
    return list(dict.fromkeys(problems))


def cross_field_problems(spec) -> list[str]:
    """Every problem that needs more than one field; an empty list when the spec is coherent."""
    problems = []
    if "16-mixed" in _points(spec.precision) and not spec.resources.use_gpu:
        problems.append("precision: '16-mixed' needs a GPU (GradScaler on CUDA); "
                        "use 'bf16-mixed' on CPU or set resources.use_gpu=True")
    max_epochs = max(_points(spec.epochs))
    problems += _metric_task_problems(spec)
    local = [d for d in _points(spec.data.dataset) if d in LOCAL_DATASETS]
    if local and spec.data.root is None:
        problems.append(f"data.root: dataset {local[0]!r} is read from a local copy; set "
                        "data.root to the folder holding its raw files")
    if spec.data.download:
        problems.append("data.download: dlopt cannot download datasets (that needs torchvision, "
                        "which does not work with the pinned torch); copy the raw files under "
                        "data.root and leave download=False")
    for options in _compression_options(spec.compression):
        problems += _check_stage_order(options, max_epochs)
    has_grid = any(d["domain"] == "grid" for d in domains(spec).values())
    if has_grid and spec.search.algorithm in ("bayesian", "bayesian_gp", "hyperopt"):
        problems.append(f"search.algorithm: {spec.search.algorithm!r} cannot expand "
                        "tune.grid domains; use tune.choice or algorithm='grid'/'random'")
    problems += _search_problems(spec)
    problems += start_problems(spec, domains(spec))  # points, warm start, stops
    problems += _strategy_problems(spec)
    problems += _gpu_problems(spec.resources)
    problems += _export_problems(spec)
    problems += augment_problems(spec)
    return problems
