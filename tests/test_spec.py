"""Unit tests of the spec: domains, bounds, unknown fields, JSON round trip, field paths."""
import json

import pytest
from pydantic import ValidationError

from dlopt import (Data, Distill, Experiment, Model, Optimizer, Prune, Quantize, Resources,
                   Schedule, Search, Tracking, tune)
from dlopt.spec.load import SpecError, error_lines, load
from dlopt.spec import domains, flatten, resolve


def make(**kw):
    return Experiment(name="t", **kw)


def errors_of(**kw):
    with pytest.raises(ValidationError) as info:
        make(**kw)
    return error_lines(info.value)


def test_defaults_validate_and_have_no_domains():
    spec = make()
    assert domains(spec) == {}
    assert spec.optimizer.name == "adam"


def test_domains_are_found_by_dotted_path():
    spec = make(optimizer=Optimizer(lr=tune.loguniform(1e-4, 1e-1)),
                model=Model(hidden=[64, tune.choice([32, 16])]),
                compression=[Prune(sparsity=tune.uniform(0.5, 0.9), end_epoch=3)], epochs=5)
    assert set(domains(spec)) == {"optimizer.lr", "model.hidden.1", "compression.0.sparsity"}


@pytest.mark.parametrize("field,domain", [
    ("lr", tune.uniform(-1.0, 1.0)),
    ("lr", tune.choice([0.1, 0.0])),
    ("momentum", tune.uniform(0.5, 1.5)),
    ("weight_decay", tune.choice([-1e-4, 1e-4])),
])
def test_domain_bounds_are_checked_against_field_constraints(field, domain):
    lines = errors_of(optimizer={field: domain})
    assert len(lines) == 1 and lines[0].startswith(f"optimizer.{field}:"), lines


@pytest.mark.parametrize("build, field, line", [
    (lambda: tune.loguniform(0.0, 1.0), "lr", "optimizer.lr: tune.loguniform low must be > 0"),
    (lambda: tune.uniform(1.0, 0.5), "lr",
     "optimizer.lr: tune.uniform needs low < high, got 1.0 >= 0.5"),
    (lambda: tune.choice([]), "lr", "optimizer.lr: tune.choice needs at least 1 value"),
    (lambda: tune.randint(3, 3), "epochs", "epochs: tune.randint needs low < high, got 3 >= 3"),
])
def test_domain_own_constraints_name_the_field(build, field, line):
    """A domain is checked where it is placed, so the error names that field (not
    `loguniform.low`, which the user cannot find in the spec)."""
    domain = build()  # building it alone is not an error: it belongs to no field yet
    kw = {"epochs": domain} if field == "epochs" else {"optimizer": {field: domain}}
    assert errors_of(**kw) == [line]


def test_section_built_alone_names_the_field():
    with pytest.raises(ValidationError) as info:
        Optimizer(lr=tune.loguniform(0.0, 1.0))
    assert error_lines(info.value, prefix="optimizer") == [
        "optimizer.lr: tune.loguniform low must be > 0"]


def test_one_path_style_in_every_message():
    """Dotted paths, list indexes in brackets: pydantic locations, section checks and
    cross-field checks alike."""
    assert errors_of(model={"hidden": [64, 0]}) == ["model.hidden[1]: must be >= 1"]
    assert errors_of(compression=[{"stage": "prune", "sparsity": 1.5}])[0].startswith(
        "compression[0].sparsity: ")
    lines = errors_of(epochs=4, compression=[Prune(sparsity=0.5, start_epoch=2, end_epoch=9)])
    assert lines == ["compression[0].end_epoch: pruning window ends at epoch 9 but the run has 4 "
                     "epochs"]
    assert errors_of(optimizer={"name": "adam", "nesterov": True})[0].startswith(
        "optimizer.nesterov: ")
    assert errors_of(search={"scheduler": "pbt", "pbt_mutations": {
        "optimizer.lr": tune.loguniform(-1.0, 1.0)}}, epochs=6) == [
        "search.pbt_mutations.optimizer.lr: tune.loguniform low must be > 0"]


def test_error_in_the_users_own_code_names_file_and_line(tmp_path):
    spec = tmp_path / "x.py"
    spec.write_text("from dlopt import Experiment\n\nexperiment = Experiment(name=1 / 0)\n")
    with pytest.raises(SpecError) as info:
        load(spec)
    assert info.value.lines == [f"spec: {spec}:3: ZeroDivisionError: division by zero"]
    spec.write_text("from dlopt import Experiment, Optimizer\nexperiment = Experiment(\n"
                    "    name='x', optimizer=Optimizer(lr=-1))\n")
    with pytest.raises(SpecError) as info:
        load(spec)
    assert info.value.lines == [f"optimizer.lr: Input should be greater than 0 ({spec}:3)"]


def test_set_accepts_both_index_styles(tmp_path):
    spec = tmp_path / "x.yaml"
    spec.write_text("name: x\nmodel: {hidden: [8, 8]}\n")
    assert load(spec, ["model.hidden[1]=4"]).model.hidden == [8, 4]
    assert load(spec, ["model.hidden.0=2"]).model.hidden == [2, 8]


def test_valid_domains_accepted_in_int_and_categorical_fields():
    spec = make(data=Data(batch_size=tune.grid([16, 32])), optimizer=Optimizer(name=tune.choice(["sgd", "adam"])),
                epochs=tune.randint(2, 5), search=Search(algorithm="random"))
    assert set(domains(spec)) == {"data.batch_size", "optimizer.name", "epochs"}
    lines = errors_of(optimizer={"name": tune.choice(["sgd", "nope"])})
    assert lines[0].startswith("optimizer.name:") and "valid:" in lines[0]


def test_unknown_fields_are_refused_everywhere():
    assert errors_of(bogus=1) == ["bogus: Extra inputs are not permitted"]
    assert errors_of(optimizer={"learning_rate": 0.1})[0].startswith("optimizer.learning_rate:")
    assert errors_of(compression=[{"stage": "prune", "amount": 0.5}])[0].startswith("compression[0].amount:")


def test_one_line_per_problem_with_field_paths():
    lines = errors_of(optimizer={"lr": -1}, data={"batch_size": 0}, model={"dropout": 1.5})
    assert sorted(l.split(":")[0] for l in lines) == ["data.batch_size", "model.dropout", "optimizer.lr"]


def test_unknown_catalog_names_list_valid_ones():
    for section, field in [("optimizer", "name"), ("schedule", "name"), ("model", "init"),
                           ("model", "arch"), ("data", "dataset")]:
        lines = errors_of(**{section: {field: "nope"}})
        assert lines[0].startswith(f"{section}.{field}:") and "valid:" in lines[0], lines


def test_custom_components_by_import_path():
    spec = make(optimizer=Optimizer(name="torch.optim:SGD"), model=Model(arch="mypkg.nets:Net"))
    assert spec.optimizer.name == "torch.optim:SGD"


def test_cross_field_rules():
    assert any("16-mixed" in l for l in errors_of(precision="16-mixed"))
    assert any("quantize is listed before prune" in l for l in errors_of(
        epochs=5, compression=[Quantize(), Prune(end_epoch=2)]))
    assert any("grace_period" in l for l in errors_of(epochs=2, search=Search(scheduler="asha", grace_period=2)))
    assert any("needs a single metric" in l for l in errors_of(
        search={"objectives": {"val_accuracy": "max", "model_bytes": "min"}, "scheduler": "asha"}))
    assert any("pbt_mutations" in l for l in errors_of(search={"scheduler": "pbt"}))


def test_distill_needs_a_registry_uri():
    with pytest.raises(ValidationError):
        Distill(teacher="/tmp/model.pt")
    assert Distill(teacher="models:/teacher@champion").alpha == 0.7


def test_json_round_trip_with_domains():
    spec = make(optimizer=Optimizer(lr=tune.loguniform(1e-4, 1e-1), name=tune.choice(["sgd", "adam"])),
                compression=tune.choice([[Prune(sparsity=0.5, end_epoch=3)],
                                         [Prune(sparsity=0.9, end_epoch=3), Quantize()]]),
                epochs=5)
    data = json.loads(spec.model_dump_json())
    again = Experiment.model_validate(data)
    assert again.model_dump(mode="json") == data
    assert again == Experiment.model_validate_json(spec.model_dump_json())


def test_resolve_replaces_domains_and_revalidates():
    spec = make(optimizer=Optimizer(lr=tune.loguniform(1e-4, 1e-1)))
    concrete = resolve(spec.model_dump(mode="json"), {"optimizer.lr": 0.01})
    assert concrete.optimizer.lr == 0.01 and domains(concrete) == {}
    with pytest.raises(ValidationError):
        resolve(spec.model_dump(mode="json"), {"optimizer.lr": -0.01})


def test_flatten_gives_dotted_params():
    flat = flatten(make().model_dump(mode="json"))
    assert flat["optimizer.lr"] == 1e-3 and flat["model.hidden"] == [128]


def test_spec_hash_changes_with_content():
    assert make().spec_hash() != make(seed=1).spec_hash()
    assert make().spec_hash() == make().spec_hash()


def test_load_python_yaml_and_json(tmp_path):
    py = tmp_path / "x.py"
    py.write_text("from dlopt import Experiment, Optimizer\n"
                  "experiment = Experiment(name='x', optimizer=Optimizer(lr=0.1))\n")
    assert load(py).optimizer.lr == 0.1
    yml = tmp_path / "x.yaml"
    yml.write_text("name: y\noptimizer:\n  lr: {domain: loguniform, low: 0.001, high: 0.1}\n")
    assert "optimizer.lr" in domains(load(yml))
    js = tmp_path / "x.json"
    js.write_text(json.dumps(make().model_dump(mode="json")))
    assert load(js).name == "t"
    assert load(py, ["optimizer.lr=0.5", "model.hidden=[8,8]"]).model.hidden == [8, 8]


def test_python_spec_section_errors_name_the_section(tmp_path):
    py = tmp_path / "bad.py"
    py.write_text("from dlopt import Experiment, Optimizer\n"
                  "experiment = Experiment(name='x', optimizer=Optimizer(lr=-1))\n")
    with pytest.raises(SpecError) as info:
        load(py)
    assert info.value.lines[0].startswith("optimizer.lr:")


def test_every_section_model_exported():
    for cls in (Data, Model, Optimizer, Schedule, Prune, Quantize, Distill, Search, Resources, Tracking):
        assert cls.model_config["extra"] == "forbid"
