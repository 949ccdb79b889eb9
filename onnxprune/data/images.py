"""Images as calibration or evaluation data: a folder, a glob or a list file of PNG/JPEG files, each
decoded and preprocessed on demand (``LazyImages``) as ``--preprocess PRESET[,key=value...]`` says.

The steps, in order: decode to RGB (or L for one-channel inputs); resize (``resize``: 'stretch' to the
size, 'letterbox' keeping the ratio inside it and padding both sides evenly as Ultralytics does,
'short-crop' scaling the short side to ``size / crop`` and cutting the centre as ImageNet models expect,
'pad-right' fitting the height and padding on the right as PP-OCR's recognisers do) with ``interp``;
channel ``order`` (rgb | bgr); the padded area filled with ``pad`` (in pixel units); ``x · scale``, then
``(x − mean) / std`` per channel in the output order; ``layout`` nchw | nhwc.
"""

from __future__ import annotations

import glob
import logging
import math
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from onnxprune.data.arrays import InputSpec, LazyArray
from onnxprune.errors import DataError, first_line

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
RESIZES = ("stretch", "letterbox", "short-crop", "pad-right")
ORDERS = ("rgb", "bgr")
LAYOUTS = ("nchw", "nhwc")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
_PRESET_KEYS = dict(resize="stretch", order="rgb", scale="1", mean=(0.0,), std=(1.0,), layout="nchw", pad=0.0,
                    interp="bilinear", crop=1.0)
PRESETS: dict[str, dict[str, Any]] = {
    # torchvision's ImageNet evaluation transform: short side to 256, centre 224, mean/std of ImageNet
    "imagenet": dict(resize="short-crop", scale="1/255", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                     crop=0.875),
    # Ultralytics' letterbox: ratio kept, grey (114) borders, /255, RGB, NCHW
    "yolo": dict(resize="letterbox", scale="1/255", pad=114.0),
    # PaddlePaddle's OCR and classification models: OpenCV's BGR, (x/255 - 0.5)/0.5, pad to 0 after it
    "paddle": dict(order="bgr", scale="1/255", mean=(0.5,), std=(0.5,), pad=127.5),
    # pixel values as they are, as float
    "raw": dict(),
}


def _scale(text: str) -> Fraction:
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise DataError(f"--preprocess scale={text!r}: give a number or a fraction such as 1/255") from None
    if value <= 0:
        raise DataError(f"--preprocess scale={text!r} must be positive")
    return value


@dataclass(frozen=True)
class Preprocess:
    """A resolved image preprocessing: a preset with its keys overridden (see the module doc)."""

    preset: str
    size: tuple[int, int] | None = None  # H, W; None: the model's static H x W
    resize: str = "stretch"
    order: str = "rgb"
    scale: str = "1"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "nchw"
    pad: float = 0.0
    interp: str = "bilinear"
    crop: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "Preprocess":
        """'PRESET[,key=value...]'; a value may hold commas (mean=0.5,0.5,0.5); DataError naming a bad part."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts or "=" in parts[0]:
            raise DataError(f"--preprocess {text!r} must start with a preset: {', '.join(PRESETS)}")
        preset = parts[0].lower()
        if preset not in PRESETS:
            raise DataError(f"--preprocess: unknown preset {parts[0]!r}; the presets are {', '.join(PRESETS)}")
        values: dict[str, list[str]] = {}
        key = None
        for part in parts[1:]:
            if "=" in part:
                key, value = (s.strip() for s in part.split("=", 1))
                values[key] = [value]
            elif key in ("mean", "std"):
                values[key].append(part)
            else:
                raise DataError(f"--preprocess {text!r}: {part!r} is not key=value")
        fields = {**_PRESET_KEYS, **PRESETS[preset]}
        for key, items in values.items():
            fields[key] = cls._value(key, items)
        made = cls(preset, **fields)
        made._check()
        return made

    @staticmethod
    def _value(key: str, items: list[str]) -> Any:
        text = items[0]
        try:
            if key == "size":
                height, width = (int(v) for v in text.lower().split("x"))
                if height < 1 or width < 1:
                    raise ValueError
                return height, width
            if key in ("mean", "std"):
                return tuple(float(v) for v in items)
            if key in ("pad", "crop"):
                return float(text)
            if key == "scale":
                _scale(text)
                return text
        except ValueError:
            raise DataError(f"--preprocess {key}={','.join(items)!r} is not valid "
                            f"({'HxW, e.g. 640x640' if key == 'size' else 'numbers'})") from None
        choices = {"resize": RESIZES, "order": ORDERS, "layout": LAYOUTS, "interp": INTERPOLATIONS}
        if key not in choices:
            raise DataError(f"--preprocess: unknown key {key!r}; the keys are size, resize, order, scale, mean, std, "
                            "layout, pad, interp, crop")
        if text.lower() not in choices[key]:
            raise DataError(f"--preprocess {key}={text!r}: choose one of {', '.join(choices[key])}")
        return text.lower()

    def _check(self) -> None:
        for name in ("mean", "std"):
            if len(getattr(self, name)) not in (1, 3):
                raise DataError(f"--preprocess {name} takes one value or three, not {len(getattr(self, name))}")
        if any(v == 0 for v in self.std):
            raise DataError("--preprocess std must not be 0")
        if not 0 < self.crop <= 1:
            raise DataError(f"--preprocess crop is the fraction of the short side kept, in (0, 1], not {self.crop}")

    @property
    def spec(self) -> str:
        """The whole preprocessing, every key written out: ``--preprocess`` with it gives the same tensors."""
        size = "model" if self.size is None else f"{self.size[0]}x{self.size[1]}"
        numbers = lambda values: ",".join(f"{v:g}" for v in values)  # noqa: E731
        return (f"{self.preset},size={size},resize={self.resize},order={self.order},scale={self.scale},"
                f"mean={numbers(self.mean)},std={numbers(self.std)},layout={self.layout},pad={self.pad:g},"
                f"interp={self.interp},crop={self.crop:g}")

    def channel_axis(self) -> int:
        return 1 if self.layout == "nchw" else 3

    def for_model(self, spec: InputSpec) -> tuple["Preprocess", int]:
        """This preprocessing with its size settled by the model's input, and the channel count it needs;
        DataError when the input is no image of 1 or 3 channels or its size is unknown."""
        if len(spec.shape) != 4:
            raise DataError(f"images fill a 4-D input; the model's input {spec.name!r} has shape "
                            f"{['N' if d is None else d for d in spec.shape]}")
        channels = spec.shape[self.channel_axis()]
        if channels not in (1, 3):
            raise DataError(f"the model's input {spec.name!r} has {channels} channels on axis {self.channel_axis()} "
                            f"({self.layout}); images give 1 (grey) or 3 (colour): check layout= in --preprocess")
        model_size = (spec.shape[2], spec.shape[3]) if self.layout == "nchw" else (spec.shape[1], spec.shape[2])
        size = self.size
        if size is None:
            if None in model_size:
                raise DataError(f"the model's input {spec.name!r} has dynamic height and width: give the size "
                                "with --preprocess PRESET,size=HxW")
            size = model_size
        elif any(m is not None and m != s for m, s in zip(model_size, size)):
            raise DataError(f"--preprocess size={size[0]}x{size[1]} does not fit the model's input {spec.name!r} "
                            f"({model_size[0]}x{model_size[1]})")
        return replace(self, size=size), channels

    def value_range(self, channels: int) -> tuple[float, float]:
        """The least and greatest value these steps can give (pixels in [0, 255], the pad included)."""
        scale = float(_scale(self.scale))
        mean = np.resize(np.asarray(self.mean, np.float64), channels)
        std = np.resize(np.asarray(self.std, np.float64), channels)
        ends = np.array([min(0.0, self.pad), max(255.0, self.pad)])[:, None] * scale
        values = (ends - mean) / std
        return float(values.min()), float(values.max())

    def geometry(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int], float]:
        """For an image of ``width`` x ``height``: the size it is resized to (w, h), where the kept part
        lands on the model's canvas (top, left; negative: a centre crop), and the share of padding."""
        out_h, out_w = self.size
        if self.resize == "stretch":
            return (out_w, out_h), (0, 0), 0.0
        if self.resize == "letterbox":
            ratio = min(out_h / height, out_w / width)
            new = (int(round(width * ratio)), int(round(height * ratio)))
            place = (int(round((out_h - new[1]) / 2 - 0.1)), int(round((out_w - new[0]) / 2 - 0.1)))
        elif self.resize == "pad-right":
            new, place = (min(out_w, max(1, int(math.ceil(out_h * width / height)))), out_h), (0, 0)
        else:  # short-crop
            ratio = round(min(out_h, out_w) / self.crop) / min(width, height)
            new = (int(round(width * ratio)), int(round(height * ratio)))
            return new, (-((new[1] - out_h) // 2), -((new[0] - out_w) // 2)), 0.0
        return new, place, 1.0 - new[0] * new[1] / (out_h * out_w)

    def apply(self, image: Any, channels: int) -> np.ndarray:
        """A PIL image as the model's float32 tensor of one sample."""
        from PIL import Image

        image = image.convert("L" if channels == 1 else "RGB")
        height, width = self.size
        new, (top, left), _ = self.geometry(*image.size)
        if new != image.size:
            filter_ = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                       "lanczos": Image.LANCZOS}[self.interp]
            image = image.resize(new, filter_)
        pixels = np.asarray(image, dtype=np.float32).reshape(new[1], new[0], channels)
        if top < 0 or left < 0:  # a centre crop
            pixels = pixels[-top:-top + height, -left:-left + width]
            top = left = 0
        if self.order == "bgr" and channels == 3:
            pixels = pixels[..., ::-1]
        canvas = pixels
        if pixels.shape[:2] != (height, width):
            canvas = np.full((height, width, channels), self.pad, np.float32)
            canvas[top:top + pixels.shape[0], left:left + pixels.shape[1]] = pixels
        scale = _scale(self.scale)
        x = canvas / np.float32(scale.denominator) if scale.numerator == 1 else canvas * np.float32(float(scale))
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return x.transpose(2, 0, 1) if self.layout == "nchw" else x


def ultralytics_preset(metadata: dict[str, str]) -> str | None:
    """The preprocessing an Ultralytics export records (``imgsz`` in its metadata), as a --preprocess value."""
    size = metadata.get("imgsz")
    if size is None or "stride" not in metadata:
        return None
    try:
        dims = [int(v) for v in size.strip("[]() ").replace(",", " ").split()]
    except ValueError:
        return None
    if len(dims) == 1:
        dims *= 2
    return f"yolo,size={dims[0]}x{dims[1]}" if len(dims) == 2 else None


def list_images(source: str) -> list[Path]:
    """The image files of a folder (recursively), a glob or a list file (one path a line, relative to its
    folder), in sorted order; DataError when there are none or a listed file is missing."""
    path = Path(source)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise DataError(f"{source}: the folder holds no image ({', '.join(IMAGE_SUFFIXES)})")
        return found
    if any(c in source for c in "*?["):
        found = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"{source}: the pattern matches no image file")
        return found
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if not path.is_file():
            raise DataError(f"image {source!r} does not exist")
        return [path]
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    found = [Path(line) if Path(line).is_absolute() else path.parent / line for line in lines]
    missing = [str(p) for p in found if not p.is_file()]
    if not found:
        raise DataError(f"{source}: the list file is empty")
    if missing:
        raise DataError(f"{source}: {len(missing)} listed image(s) do not exist, the first {missing[0]!r}")
    return found


def looks_like_image_list(path: Path) -> bool:
    """Whether every non-empty line of a text file names an existing image file."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return bool(lines) and all(Path(line).suffix.lower() in IMAGE_SUFFIXES and
                               (Path(line) if Path(line).is_absolute() else path.parent / line).is_file()
                               for line in lines[:64])


def check_images(paths: list[Path]) -> None:
    """Decode every image once, before any work: DataError naming the first unreadable or truncated one."""
    from PIL import Image
    from tqdm.auto import tqdm

    for path in tqdm(paths, desc="checking images", unit="image", leave=False, disable=None):
        try:
            with Image.open(path) as image:
                image.load()
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for damaged files
            raise DataError(f"image {str(path)!r} is unreadable or truncated ({first_line(exc)})") from None


class LazyImages(LazyArray):
    """Image files made into the model's input tensor only when a batch asks for them; the last batch is
    kept, since a paired capture asks for the same samples twice in a row."""

    def __init__(self, paths: list[Path], preprocess: Preprocess, channels: int, dtype: np.dtype) -> None:
        height, width = preprocess.size
        shape = (channels, height, width) if preprocess.layout == "nchw" else (height, width, channels)
        super().__init__(len(paths), shape, dtype)
        self.paths, self.preprocess, self.channels = paths, preprocess, channels
        self._last: tuple[tuple[int, ...], np.ndarray] | None = None

    def rows(self, indices: np.ndarray) -> np.ndarray:
        from PIL import Image

        key = tuple(int(i) for i in indices)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        out = np.empty((len(key), *self.sample_shape), self.dtype)
        for row, index in enumerate(key):
            with Image.open(self.paths[index]) as image:
                out[row] = self.preprocess.apply(image, self.channels)
        self._last = (key, out)
        return out

    def padding(self) -> float:
        """The mean share of padding over the images (from their sizes alone: no decoding)."""
        from PIL import Image

        shares = []
        for path in self.paths[self.start:self.start + self.count]:
            with Image.open(path) as image:
                shares.append(self.preprocess.geometry(*image.size)[2])
        return float(np.mean(shares))
