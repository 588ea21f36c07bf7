"""Each LR schedule's lr at chosen steps equals its closed form; warmup; per-step vs per-epoch."""
import math
import warnings

import pytest
import torch

from dlopt import Data, Experiment, Model, Optimizer, Schedule

from dlopt.ml import schedules
from dlopt.train.loop import fit

LR = 0.5


def lrs(spec: Schedule, epochs: int = 12, steps_per_epoch: int = 1) -> tuple[str, list[float]]:
    """The lr each scheduler step runs with, stepping as the loop does."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=LR)
    sched, every = schedules.build(spec, opt, epochs, steps_per_epoch)
    n = epochs * steps_per_epoch if every == "step" else epochs
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return every, out


def cos_anneal(start, end, pct):
    return end + (start - end) / 2 * (1 + math.cos(math.pi * pct))


CLOSED_FORMS = {
    "constant": (Schedule(name="constant"), lambda t: LR),
    "step": (Schedule(name="step", step_size=3, gamma=0.5), lambda t: LR * 0.5 ** (t // 3)),
    "multistep": (Schedule(name="multistep", milestones=[2, 7], gamma=0.1),
                  lambda t: LR * 0.1 ** sum(t >= m for m in (2, 7))),
    "exponential": (Schedule(name="exponential", gamma=0.9), lambda t: LR * 0.9 ** t),
    "inverse_time": (Schedule(name="inverse_time", decay_steps=4, power=0.5),
                     lambda t: LR * (1 + t / 4) ** -0.5),
    # T defaults to the run's length (12 epochs)
    "inverse_time_default_T": (Schedule(name="inverse_time", power=2.0),
                               lambda t: LR * (1 + t / 12) ** -2.0),
    "linear": (Schedule(name="linear"), lambda t: LR * (1 - t / 12)),
    "linear_min_lr": (Schedule(name="linear", min_lr=0.05), lambda t: LR + (0.05 - LR) * t / 12),
    "cosine": (Schedule(name="cosine", min_lr=0.01),
               lambda t: cos_anneal(LR, 0.01, t / 12)),
}


@pytest.mark.parametrize("case", sorted(CLOSED_FORMS))
def test_schedule_matches_closed_form(case):
    spec, formula = CLOSED_FORMS[case]
    every, got = lrs(spec)
    assert every == "epoch"
    for t in range(12):
        assert got[t] == pytest.approx(formula(t), rel=1e-9, abs=1e-12), (case, t)


def test_cosine_restarts_sgdr():
    # SGDR (Loshchilov & Hutter): T_0 = 2, T_mult = 2 -> cycles of 2, 4, 8 steps
    _, got = lrs(Schedule(name="cosine_restarts", step_size=2, restart_mult=2, min_lr=0.0))
    starts, lengths, t0 = [], [2, 4, 8], 0
    for length in lengths:
        starts.append((t0, length))
        t0 += length
    for t in range(12):
        start, length = max((s for s in starts if s[0] <= t), key=lambda s: s[0])
        assert got[t] == pytest.approx(cos_anneal(LR, 0.0, (t - start) / length), abs=1e-12), t
    assert got[0] == got[2] == got[6] == pytest.approx(LR)  # restarts


def one_cycle_formula(t, total, pct):
    """torch's OneCycleLR (cos): max_lr/25 -> max_lr by step pct*T-1, then -> max_lr/25/1e4."""
    initial, final = LR / 25, LR / 25 / 1e4
    peak = pct * total - 1
    if t <= peak:
        return cos_anneal(initial, LR, t / peak)
    return cos_anneal(LR, final, (t - peak) / (total - 1 - peak))


def test_one_cycle_steps_per_batch_and_matches_closed_form():
    every, got = lrs(Schedule(name="one_cycle"), epochs=5, steps_per_epoch=4)
    assert every == "step" and len(got) == 20
    for t in range(20):
        assert got[t] == pytest.approx(one_cycle_formula(t, 20, 0.3), rel=1e-9), t
    assert max(got) == pytest.approx(LR)


def test_one_cycle_warmup_is_its_rise_phase():
    # 2 warmup epochs x 4 steps = 8 of 20 steps rising: the peak is max_lr, at step 7
    _, got = lrs(Schedule(name="one_cycle", warmup_epochs=2), epochs=5, steps_per_epoch=4)
    for t in range(20):
        assert got[t] == pytest.approx(one_cycle_formula(t, 20, 8 / 20), rel=1e-9), t
    assert got.index(max(got)) == 7 and max(got) == pytest.approx(LR)


@pytest.mark.parametrize("name", ["cosine", "inverse_time", "step", "exponential"])
def test_linear_warmup_then_schedule(name):
    """W warmup steps ramp lr*(t+1)/(W+1); then the schedule starts at lr, shifted by W."""
    warm = 3
    base = Schedule(name=name, step_size=2, gamma=0.5, decay_steps=4)
    _, plain = lrs(base, epochs=12 - warm)
    _, got = lrs(base.model_copy(update={"warmup_epochs": warm}), epochs=12)
    for t in range(warm):
        assert got[t] == pytest.approx(LR * (t + 1) / (warm + 1), rel=1e-9)
    for t in range(warm, 12):
        assert got[t] == pytest.approx(plain[t - warm], rel=1e-9), t


def test_interval_step_steps_every_batch():
    every, got = lrs(Schedule(name="exponential", gamma=0.9, interval="step"), epochs=3,
                     steps_per_epoch=5)
    assert every == "step"
    assert got == pytest.approx([LR * 0.9 ** t for t in range(15)])


def test_loop_reports_the_scheduled_lr_each_epoch(tmp_path):
    """In the real loop: reported lr is the lr the epoch trained with (inverse_time, per epoch)."""
    reports = []
    spec = Experiment(name="s", epochs=4, data=Data(dataset="digits", batch_size=256),
                      model=Model(hidden=[16]), optimizer=Optimizer(name="sgd", lr=LR),
                      schedule=Schedule(name="inverse_time", decay_steps=2, power=1.0))
    fit(spec, lambda m, w=None: reports.append(m))
    got = [m["lr"] for m in reports if not m.get("final")]
    assert got == pytest.approx([LR * (1 + e / 2) ** -1 for e in range(4)])


def test_loop_steps_one_cycle_per_batch(tmp_path):
    reports = []
    spec = Experiment(name="s", epochs=3, data=Data(dataset="digits", batch_size=512),
                      model=Model(hidden=[16]), optimizer=Optimizer(name="sgd", lr=LR),
                      schedule=Schedule(name="one_cycle"))
    state = fit(spec, lambda m, w=None: reports.append(m))
    spe = state.steps_per_epoch
    assert spe == 3  # 1437 training digits / 512
    got = [m["lr"] for m in reports if not m.get("final")]  # lr of each epoch's last batch
    assert got == pytest.approx([one_cycle_formula(e * spe + spe - 1, 3 * spe, 0.3)
                                 for e in range(3)], rel=1e-9)
