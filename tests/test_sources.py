"""Calibration as users hold it: image folders (each preset against hand-computed tensors, letterbox geometry
included), text through a tokenizer built here, Python readers (ORT's CalibrationDataReader protocol and a
plain generator), the Ultralytics metadata default, one-line refusals of bad sources, and each route giving
the same pruned file as the equivalent .npz."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from graphs import IR_VERSION, save, tiny_conv
from onnxprune.cli import cli
from onnxprune.data import Dataset, LazyArray, Source, load_data, summary, write_npz
from onnxprune.data.images import Preprocess
from onnxprune.errors import DataError
from onnxprune.pipeline import TIMING_BATCH, prune


def _png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def _tensor(preprocess: str, pixels: np.ndarray, size: tuple[int, int], channels: int = 3) -> np.ndarray:
    spec = Preprocess.parse(f"{preprocess},size={size[0]}x{size[1]}")
    return spec.apply(Image.fromarray(pixels.astype(np.uint8)), channels)


def test_raw_and_paddle_presets_against_hand_computed_tensors():
    pixels = np.array([[[255, 0, 51], [0, 255, 0]]])  # one row, two pixels, RGB
    assert np.array_equal(_tensor("raw", pixels, (1, 2)), pixels.transpose(2, 0, 1).astype(np.float32))
    # paddle: BGR, /255, (x - 0.5) / 0.5
    expected = np.array([[[-0.6, -1.0]], [[-1.0, 1.0]], [[1.0, -1.0]]], np.float32)
    assert np.allclose(_tensor("paddle", pixels, (1, 2)), expected, atol=1e-6)
    nhwc = _tensor("raw,layout=nhwc,mean=1,2,3,std=2,scale=1/255", pixels, (1, 2))
    assert nhwc.shape == (1, 2, 3) and np.allclose(nhwc[0, 0], (np.array([1.0, 0.0, 0.2]) - [1, 2, 3]) / 2)


def test_letterbox_pads_both_sides_evenly_as_ultralytics_does():
    wide = np.full((2, 4, 3), 200)  # 4 wide, 2 high into 4 x 4: no resize, one row of grey above and below
    x = _tensor("yolo,interp=nearest", wide, (4, 4))
    assert x.shape == (3, 4, 4)
    assert np.allclose(x[:, [0, 3]], 114 / 255) and np.allclose(x[:, 1:3], 200 / 255)
    tall = np.full((4, 2, 3), 10)  # 2 wide, 4 high into 8 x 8: scaled by 2 to 4 x 8, two grey columns each side
    x = _tensor("yolo,interp=nearest", tall, (8, 8))
    assert np.allclose(x[:, :, [0, 1, 6, 7]], 114 / 255) and np.allclose(x[:, :, 2:6], 10 / 255)
    odd = np.full((3, 6, 3), 50)  # 6 x 3 into 6 x 6: 3 rows of padding, 1 above (round(1.4)) and 2 below
    x = _tensor("yolo,interp=nearest", odd, (6, 6))
    assert np.allclose(x[:, 0], 114 / 255) and np.allclose(x[:, 1:4], 50 / 255) and np.allclose(x[:, 4:], 114 / 255)
    assert Preprocess.parse("yolo,size=6x6").geometry(6, 3) == ((6, 3), (1, 0), 0.5)


def test_short_crop_and_pad_right_geometry():
    pixels = np.zeros((4, 8, 3))
    pixels[:, 3:5] = 255  # a white band in the middle columns of an 8 x 4 image
    # imagenet: short side 4 → round(2 / 0.5) = 4 (no resize), centre 2 x 2 crop keeps columns 3-4
    x = Preprocess.parse("imagenet,size=2x2,crop=0.5,interp=nearest").apply(Image.fromarray(pixels.astype(np.uint8)), 3)
    assert np.allclose(x, ((1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]))[:, None, None])
    # pad-right: 3 wide x 2 high into 2 x 6 fits the height (width 3) and pads 3 columns with 0 after normalising
    crop = np.full((2, 3, 3), 255)
    x = _tensor("paddle,resize=pad-right", crop, (2, 6))
    assert np.allclose(x[:, :, :3], 1.0) and np.allclose(x[:, :, 3:], 0.0)
    spec = Preprocess.parse("paddle,resize=pad-right,size=2x6")
    assert spec.geometry(3, 2) == ((3, 2), (0, 0), 0.5) and Preprocess.parse(spec.spec) == spec


@pytest.mark.parametrize("text, message", [
    ("nope", "unknown preset 'nope'"), ("size=2x2", "must start with a preset"),
    ("yolo,size=2", "size='2' is not valid"), ("yolo,resize=squash", "choose one of stretch"),
    ("yolo,colour=red", "unknown key 'colour'"), ("raw,mean=1,2", "one value or three"),
    ("raw,scale=0", "must be positive"), ("raw,crop=2", "in (0, 1]"),
])
def test_bad_preprocess_specs_are_refused(text, message):
    with pytest.raises(DataError, match=re.escape(message)):
        Preprocess.parse(text)


def _conv_model(path: Path, metadata: dict[str, str] | None = None, channels: int = 3) -> Path:
    model = tiny_conv()
    if channels != 3:
        model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = channels
        weight = numpy_helper.to_array(model.graph.initializer[0])
        model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.repeat(weight[:, :1], channels, 1), "c1.w"))
    if metadata:
        helper.set_model_props(model, metadata)
    return save(model, path)


@pytest.fixture
def images(tmp_path) -> tuple[Path, np.ndarray]:
    """Twelve 8 x 8 colour PNGs and the tensors the raw preset makes of them."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 8, 8, 3))
    for i, image in enumerate(pixels):
        _png(folder / f"{i:02d}.png", image)
    return folder, pixels.transpose(0, 3, 1, 2).astype(np.float32)


def test_an_image_folder_prunes_to_the_same_file_as_its_npz(images, tmp_path):
    folder, tensors = images
    model = _conv_model(tmp_path / "conv.onnx")
    np.savez(tmp_path / "calib.npz", x=tensors)
    options = dict(method="l1-channel", sparsity=0.5)
    from_npz = prune(model, tmp_path / "a.onnx", calib=tmp_path / "calib.npz", **options)
    from_images = prune(model, tmp_path / "b.onnx", calib=Source(str(folder), preprocess="raw"), **options)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert from_images.sources["calibration"]["kind"] == "images" and from_images.sources["calibration"]["samples"] == 12
    assert from_images.sources["calibration"]["preprocess"].startswith("raw,size=8x8,resize=stretch")
    assert from_npz.sources["calibration"]["kind"] == "arrays"
    # a glob and a list file are the same source
    (tmp_path / "list.txt").write_text("\n".join(f"images/{i:02d}.png" for i in range(12)) + "\n")
    for source in (str(folder / "*.png"), str(tmp_path / "list.txt")):
        data = load_data(Source(source, preprocess="raw"), onnx.load(str(model)))
        assert np.array_equal(np.asarray(data.inputs["x"]), tensors)


def test_images_stream_one_batch_at_a_time(images, tmp_path):
    """A lazy source is only ever made a batch at a time: capture, refit and checks included."""
    folder, tensors = images
    model = onnx.load(str(_conv_model(tmp_path / "conv.onnx")))
    data = load_data(Source(str(folder), preprocess="raw"), model)
    lazy = data.inputs["x"]
    assert isinstance(lazy, LazyArray) and isinstance(data.take(5, 3).inputs["x"], LazyArray)
    made: list[int] = []
    original = type(lazy).rows

    def counting(self, indices):
        made.append(len(indices))
        return original(self, indices)

    type(lazy).rows = counting
    try:
        prune(_conv_model(tmp_path / "c.onnx"), tmp_path / "out.onnx", "chita-channel", sparsity=0.5,
              calib=Source(str(folder), preprocess="raw"), batch_size=4)
    finally:
        type(lazy).rows = original
    assert made and max(made) <= max(4, TIMING_BATCH)  # capture batches, and the report's timing feed
    assert np.array_equal(data.take(5, 3).inputs["x"][1:3], tensors[4:6])


def test_ultralytics_metadata_sets_the_preprocessing_and_checks_array_ranges(images, tmp_path, caplog):
    folder, tensors = images
    model = _conv_model(tmp_path / "yolo.onnx", {"imgsz": "[8, 8]", "stride": "32", "task": "detect"})
    data = load_data(str(folder), onnx.load(str(model)))
    assert data.source["preprocess"].startswith("yolo,size=8x8,resize=letterbox") and \
        data.source["preprocess_from"] == "model metadata"
    assert np.allclose(np.asarray(data.inputs["x"]), tensors / 255, atol=1e-6)
    np.savez(tmp_path / "unscaled.npz", x=tensors)
    with pytest.raises(DataError, match=r"holds values in \[0, 255\].*\[0, 1\]"):
        load_data(tmp_path / "unscaled.npz", onnx.load(str(model)))
    np.savez(tmp_path / "scaled.npz", x=tensors / 255)
    assert len(load_data(tmp_path / "scaled.npz", onnx.load(str(model)))) == 12


def _word_tokenizer(path: Path) -> Path:
    """A word-level tokenizer.json with [CLS]/[SEP] around each text, built with the tokenizers library."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "a", "mat",
                                         "dog", "ran"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                                     ("[SEP]", 3)])
    tokenizer.save(str(path))
    return path


def _embedder(path: Path, sequence: int | str = "T", inputs: tuple[str, ...] = ("input_ids", "attention_mask")) -> Path:
    """ids[N,T] → Gather(12 x 8 table) → MatMul(8 → 8) → ReduceMean over T → y[N,8]; masks are read, unused."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["y"], axes=[1], keepdims=0)]
    graph = helper.make_graph(nodes, "embedder", [helper.make_tensor_value_info(n, TensorProto.INT64, ["N", sequence])
                                                  for n in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                              [numpy_helper.from_array(rng.standard_normal((12, 8)).astype(np.float32), "emb"),
                               numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION), path)


def test_text_through_a_tokenizer_gives_the_ids_and_the_same_file_as_its_npz(tmp_path):
    tokenizer = _word_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "calib.txt").write_text("the cat sat on a mat\n\nthe dog ran\na zebra sat\n")
    model = onnx.load(str(_embedder(tmp_path / "emb.onnx")))
    data = load_data(Source(str(tmp_path / "calib.txt"), tokenizer=str(tokenizer)), model)
    assert data.inputs["input_ids"].tolist() == [[2, 4, 5, 6, 7, 8, 9, 3], [2, 4, 10, 11, 3, 0, 0, 0],
                                                 [2, 8, 1, 6, 3, 0, 0, 0]]
    assert data.inputs["attention_mask"].tolist()[1] == [1, 1, 1, 1, 1, 0, 0, 0]
    assert data.source["padding"] == "longest" and data.source["padding_fraction"] == pytest.approx(6 / 24)
    cut = load_data(Source(str(tmp_path / "calib.txt"), tokenizer=str(tokenizer), max_length=6, padding="max-length"),
                    model)
    assert cut.inputs["input_ids"].shape == (3, 6) and cut.inputs["input_ids"][0].tolist() == [2, 4, 5, 6, 7, 3]
    assert cut.source["truncated"] == 1
    lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(["the cat sat on a mat", "the dog ran", "a zebra sat"])]
    (tmp_path / "calib.jsonl").write_text("\n".join(lines))
    jsonl = load_data(Source(str(tmp_path / "calib.jsonl"), tokenizer=str(tokenizer)), model)
    assert np.array_equal(jsonl.inputs["input_ids"], data.inputs["input_ids"])
    np.savez(tmp_path / "calib.npz", **data.inputs)
    source = Source(str(tmp_path / "calib.txt"), tokenizer=str(tokenizer))
    prune(tmp_path / "emb.onnx", tmp_path / "a.onnx", "sparsegpt", calib=source, sparsity=0.5)
    prune(tmp_path / "emb.onnx", tmp_path / "b.onnx", "sparsegpt", calib=tmp_path / "calib.npz", sparsity=0.5)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    fixed = onnx.load(str(_embedder(tmp_path / "fixed.onnx", sequence=5)))  # a fixed length pads and cuts to it
    assert load_data(source, fixed).inputs["input_ids"].shape == (3, 5)


READER = '''
import numpy as np


class Reader:
    """The CalibrationDataReader protocol of onnxruntime.quantization: get_next() until None."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.items = iter([{"x": rng.standard_normal((3, 8, 8)).astype(np.float32)} for _ in range(10)])

    def get_next(self):
        return next(self.items, None)


def reader():
    return Reader()


def batches():
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((3, 8, 8)).astype(np.float32) for _ in range(10)]
    yield {"x": np.stack(arrays[:4])}
    yield {"x": np.stack(arrays[4:])}


def nothing():
    return iter([])


def foreign():
    yield {"images": np.zeros((1, 3, 8, 8), np.float32)}
'''


def test_a_calibration_data_reader_and_a_generator_give_the_same_file_as_the_npz(tmp_path):
    (tmp_path / "data.py").write_text(READER)
    model = _conv_model(tmp_path / "conv.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=np.stack([rng.standard_normal((3, 8, 8)).astype(np.float32) for _ in range(10)]))
    prune(model, tmp_path / "npz.onnx", "chita-channel", sparsity=0.5, calib=tmp_path / "calib.npz")
    for factory in ("reader", "batches"):
        outcome = prune(model, tmp_path / f"{factory}.onnx", "chita-channel", sparsity=0.5,
                        calib=f"{tmp_path / 'data.py'}:{factory}")
        assert (tmp_path / f"{factory}.onnx").read_bytes() == (tmp_path / "npz.onnx").read_bytes()
        assert outcome.sources["calibration"]["kind"] == "reader" and outcome.sources["calibration"]["samples"] == 10


def _bad_sources(tmp_path: Path) -> dict[str, tuple[str | Source, Path, str]]:
    """Case → (source, model, words of the one-line error)."""
    conv = _conv_model(tmp_path / "conv.onnx")
    four = _conv_model(tmp_path / "four.onnx", channels=4)
    emb = _embedder(tmp_path / "emb.onnx")
    pixels = _embedder(tmp_path / "pixels.onnx", inputs=("input_ids", "pixel_values"))
    tokenizer = str(_word_tokenizer(tmp_path / "tokenizer.json"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    good = _png(tmp_path / "broken" / "a.png", np.zeros((8, 8, 3)))
    (tmp_path / "broken" / "b.png").write_bytes(good.read_bytes()[:40])  # truncated
    (tmp_path / "colour").mkdir()
    _png(tmp_path / "colour" / "a.png", np.zeros((8, 8, 3)))
    (tmp_path / "texts.txt").write_text("the cat sat\n")
    (tmp_path / "blank.txt").write_text("\n\n")
    (tmp_path / "records.jsonl").write_text(json.dumps({"body": "the cat"}) + "\n")
    (tmp_path / "data.py").write_text(READER)
    np.savez(tmp_path / "ok.npz", x=np.zeros((2, 3, 8, 8), np.float32))
    return {
        "truncated image": (Source(str(tmp_path / "broken"), preprocess="raw"), conv, "unreadable or truncated"),
        "empty folder": (Source(str(tmp_path / "empty"), preprocess="raw"), conv, "holds no image"),
        "wrong channel count": (Source(str(tmp_path / "colour"), preprocess="raw"), four, "has 4 channels"),
        "images without a preset": (str(tmp_path / "colour"), conv, "need --preprocess PRESET"),
        "text without a tokenizer": (str(tmp_path / "texts.txt"), emb, "needs --tokenizer"),
        "tokenizer without the model's inputs": (Source(str(tmp_path / "texts.txt"), tokenizer=tokenizer), pixels,
                                                  "input 'pixel_values' is none of them"),
        "empty text file": (Source(str(tmp_path / "blank.txt"), tokenizer=tokenizer), emb, "holds no text sample"),
        "jsonl without the field": (Source(str(tmp_path / "records.jsonl"), tokenizer=tokenizer), emb,
                                    "no text field 'text'"),
        "reader yielding nothing": (f"{tmp_path / 'data.py'}:nothing", conv, "yielded nothing"),
        "reader with a foreign input": (f"{tmp_path / 'data.py'}:foreign", conv, "'images' is not a model input"),
        "reader file missing": (f"{tmp_path / 'nope.py'}:reader", conv, "does not exist"),
        "preprocess for arrays": (Source(str(tmp_path / "ok.npz"), preprocess="raw"), conv,
                                  "--preprocess does not apply"),
    }


@pytest.mark.parametrize("case", ["truncated image", "empty folder", "wrong channel count", "images without a preset",
                                  "text without a tokenizer", "tokenizer without the model's inputs", "empty text file",
                                  "jsonl without the field", "reader yielding nothing", "reader with a foreign input",
                                  "reader file missing", "preprocess for arrays"])
def test_every_bad_source_is_one_line_and_writes_nothing(case, tmp_path):
    source, model, words = _bad_sources(tmp_path)[case]
    args = ["prune", model, "-o", tmp_path / "out.onnx", "-m", "sparsegpt"]
    if isinstance(source, Source):
        args += ["--calib", source.path] + (["--preprocess", source.preprocess] if source.preprocess else []) + \
            (["--tokenizer", source.tokenizer] if source.tokenizer else [])
    else:
        args += ["--calib", source]
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
        result.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_calib_command_writes_the_npz_a_source_gives_with_a_summary(images, tmp_path):
    folder, tensors = images
    model = _conv_model(tmp_path / "conv.onnx")
    result = CliRunner().invoke(cli, ["calib", str(folder), "--model", str(model), "-o", str(tmp_path / "c.npz"),
                                      "--preprocess", "yolo,size=8x8", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    with np.load(tmp_path / "c.npz") as written:
        assert np.allclose(written["x"], tensors / 255, atol=1e-6)
    row = report["inputs"][0]
    assert row["samples"] == 12 and row["shape"] == [3, 8, 8] and row["padding"] == 0.0
    assert row["min"] >= 0 and row["max"] <= 1 and report["source"]["preprocess"].startswith("yolo,size=8x8")
    text = CliRunner().invoke(cli, ["calib", str(folder), "--model", str(model), "-o", str(tmp_path / "d.npz"),
                                    "--preprocess", "yolo,size=8x8"]).stdout
    assert "padding %" in text and "preprocess: yolo,size=8x8" in text


def test_streamed_npz_equals_numpy_savez(tmp_path):
    data = Dataset({"a": np.arange(300, dtype=np.float32).reshape(100, 3), "b": np.ones((100, 2), np.int64)},
                   np.arange(100))
    write_npz(data, tmp_path / "s.npz", batch=7)
    with np.load(tmp_path / "s.npz") as back:
        assert np.array_equal(back["a"], data.inputs["a"]) and np.array_equal(back["labels"], np.arange(100))
    assert summary(data)[0]["max"] == 299.0
