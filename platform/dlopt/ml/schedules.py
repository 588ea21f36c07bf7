"""LR schedule catalog: name -> builder(spec, optimizer, total) on torch.optim.lr_scheduler.

`total` counts scheduler steps after warmup (epochs, or batches when interval="step").
torch has no inverse-time decay, so that one is a LambdaLR over its closed form.
Spec fields per schedule: step (step_size, gamma), multistep (milestones, gamma),
exponential (gamma), inverse_time (decay_steps = T, default the run; power = beta),
linear and cosine (decay_steps, default the run; min_lr), cosine_restarts (step_size = the
first period T_0, restart_mult = T_mult, min_lr), one_cycle (the run; its rise phase is the
warmup, 30% of the run without one). warmup_epochs ramps linearly from lr/(W+1) up to lr.
Tests: tests/test_stages_schedules.py checks each against its closed form.
"""
from __future__ import annotations

from torch.optim import lr_scheduler as sched

from dlopt.spec import Schedule

DEFAULT_INTERVAL = {"one_cycle": "step"}  # others step once per epoch unless told


def inverse_time_factor(t: int, decay_steps: float, power: float) -> float:
    """lr_t / lr = (1 + t / T) ** -beta."""
    return (1.0 + t / decay_steps) ** (-power)


def _base_lr(opt) -> float:
    return opt.param_groups[0]["lr"]


SCHEDULES = {
    "constant": lambda s, opt, total: sched.LambdaLR(opt, lambda t: 1.0),
    "step": lambda s, opt, total: sched.StepLR(opt, step_size=s.step_size, gamma=s.gamma),
    "multistep": lambda s, opt, total: sched.MultiStepLR(opt, milestones=s.milestones, gamma=s.gamma),
    "exponential": lambda s, opt, total: sched.ExponentialLR(opt, gamma=s.gamma),
    "inverse_time": lambda s, opt, total: sched.LambdaLR(
        opt, lambda t, T=(s.decay_steps or total), p=s.power: inverse_time_factor(t, T, p)),
    "linear": lambda s, opt, total: sched.LinearLR(
        opt, start_factor=1.0, end_factor=max(s.min_lr / _base_lr(opt), 0.0),
        total_iters=int(s.decay_steps or total)),
    "cosine": lambda s, opt, total: sched.CosineAnnealingLR(
        opt, T_max=int(s.decay_steps or total), eta_min=s.min_lr),
    "cosine_restarts": lambda s, opt, total: sched.CosineAnnealingWarmRestarts(
        opt, T_0=s.step_size, T_mult=s.restart_mult, eta_min=s.min_lr),
    "one_cycle": lambda s, opt, total: one_cycle(s, opt, total, warmup=0),
}
# Schedules whose rise phase is their own warmup: a LinearLR ramp in front of OneCycleLR
# would ramp to OneCycle's *initial* lr (max_lr / 25), not to max_lr (measured).
OWN_WARMUP = {"one_cycle"}


def one_cycle(s: Schedule, opt, total: int, warmup: int):
    """OneCycleLR over the whole run (`total` steps; it raises if stepped past its end, so
    decay_steps can only lengthen it); with warmup its rise phase lasts the warmup steps
    (at least 2: a one-step phase divides by zero inside OneCycleLR)."""
    steps = max(int(max(total, s.decay_steps or 0)), 2)
    pct = min(max(warmup, 2) / steps, 0.99) if warmup else 0.3
    return sched.OneCycleLR(opt, max_lr=_base_lr(opt), total_steps=steps, pct_start=pct)


def interval(spec: Schedule) -> str:
    return spec.interval or DEFAULT_INTERVAL.get(spec.name, "epoch")


def build(spec: Schedule, optimizer, epochs: int, steps_per_epoch: int):
    """The scheduler and how often to step it ("step" or "epoch")."""
    every = interval(spec)
    per = steps_per_epoch if every == "step" else 1
    warmup = spec.warmup_epochs * per
    if spec.name in OWN_WARMUP:
        return one_cycle(spec, optimizer, max(epochs * per, 2), warmup), every
    total = max(epochs * per - warmup, 1)
    main = SCHEDULES[spec.name](spec, optimizer, total)
    if warmup == 0:
        return main, every
    ramp = sched.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup]), every
