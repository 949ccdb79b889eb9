"""Calibration and evaluation data as users hold it, the kind told by the source itself: ``.npz``/``.npy``
arrays, images (a folder, a glob, a list file or one image, with ``--preprocess``), text (``.txt`` or
``.jsonl`` with ``--tokenizer``) or a Python reader (``file.py:factory``). Every source is checked against the
model before any work, with one-line errors naming the file and the problem, and the dataset records where it
came from and how it was made."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxprune.data.arrays import Dataset, check_dataset, input_specs, load_arrays, validate
from onnxprune.data.images import (IMAGE_SUFFIXES, LazyImages, Preprocess, check_images, list_images,
                                   looks_like_image_list, ultralytics_preset)
from onnxprune.data.readers import is_reader, read_reader
from onnxprune.data.text import PADDINGS, tokenize
from onnxprune.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A data source and how to read it: ``path`` (see the module doc); ``preprocess`` for images ('PRESET
    [,key=value...]'; default: what the model's metadata records, else refused); ``tokenizer`` (a
    tokenizer.json), ``text_field`` (of .jsonl lines), ``max_length`` and ``padding`` ('longest' |
    'max-length') for text."""

    path: str
    preprocess: str | None = None
    tokenizer: str | None = None
    text_field: str = "text"
    max_length: int | None = None
    padding: str = "longest"

    def __post_init__(self) -> None:
        if self.padding not in PADDINGS:
            raise DataError(f"--padding must be one of {', '.join(PADDINGS)}, not {self.padding!r}")
        if self.max_length is not None and self.max_length < 2:
            raise DataError(f"--max-length must be >= 2, not {self.max_length}")

    def kind(self) -> str:
        """'arrays', 'images', 'text' or 'reader', from the path alone (and the options given)."""
        text, path = str(self.path), Path(self.path)
        if is_reader(text):
            return "reader"
        suffix = path.suffix.lower()
        if suffix in (".npz", ".npy"):
            return "arrays"
        if suffix == ".jsonl" or (suffix == ".txt" and self.tokenizer is not None):
            return "text"
        if path.is_dir() or any(c in text for c in "*?[") or suffix in IMAGE_SUFFIXES:
            return "images"
        if suffix == ".txt" and path.is_file():
            if looks_like_image_list(path):
                return "images"
            raise DataError(f"{path.name}: a text file needs --tokenizer TOKENIZER.json (a list of images names "
                            "existing image files, one a line)")
        if not path.exists():
            raise DataError(f"data source {text!r} does not exist")
        raise DataError(f"{path.name}: unknown kind of data source; give a .npz/.npy file, an image folder, glob or "
                        "list file, a .txt/.jsonl file with --tokenizer, or a reader file.py:factory")

    def refuse_unused(self, kind: str) -> None:
        """Options that do not apply to this kind of source are refused, not ignored."""
        given = {"preprocess": self.preprocess is not None and kind != "images",
                 "tokenizer": self.tokenizer is not None and kind != "text",
                 "max-length": self.max_length is not None and kind != "text",
                 "text-field": self.text_field != "text" and kind != "text",
                 "padding": self.padding != "longest" and kind != "text"}
        unused = [f"--{name}" for name, bad in given.items() if bad]
        if unused:
            raise DataError(f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to {self.path!r}, "
                            f"a source of {kind}")


def metadata_preset(model: onnx.ModelProto) -> str | None:
    """The image preprocessing the model's exporter recorded in its metadata (Ultralytics), if any."""
    return ultralytics_preset({p.key: p.value for p in model.metadata_props})


def _images(source: Source, model: onnx.ModelProto, role: str) -> Dataset:
    specs = input_specs(model)
    if len(specs) != 1:
        raise DataError(f"images fill a model with one input; this one has {', '.join(s.name for s in specs)} "
                        "(use a reader: file.py:factory)")
    text = source.preprocess
    if text is None:
        text = metadata_preset(model)
        if text is None:
            raise DataError(f"{source.path}: images need --preprocess PRESET (imagenet, yolo, paddle, raw) with the "
                            "model's own resize and normalisation; this model's metadata records none")
        log.warning("%s images preprocessed as the model's Ultralytics metadata records: --preprocess %s", role, text)
    preprocess, channels = Preprocess.parse(text).for_model(specs[0])
    paths = list_images(source.path)
    check_images(paths)
    lazy = LazyImages(paths, preprocess, channels, specs[0].dtype)
    described = {"kind": "images", "path": str(Path(source.path).resolve()) if Path(source.path).exists() else source.path,
                 "samples": len(paths), "preprocess": preprocess.spec,
                 "preprocess_from": "--preprocess" if source.preprocess is not None else "model metadata"}
    return validate({specs[0].name: lazy}, specs, source=Path(source.path).name, described=described)


def check_value_range(data: Dataset, model: onnx.ModelProto, name: str) -> None:
    """For array data of a model whose metadata records its preprocessing: the values must lie in the range
    that preprocessing gives (images /255 in [0, 1], say), else DataError with the range found."""
    text = metadata_preset(model)
    if text is None:
        return
    specs = input_specs(model)
    preprocess, channels = Preprocess.parse(text).for_model(specs[0])
    low, high = preprocess.value_range(channels)
    array = data.inputs[specs[0].name]
    found = (float(np.min(array)), float(np.max(array)))
    slack = 1e-3 * (high - low)
    if found[0] < low - slack or found[1] > high + slack:
        raise DataError(f"{name}: input {specs[0].name!r} holds values in [{found[0]:g}, {found[1]:g}]; the model's "
                        f"metadata records --preprocess {text}, which gives [{low:g}, {high:g}]: preprocess the data "
                        "that way, or give the images themselves with that --preprocess")


def load_data(source: str | os.PathLike | Source | Dataset, model: onnx.ModelProto, role: str = "data") -> Dataset:
    """The samples of ``source`` for ``model``, checked against its inputs before any work (a Dataset handed
    in is checked too). ``role`` ('calibration' or 'evaluation') names the data in messages."""
    if isinstance(source, Dataset):
        return check_dataset(source, model, source=f"{role} data")
    source = source if isinstance(source, Source) else Source(str(source))
    kind = source.kind()
    source.refuse_unused(kind)
    name = Path(source.path).name
    if kind == "arrays":
        data = load_arrays(source.path, model)
        check_value_range(data, model, name)
        return data
    if kind == "images":
        return _images(source, model, role)
    specs = input_specs(model)
    if kind == "text":
        if source.tokenizer is None:
            raise DataError(f"{name}: text needs --tokenizer TOKENIZER.json to become the model's token inputs")
        arrays, described = tokenize(Path(source.path), specs, source.tokenizer, source.text_field,
                                     source.max_length, source.padding)
    else:
        arrays, described = read_reader(source.path, specs)
    return validate(arrays, specs, source=name, described=described)


def summary(data: Dataset, batch: int = 64) -> list[dict[str, Any]]:
    """Per input: samples, sample shape, dtype, min / mean / max (streamed in batches) and, for an
    attention mask or padded images, the share of padding."""
    rows = []
    for name, array in data.inputs.items():
        low, high, total, count = np.inf, -np.inf, 0.0, 0
        for start in range(0, len(array), batch):
            part = np.asarray(array[start:start + batch], dtype=np.float64)
            low, high = min(low, float(part.min())), max(high, float(part.max()))
            total, count = total + float(part.sum()), count + part.size
        padding = None
        if name == "attention_mask":
            padding = 1.0 - total / max(count, 1)
        elif isinstance(array, LazyImages):
            padding = array.padding()
        rows.append({"input": name, "samples": len(array), "shape": list(array.shape[1:]), "dtype": str(array.dtype),
                     "min": low, "mean": total / max(count, 1), "max": high, "padding": padding})
    return rows
