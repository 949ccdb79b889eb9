"""Real-world robustness: guarantees on a sample of the compatibility corpus, and the bad-input catalog
at the command line (one-line error, exit code 2, an existing output left exactly as it was)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from graphs import mlp_data, save, save_external, tiny_mlp
from onnxprune.cli import cli
from onnxprune.data import input_specs
from onnxprune.errors import ModelError, OnnxPruneError
from onnxprune.methods import METHODS
from onnxprune.pipeline import prune
from onnxprune.runtime.sessions import make_session

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import corpus  # noqa: E402  (tools/corpus.py builds the corpus models)

# One model per exporter family and storage style; the full corpus runs in tools/compat_matrix.py.
SAMPLE = ["resnet-legacy9", "shufflenet-legacy17", "transformer-dynamo", "caffe2-squeezenet", "constant-weights",
          "tied-weights", "resnet-external", "resnet-fp16"]
QUANTIZED = ["resnet-qdq", "resnet-qoperator"]
DATA_FREE = [name for name, spec in METHODS.items() if not spec.needs_calib]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sampled corpus models, built once for this module."""
    entries = corpus.build(tmp_path_factory.mktemp("corpus"), SAMPLE + QUANTIZED)
    failed = [f"{e.name}: {e.error}" for e in entries if e.path is None]
    assert not failed, failed
    return {e.name: e.path for e in entries}


def interface(model: onnx.ModelProto) -> dict[str, object]:
    """What a pruned model must keep: real inputs and outputs (names, dtypes, dims incl. named dynamic
    ones), opset imports and metadata props."""
    inits = {t.name for t in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in inits] + list(model.graph.output)
    return {"values": [(v.name, v.type.tensor_type.elem_type,
                        [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values],
            "opsets": sorted((o.domain, o.version) for o in model.opset_import),
            "metadata": sorted((p.key, p.value) for p in model.metadata_props)}


def sample_feed(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Seeded inputs: batch 2 (or the fixed batch), other dynamic dims 5."""
    rng = np.random.default_rng(0)
    feed = {}
    for spec in input_specs(model):
        shape = [d if d is not None else (2 if axis == 0 else 5) for axis, d in enumerate(spec.shape)]
        feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feed


@pytest.mark.parametrize("method", DATA_FREE)
@pytest.mark.parametrize("name", SAMPLE)
def test_output_is_valid_and_keeps_the_interface(built, name, method, tmp_path):
    """Pruned: passes the full checker, runs in ORT with the input's output shapes, same interface.
    Refused (structured methods may be): one line, and nothing written."""
    source = onnx.load(str(built[name]))
    output = tmp_path / "out.onnx"
    try:
        prune(built[name], output, method, sparsity=0.3)
    except OnnxPruneError as exc:
        assert method != "magnitude", f"magnitude must handle every float model: {exc}"
        assert "\n" not in str(exc) and list(tmp_path.iterdir()) == []
        return
    pruned = onnx.load(str(output))
    onnx.checker.check_model(pruned, full_check=True)
    assert interface(pruned) == interface(source)
    feed = sample_feed(source)
    dense = make_session(built[name], device="cpu").run(None, feed)
    sparse = make_session(output, device="cpu").run(None, feed)
    assert [a.shape for a in sparse] == [a.shape for a in dense]
    assert all(np.isfinite(a.astype(np.float64)).all() for a in sparse)


def test_external_data_input_gives_a_self_contained_output(built, tmp_path):
    output = tmp_path / "out.onnx"
    prune(built["resnet-external"], output, "magnitude", sparsity=0.5)
    stored = onnx.load(str(output), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in stored.graph.initializer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_tied_weights_stay_one_tensor_read_by_both_nodes(built, tmp_path):
    output = tmp_path / "out.onnx"
    outcome = prune(built["tied-weights"], output, "magnitude", sparsity=0.5)
    pruned = onnx.load(str(output))
    readers = [n.name for n in pruned.graph.node if "tied" in n.input]
    assert readers == ["mm1", "mm2"] and [t.name for t in pruned.graph.initializer].count("tied") == 1
    assert {t.name: t.sparsity for t in outcome.after.tensors}["tied"] > 0.3


@pytest.mark.parametrize("name", QUANTIZED)
def test_quantized_models_are_refused_with_the_reason(built, name, tmp_path):
    with pytest.raises(ModelError, match=r"quantized model \(op \w+ in node .*prune the float model, then quantize"):
        prune(built[name], tmp_path / "out.onnx", "magnitude", sparsity=0.5)
    assert list(tmp_path.iterdir()) == []


def _model(folder: Path) -> Path:
    return save(tiny_mlp(), folder / "in.onnx")


def _npz(folder: Path, **arrays: np.ndarray) -> Path:
    np.savez(folder / "calib.npz", **arrays)
    return folder / "calib.npz"


def _truncated(folder: Path) -> Path:
    raw = tiny_mlp().SerializeToString()
    (folder / "in.onnx").write_bytes(raw[: len(raw) * 2 // 3])
    return folder / "in.onnx"


def _undecodable_weight(folder: Path) -> Path:
    model = tiny_mlp()
    model.graph.initializer[0].dims[0] = 17  # 17x8 floats declared, 16x8 stored
    return save(model, folder / "in.onnx")


def _external(location: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = save_external(tiny_mlp(), folder / "in.onnx", data_name="w.bin", point_to=location)
        return path
    return make


def _no_flag(folder: Path) -> list[str]:
    return []


def _calib(**arrays: np.ndarray) -> Callable[[Path], list[str]]:
    return lambda folder: ["--calib", str(_npz(folder, **arrays))]


def _calib_file(name: str, content: bytes) -> Callable[[Path], list[str]]:
    def make(folder: Path) -> list[str]:
        (folder / name).write_bytes(content)
        return ["--calib", str(folder / name)]
    return make


GOOD_X = mlp_data(8, labels=False)["x"]
# (make the model, extra CLI arguments, words the error must contain); every case runs with an
# existing output file that must survive unchanged.
CATALOG = {
    "missing model": (lambda folder: folder / "nope.onnx", _no_flag, "does not exist"),
    "truncated model": (_truncated, _no_flag, "not a readable ONNX model"),
    "weight data not matching dims": (_undecodable_weight, _no_flag, "does not match its type and shape"),
    "external data escaping": (_external("../w.bin"), _no_flag, "escapes"),
    "external data missing": (_external("gone.bin"), _no_flag, "missing"),
    "calibration .csv": (_model, _calib_file("calib.csv", b"1,2,3\n"), "unknown kind of data source"),
    "calibration damaged npz": (_model, _calib_file("calib.npz", b"PK\x03\x04" + bytes(40)), "not a readable numpy"),
    "calibration pickled": (_model, _calib(x=np.array([object()] * 8)), "pickled"),
    "calibration wrong name": (_model, _calib(inputs=GOOD_X), "not a model input"),
    "calibration wrong shape": (_model, _calib(x=GOOD_X[:, :5]), "axis 1 differs"),
    "calibration NaN": (_model, _calib(x=np.where(GOOD_X > 1, np.nan, GOOD_X)), "NaN/Inf"),
    "calibration zero samples": (_model, _calib(x=GOOD_X[:0]), "zero samples"),
    "sparsity negative": (_model, lambda folder: ["--sparsity", "-0.1"], "sparsity must be in [0, 1)"),
    "report equal to output": (_model, lambda folder: ["--report", str(folder / "out.onnx")], "report path"),
}
if "chita" in METHODS:
    CATALOG["CHITA memory budget too small"] = (
        _model, lambda folder: ["--method", "chita", "--max-memory", "1K", *_calib(x=GOOD_X)(folder)], "--max-memory")


@pytest.mark.parametrize("case", list(CATALOG))
def test_bad_input_is_one_line_and_leaves_the_old_output(tmp_path, case):
    make_model, make_flags, words = CATALOG[case]
    model = make_model(tmp_path)
    flags = make_flags(tmp_path)
    old = save(tiny_mlp(seed=7), tmp_path / "out.onnx").read_bytes()
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(cli, ["prune", str(model), "-o", str(tmp_path / "out.onnx"), *flags])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1 and words in result.output
    assert (tmp_path / "out.onnx").read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path):
    model = _model(tmp_path)
    result = CliRunner().invoke(cli, ["prune", str(model), "-o", str(tmp_path / "in.onnx" / "out.onnx")])
    assert result.exit_code == 2 and "is not a folder" in result.output and result.output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_model_that_fails_in_onnx_runtime_gives_one_line(tmp_path, capfd):
    """The error is the only line: ORT's own log lines (written to file descriptor 2) are silenced."""
    model = tiny_mlp()
    model.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(np.zeros(5, np.float32), "fc1.bias"))
    source = save(model, tmp_path / "in.onnx")
    result = CliRunner().invoke(cli, ["prune", str(source), "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith("error: the input model does not run in ONNX Runtime")
    assert capfd.readouterr().err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_fixed_batch_model_prunes_with_and_without_calibration(tmp_path):
    model = tiny_mlp()
    for value in [model.graph.input[0], model.graph.output[0]]:
        value.type.tensor_type.shape.dim[0].dim_value = 8
    source = save(model, tmp_path / "in.onnx")
    calib = _npz(tmp_path, x=mlp_data(16, labels=False)["x"])
    for data in (None, calib):
        outcome = prune(source, tmp_path / "out.onnx", "magnitude", calib=data, sparsity=0.5)
        assert outcome.after.sparsity == pytest.approx(0.5, abs=0.01)
