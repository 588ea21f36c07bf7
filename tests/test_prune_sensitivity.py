"""Prune(allocation="sensitivity") in the real training loop (no Ray): the per-layer sparsities
are chosen on the validation split only, meet the global budget, are reported per layer
(final metrics and the compression report's `layers` table), survive a restart, and the spec
refuses what cannot work."""
import pytest
from dlopt import Data, Experiment, Model, Optimizer, Prune, Resources, Tracking
from dlopt.driver.tables import compression_report
from dlopt.spec.checks import cross_field_problems
from dlopt.train import loop
from dlopt.train.loop import fit, load_checkpoint

BUDGET = 0.9


def _spec(**kw):
    prune = Prune(scope="layer", sparsity=BUDGET, allocation="sensitivity", schedule="gradual",
                  start_epoch=1, end_epoch=3, frequency=4)
    return Experiment(name="s", epochs=4, data=Data(dataset="digits", batch_size=64),
                      model=Model(hidden=[48, 24]),
                      optimizer=Optimizer(name="sgd", lr=0.05, momentum=0.9),
                      compression=[prune], tracking=Tracking(report_every=1), **kw)


class Reports:
    def __init__(self, tmp_path):
        self.metrics, self.dirs, self.tmp = [], [], tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)

    def __call__(self, metrics, write=None):
        self.metrics.append(metrics)
        if write is not None:
            d = self.tmp / f"ckpt{len(self.metrics)}"
            d.mkdir()
            write(d)
            self.dirs.append(d)


def _layers(final):
    return {k[len("prune_sparsity."):]: v for k, v in final.items()
            if k.startswith("prune_sparsity.")}


def test_sensitivity_meets_the_budget_on_validation_only(tmp_path, monkeypatch):
    loaded, splits = [], []
    real_load, real_evaluate = loop.data_mod.load, loop.evaluate
    monkeypatch.setattr(loop.data_mod, "load",
                        lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1])

    def spy(model, split, *a, **k):
        splits.append(split)
        return real_evaluate(model, split, *a, **k)
    monkeypatch.setattr(loop, "evaluate", spy)
    r = Reports(tmp_path)
    fit(_spec(), r)
    final = r.metrics[-1]
    layers = _layers(final)
    assert len(layers) == 3  # 64-48-24-10: three Linear layers, one sparsity each
    params = {n: final[f"prune_params.{n}"] for n in layers}
    kept = {n: final[f"prune_kept.{n}"] for n in layers}
    assert sum(params.values()) - sum(kept.values()) >= BUDGET * sum(params.values())
    for n in layers:  # the masks hold the chosen sparsity, layer by layer
        assert kept[n] == params[n] - round(layers[n] * params[n])
    assert final["prune_rank_mask_mismatches"] == 0
    # every evaluation (sensitivity included: more than one per epoch) saw the validation split
    (d,) = loaded
    assert len(splits) > 4 * 2 and all(s is d.val for s in splits)
    assert not any(s is d.test for s in splits)
    table = compression_report({"metrics": final}, [])["layers"]
    assert [row["layer"] for row in table] == list(layers)
    assert all(row["kept"] == kept[row["layer"]] for row in table)


def test_chosen_sparsities_survive_a_restart(tmp_path):
    full = Reports(tmp_path / "full")
    fit(_spec(), full)
    part = Reports(tmp_path / "part")

    class Crash(Exception):
        pass

    def crash_after_epoch_2(metrics, write=None):
        part(metrics, write)
        if metrics.get("epoch") == 2:
            raise Crash  # after the choice, mid schedule

    with pytest.raises(Crash):
        fit(_spec(), crash_after_epoch_2)
    rest = Reports(tmp_path / "rest")
    fit(_spec(), rest, resume=load_checkpoint(part.dirs[-1]))
    assert _layers(rest.metrics[-1]) == _layers(full.metrics[-1])


@pytest.mark.parametrize("kw,fragment", [
    ({"scope": "global"}, "allocation: 'sensitivity' chooses one sparsity per layer"),
    ({"scope": "layer", "structured": True}, "use structured=false"),
])
def test_spec_refuses_sensitivity_where_it_cannot_work(kw, fragment):
    with pytest.raises(ValueError, match=fragment):
        Prune(sparsity=0.9, allocation="sensitivity", **kw)


def test_spec_refuses_sensitivity_under_fsdp():
    with pytest.raises(ValueError, match=r"compression\[0\].allocation: .*FSDP shards"):
        _spec(resources=Resources(num_workers=2, strategy="fsdp"))
    assert cross_field_problems(_spec(resources=Resources(num_workers=2))) == []  # DDP
