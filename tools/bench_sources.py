"""Calibration sources as users hold them, measured on real files.

``routes DIR``: for every model of the real-model corpus (tools/real_corpus.py) whose raw calibration data the
build wrote (images, text with its tokenizer.json, or files with a reader), prune once from ``calib.npz`` and
once from the raw source (each an ``onnxprune prune`` process) and print whether the written files are
byte-identical, with both wall times and peak memories.

``stream``: a thousand 640x640 JPEG photographs-like images (smooth random colour fields, written here) calibrate
``chita-channel`` on a strided convolutional detector backbone with a 640x640 input, read through
``--preprocess yolo``; prints the wall time and peak memory of the prune next to what the decoded images
would take held in memory at once.

    python tools/bench_sources.py routes DIR [--select GLOB] [--methods sparsegpt,chita-channel]
    python tools/bench_sources.py stream [--images 1000] [--work DIR]
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

ONNXPRUNE = [sys.executable, "-m", "onnxprune.cli"]
SETTINGS = {"sparsegpt": ["--sparsity", "0.5"], "chita-channel": ["--sparsity", "0.3", "--round-to", "8"],
            "chita": ["--sparsity", "0.5"]}


def timed(command: list[str]) -> tuple[float, float, str | None]:
    """(wall seconds, peak RSS in MB, the last error line or None) of one process, peak taken by /usr/bin/time."""
    start = time.perf_counter()
    with tempfile.NamedTemporaryFile("r") as peak_file:
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", peak_file.name, *command], capture_output=True,
                              text=True, cwd=ROOT)
        peak = int(peak_file.read().split()[-1]) / 1024
    error = None
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        error = lines[-1][:200] if lines else f"exit {done.returncode}"
    return time.perf_counter() - start, peak, error


def source_flags(source) -> list[str]:
    """The CLI flags of an onnxprune Source."""
    flags = ["--calib", source.path]
    if source.preprocess:
        flags += ["--preprocess", source.preprocess]
    if source.tokenizer:
        flags += ["--tokenizer", source.tokenizer, "--padding", source.padding]
    if source.max_length:
        flags += ["--max-length", str(source.max_length)]
    return flags


def routes(folder: Path, select: str, methods: list[str]) -> None:
    import real_corpus

    rows = []
    for model in real_corpus.build(folder):
        source = real_corpus.calib_source(model)
        if source is None or not fnmatch.fnmatch(model.name, select):
            continue
        for method in methods:
            outs, figures = [], []
            for route, flags in (("npz", ["--calib", str(model.calib)]), ("source", source_flags(source))):
                out = folder / "pruned" / f"{model.name}_{method}_{route}.onnx"
                out.parent.mkdir(exist_ok=True)
                seconds, peak, error = timed([*ONNXPRUNE, "prune", str(model.path), "-o", str(out), "-m", method,
                                              *SETTINGS[method], *flags])
                if error:
                    raise SystemExit(f"{model.name} {method} from {route}: {error}")
                outs.append(hashlib.sha256(out.read_bytes()).hexdigest())
                figures.append(f"{seconds:.1f} s / {peak:.0f} MB")
            kind = source.path.rsplit("/", 1)[-1]
            rows.append([model.name, kind, method, "yes" if outs[0] == outs[1] else "NO", *figures])
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    head = ["model", "source", "method", "byte-identical", "from calib.npz", "from the source"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def backbone(path: Path) -> Path:
    """A strided Conv-BN-ReLU backbone, 640x640 RGB in, 16 class scores out (seeded random weights)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, previous, channels = [], [], "images", 3
    for index, (width, stride) in enumerate(((16, 4), (32, 2), (64, 2), (64, 2))):
        weight = (rng.standard_normal((width, channels, 3, 3)) * np.sqrt(2 / (9 * channels))).astype(np.float32)
        inits += [numpy_helper.from_array(weight, f"conv{index}.w"),
                  numpy_helper.from_array(rng.standard_normal(width).astype(np.float32) * 0.1, f"conv{index}.b")]
        nodes += [helper.make_node("Conv", [previous, f"conv{index}.w", f"conv{index}.b"], [f"c{index}"],
                                   strides=[stride, stride], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{index}"], [f"r{index}"])]
        previous, channels = f"r{index}", width
    inits += [numpy_helper.from_array(rng.standard_normal((16, channels)).astype(np.float32) * 0.1, "fc.w"),
              numpy_helper.from_array(np.zeros(16, np.float32), "fc.b")]
    nodes += [helper.make_node("GlobalAveragePool", [previous], ["pooled"]),
              helper.make_node("Flatten", ["pooled"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["scores"], transB=1)]
    graph = helper.make_graph(nodes, "backbone", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                                ["N", 3, 640, 640])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def photographs(folder: Path, count: int, size: int = 640) -> None:
    """``count`` JPEGs of smooth random colour fields (a 5x5 grid of colours, bilinearly enlarged, with noise)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        path = folder / f"{index:05d}.jpg"
        if path.exists():
            continue
        coarse = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).resize((size, size), Image.BILINEAR)
        pixels = np.clip(np.asarray(coarse, np.int16) + rng.integers(-12, 13, (size, size, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)


def stream(count: int, work: Path) -> None:
    images, model = work / "images", work / "backbone.onnx"
    began = time.perf_counter()
    photographs(images, count)
    backbone(model)
    print(f"{count} JPEGs of 640x640 in {images} ({sum(p.stat().st_size for p in images.iterdir()) / 2**20:.0f} MB "
          f"on disk, made in {time.perf_counter() - began:.0f} s)", flush=True)
    seconds, peak, error = timed([*ONNXPRUNE, "prune", str(model), "-o", str(work / "pruned.onnx"), "-m",
                                  "chita-channel", "--sparsity", "0.5", "--calib", str(images), "--preprocess", "yolo"])
    if error:
        raise SystemExit(error)
    held = count * 3 * 640 * 640 * 4 / 2**30
    print("| images | method | wall s | peak RSS | the decoded images held at once |\n|---|---|---|---|---|")
    print(f"| {count} JPEG 640x640 | chita-channel 0.5, --preprocess yolo | {seconds:.0f} | {peak / 1024:.2f} GB | "
          f"{held:.1f} GB |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    routes_parser = commands.add_parser("routes")
    routes_parser.add_argument("folder", type=Path)
    routes_parser.add_argument("--select", default="*")
    routes_parser.add_argument("--methods", default="sparsegpt,chita-channel")
    stream_parser = commands.add_parser("stream")
    stream_parser.add_argument("--images", type=int, default=1000)
    stream_parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "onnxprune-stream")
    args = parser.parse_args(argv)
    if args.command == "routes":
        routes(args.folder, args.select, args.methods.split(","))
    else:
        stream(args.images, args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
