"""The seams of the house: every method's session keeps the one contract every workflow uses, every option
has one meaning, old option names still work with a warning, and the package has no import cycle."""

from __future__ import annotations

import ast
import re
import dataclasses
import sys
import warnings
from pathlib import Path

import pytest

from onnxprune.data import load_data
from onnxprune.errors import ConfigError
from onnxprune.graph.canonical import canonicalize
from onnxprune.graph.io import load_model
from onnxprune.methods import METHODS, get_method, make_config, method_catalogue, prune_model
from onnxprune.methods.base import PruneSession
from onnxprune.options import GLOSSARY

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
PACKAGE = ROOT / "onnxprune"
# the option every engine-specific run needs to stay quick on the MLP
QUICK = {"chita": {"rows": 32}, "chita++": {"rows": 32, "stages": 2}}


@pytest.fixture(scope="module")
def mlp():
    model = canonicalize(load_model(MODELS / "mlp.onnx")).model
    return model, load_data(MODELS / "mlp_calib.npz", model).take(64)


def _variants():
    """Every registered method, and CHITA's and CHITA++'s engines one by one."""
    for name in METHODS:
        engines = ("auto", "model", "layer") if name in ("chita", "chita++") else (None,)
        for engine in engines:
            yield name, engine


def _config(name: str, engine: str | None, **options):
    if engine is not None:
        options["engine"] = engine
        if engine == "model" or (engine == "auto" and name == "chita++"):
            options.update(QUICK[name])
    return make_config(get_method(name), **options)


@pytest.mark.parametrize("name, engine", list(_variants()))
def test_every_session_keeps_the_one_contract(mlp, name, engine):
    model, calib = mlp
    spec = get_method(name)
    session = spec.open(model, _config(name, engine), calib if spec.needs_calib else None)
    assert isinstance(session, PruneSession) and session.method == name
    session.expect([0.5, 0.3])  # every session takes the hint, whether or not it uses it
    result = session.prune(0.3)
    assert result.model.graph.output[0].name == model.graph.output[0].name
    if spec.structured:
        groups = session.target_groups()
        assert groups and session.round_to == 1 and session.reference_model() is not None
        widths = {groups[0].index: groups[0].size // 2}
        assert len(session.width_errors(groups[0].index, [groups[0].size // 2])) == 1
        shaped, pruned = session.shape_model(widths), session.prune_widths(widths).model
        assert [i.dims for i in shaped.graph.initializer] == [i.dims for i in pruned.graph.initializer]
    else:
        with pytest.raises(ConfigError, match=f"use a channel method .*not '{re.escape(name)}'"):
            session.target_groups()


def test_every_option_has_one_meaning_and_the_catalogue_lists_it_once():
    catalogue = method_catalogue()
    names = [o["name"] for o in catalogue["options"]]
    assert len(names) == len(set(names))
    for spec in METHODS.values():
        for f in dataclasses.fields(spec.config_cls):
            assert f.name in GLOSSARY, f"{spec.name}.{f.name} has no meaning in onnxprune.options.GLOSSARY"
    assert set(GLOSSARY) == set(names), "GLOSSARY names an option no method has"
    ridge = next(o for o in catalogue["options"] if o["name"] == "ridge")
    assert ridge["defaults"] == {"chita": None, "chita++": None, "sparsegpt": 0.01, "l1-channel": 1e-4,
                                 "intrafusion": 1e-4, "chita-channel": 1e-4}
    assert all(m["reuse"] for m in catalogue["methods"])
    assert catalogue["renamed"] == {"damp": "ridge", "block_size": "sweep_block", "calib_rows": "rows"}


@pytest.mark.parametrize("method, old, new", [
    ("sparsegpt", {"damp": "0.05"}, {"ridge": 0.05}),
    ("sparsegpt", {"block_size": "16"}, {"sweep_block": 16}),
    ("chita", {"damp": "0.05"}, {"ridge": 0.05}),
    ("l1-channel", {"calib_rows": "500"}, {"rows": 500}),
    ("sparsegpt", {"sequential": "true"}, {"sequential": "on"}),
    ("chita-channel", {"sequential": False}, {"sequential": "off"}),
])
def test_old_option_names_and_values_still_work_with_a_warning(method, old, new):
    spec = get_method(method)
    with pytest.warns(FutureWarning, match="next release"):
        config = make_config(spec, **old)
    assert config == make_config(spec, **new)


def test_an_old_and_a_new_name_together_are_refused():
    with pytest.raises(ConfigError, match="old name of 'ridge'"):
        make_config(get_method("sparsegpt"), damp=0.1, ridge=0.2)


def test_renamed_options_give_the_same_model(mlp):
    model, calib = mlp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        old = prune_model("sparsegpt", model, make_config(get_method("sparsegpt"), sparsity=0.5, damp=0.05), calib)
    new = prune_model("sparsegpt", model, make_config(get_method("sparsegpt"), sparsity=0.5, ridge=0.05), calib)
    assert old.model.SerializeToString() == new.model.SerializeToString()


@pytest.mark.parametrize("options, message", [
    ({"engine": "layer", "rows": 10}, "rows is an option of CHITA's model engine"),
    ({"rows": 10}, "the layer engine runs here"),  # one-shot auto is the layer engine
    ({"engine": "model", "swap_rounds": 3}, "swap_rounds is an option of CHITA's layer engine"),
])
def test_options_of_the_engine_that_does_not_run_are_refused(mlp, options, message):
    model, calib = mlp
    with pytest.raises(ConfigError, match=message):
        get_method("chita").open(model, make_config(get_method("chita"), **options), calib)


def test_integer_options_take_integers_only():
    with pytest.raises(ConfigError, match="round_to must be an integer, not 2.5"):
        make_config(get_method("l1-channel"), round_to=2.5)
    assert make_config(get_method("l1-channel"), round_to=8.0).round_to == 8


def _runtime_imports(path: Path) -> set[str]:
    """The onnxprune modules a file imports when it runs (module or function level; not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    type_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(child) for inner in node.body for child in ast.walk(inner))
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("onnxprune"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # 'from onnxprune.x import module'
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("onnxprune"))
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {name: {m for m in _runtime_imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_the_package_has_no_import_cycle():
    graph = _import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not any(m.startswith("onnxprune.workflows") for m in graph["onnxprune.pipeline"])
    # the ONNX Runtime layer sits below activations/, view/ and validate/ and imports none of them
    for module in ("onnxprune.runtime.sessions", "onnxprune.runtime.feeds"):
        assert not {m for m in graph[module] if m.split(".")[1] in ("activations", "view", "validate", "methods")}


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The check above can fail: two modules importing each other are found."""
    package = tmp_path / "onnxprune"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from onnxprune.b import x\n")
    (package / "b.py").write_text("def x():\n    from onnxprune.a import y\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    graph = _import_graph()
    assert graph["onnxprune.a"] == {"onnxprune.b"} and graph["onnxprune.b"] == {"onnxprune.a"}
    with pytest.raises(pytest.fail.Exception, match="import cycle: onnxprune.a -> onnxprune.b -> onnxprune.a"):
        test_the_package_has_no_import_cycle()


def test_sessions_reuse_what_the_registry_says(mlp):
    """The layer engine keeps its Gram matrices and error-curve points: a second sparsity captures nothing."""
    model, calib = mlp
    session = get_method("chita").open(model, make_config(get_method("chita")), calib)
    first, second = session.prune(0.5), session.prune(0.7)
    assert first.details["capture_s"] > 0 and second.details["capture_s"] == 0
    assert "error-curve points" in get_method("chita").reuse
    fresh = prune_model("chita", model, make_config(get_method("chita"), sparsity=0.7), calib)
    assert fresh.model.SerializeToString() == second.model.SerializeToString()
