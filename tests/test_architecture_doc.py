"""docs/architecture.md states what the code does: its layers table is pyproject's
import-linter contract, its catalogs are literal dicts (one per kind), its table of who
imports Ray, MLflow and torch is the import graph's, and every `dlopt.*` name and file path
it mentions exists. A claim the code stops keeping fails here, not in a reader's head."""
import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest
from dlopt_testing import module_file, resolve

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "platform" / "dlopt"
DOC = (ROOT / "docs" / "architecture.md").read_text()
DOTTED = re.compile(r"`(dlopt(?:\.\w+)+)(?:\(\))?`")


def section(title: str) -> str:
    """The text of one `## title` section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.M | re.S)
    assert match, f"docs/architecture.md has no section {title!r}"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the markdown tables in `text`, as stripped cells."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.lstrip().startswith("|")]
    return [r for r in rows if not all(set(c) <= set("-: ") for c in r)]


# ------------------------------------------------------------------------- names and paths
def test_every_dlopt_name_the_doc_mentions_exists():
    missing = sorted({n for n in DOTTED.findall(DOC) if not resolve(n)})
    assert missing == []


def test_every_file_the_doc_mentions_exists():
    """Paths and globs (`experiments/*.py`) match files, except those the doc says are not
    there ("There is no `platform/__init__.py`")."""
    paths = set(re.findall(r"(?<![\w/.])((?:tests|benchmarks|docs|platform|experiments|"
                           r"clusters)/[\w/.*-]*\w\.(?:py|md|toml))", DOC))
    absent = set(re.findall(r"There is no `([\w/.]+)`", DOC))
    assert paths and absent, "the doc names files"
    assert sorted(p for p in paths - absent if not list(ROOT.glob(p))) == []
    assert sorted(p for p in absent if (ROOT / p).exists()) == []


def test_name_resolution_can_fail():
    assert resolve("dlopt.ml.models.MODELS") and resolve("dlopt.tracking.store")
    assert not resolve("dlopt.ml.models.NO_SUCH_NAME") and not resolve("dlopt.no_such_module")


# ------------------------------------------------------------------------------------ layers
def test_layers_table_is_the_import_linter_contract():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contract = next(c for c in pyproject["tool"]["importlinter"]["contracts"]
                    if c["type"] == "layers")
    rows = [r for r in table_rows(section("Layers")) if r[0].isdigit()]
    assert [re.sub(r"[`\s]", "", r[1]) for r in rows] == contract["layers"]
    numbers = [int(r[0]) for r in rows]
    assert numbers == sorted(numbers, reverse=True) and numbers[-1] == 1


def test_spec_rule_is_a_forbidden_contract():
    """"`dlopt.spec` imports neither torch, Ray nor MLflow": checked by import-linter."""
    assert "`dlopt.spec` imports neither torch, Ray nor MLflow" in section("Layers")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(c["type"] == "forbidden" and c["source_modules"] == ["dlopt.spec"]
               and set(c["forbidden_modules"]) >= {"torch", "ray", "mlflow"}
               for c in pyproject["tool"]["importlinter"]["contracts"])


def _dependency_rows() -> dict[str, list[str]]:
    """The doc's table `dependency | imported only by`: package -> dlopt names listed."""
    rows = {}
    for cells in table_rows(section("Layers")):
        external = re.fullmatch(r".*\(`(\w+)`\)", cells[0])
        if external and len(cells) == 2:
            rows[external.group(1)] = re.findall(r"`(dlopt[\w.]*)`", cells[1])
    return rows


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("dlopt", include_external_packages=True)  # function-level too


def _covered(module: str, listed: list[str]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in listed)


@pytest.mark.parametrize("external", ["ray", "mlflow", "torch"])
def test_who_imports_ray_mlflow_and_torch_is_what_the_doc_says(graph, external):
    listed = _dependency_rows().get(external)
    assert listed, f"the Layers section lists who imports {external}"
    importers = graph.find_modules_that_directly_import(external)
    assert sorted(m for m in importers if not _covered(m, listed)) == [], \
        f"modules import {external} that docs/architecture.md does not list"
    assert [n for n in listed if not any(_covered(m, [n]) for m in importers)] == [], \
        f"docs/architecture.md lists modules that do not import {external}"


def test_packages_whose_docstring_says_no_ray_no_mlflow_import_neither(graph):
    """A layer's own docstring ("No Ray, no MLflow.") is checked like the doc's table."""
    claims = [p.parent.name for p in sorted(PACKAGE.glob("*/__init__.py"))
              if "No Ray, no MLflow" in (ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert "ml" in claims
    for external in ("ray", "mlflow"):
        importers = graph.find_modules_that_directly_import(external)
        assert sorted(m for m in importers if _covered(m, [f"dlopt.{c}" for c in claims])) == []


def test_modules_said_to_load_neither_ray_nor_mlflow_do_not():
    claims = re.findall(r"((?:`dlopt[\w.]*`(?:,? and |, )?)+) loads?\s+neither\s+Ray\s+nor\s+"
                        r"MLflow", DOC)
    modules = [m for claim in claims for m in re.findall(r"`(dlopt[\w.]*)`", claim)]
    assert modules
    code = (f"import sys; import {', '.join(modules)}; "
            "print(sorted({'ray', 'mlflow'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


# ---------------------------------------------------------------------------- typed boundaries
def _is_frozen_dataclass(node: ast.AST) -> bool:
    return isinstance(node, ast.ClassDef) and any(
        isinstance(d, ast.Call) and getattr(d.func, "id", None) == "dataclass"
        and any(k.arg == "frozen" and getattr(k.value, "value", None) is True for k in d.keywords)
        for d in node.decorator_list)


def test_objects_crossing_boundaries_are_frozen_dataclasses():
    names = [DOTTED.fullmatch(r[0]).group(1) for r in table_rows(section("Typed boundaries"))
             if DOTTED.fullmatch(r[0])]
    assert len(names) >= 5, names
    for dotted in names:
        module, cls = dotted.rsplit(".", 1)
        tree = ast.parse(module_file(module.split(".")[1:]).read_text())
        node = next((n for n in tree.body if getattr(n, "name", None) == cls), None)
        assert _is_frozen_dataclass(node), f"{dotted} is not a frozen dataclass"


# ---------------------------------------------------------------------------------- catalogs
def _catalogs() -> list[str]:
    names = [n for n in DOTTED.findall(section("Catalogs")) if n.rsplit(".", 1)[1].isupper()]
    assert len(names) >= 6, names
    return names


def _literal_dicts(path: Path) -> dict[str, int]:
    """Top-level names a module assigns a literal dict to, with how often it assigns them."""
    found: dict[str, int] = {}
    for node in ast.parse(path.read_text()).body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        for target in targets:
            if isinstance(target, ast.Name) and isinstance(node.value, ast.Dict):
                found[target.id] = found.get(target.id, 0) + 1
    return found


def test_each_catalog_is_one_literal_dict_in_one_module():
    """One catalog per kind: the dict the doc names, assigned once, and no second dict of
    the same name anywhere in the package (the spec's name tuples are not dicts)."""
    for dotted in _catalogs():
        module, name = dotted.rsplit(".", 1)
        path = module_file(module.split(".")[1:])
        assert path is not None, dotted
        assert _literal_dicts(path).get(name) == 1, f"{dotted} is not one literal dict"
        others = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                  if p != path and name in _literal_dicts(p)]
        assert others == [], f"{dotted}: a second catalog of the same kind"


def test_each_catalog_maps_names_to_builders():
    import importlib

    for dotted in _catalogs():
        module, name = dotted.rsplit(".", 1)
        catalog = getattr(importlib.import_module(module), name)
        assert isinstance(catalog, dict) and catalog, dotted
        assert all(isinstance(k, str) and callable(v) for k, v in catalog.items()), dotted
