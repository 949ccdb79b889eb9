"""``onnxprune demo``: every registered method on the bundled CNN, measured in ONNX Runtime, one table."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from onnxprune.validate.bench import benchmark
from onnxprune.data import load_data
from onnxprune.errors import ModelError
from onnxprune.validate.evaluation import evaluate
from onnxprune.graph.io import load_model
from onnxprune.methods import METHODS
from onnxprune.pipeline import prune
from onnxprune.graph.stats import model_stats
from onnxprune.report import percent, table
from onnxprune.units import format_bytes

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
EVAL_SAMPLES = 2000  # first test images: enough to rank methods, fast enough for a two-minute demo
DEMO_SPARSITY = {False: 0.7, True: 0.3}  # unstructured / structured
# Per-method settings: fewer gradient rows and stages keep CHITA++ within the demo's time budget on two
# cores, and the methods that capture activations take 256 calibration images (one-shot CHITA takes the
# layer engine, which has no gradient rows); channel counts rounded to multiples of 8 turn removed channels
# into real speed.
DEMO_OPTIONS: dict[str, dict[str, Any]] = {"chita++": {"rows": 128, "stages": 3}, "chita": {"samples": 256},
                                           "sparsegpt": {"samples": 256}, "wanda": {"samples": 256},
                                           "l1-channel": {"round_to": 8}, "intrafusion": {"round_to": 8},
                                           "chita-channel": {"round_to": 8, "samples": 256}}


@dataclass
class DemoRow:
    """One model of the demo table (accuracy and agreement as fractions)."""

    method: str
    sparsity: float
    accuracy: float
    agreement: float | None
    params: int
    nonzero_macs: int
    file_bytes: int
    median_ms: float
    speedup: float | None
    prune_s: float | None


@dataclass
class DemoResult:
    """All rows plus the settings they were measured with."""

    model: str
    eval_samples: int
    batch: int
    provider: str
    rows: list[DemoRow] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        rows = [[r.method, r.sparsity, percent(r.accuracy), percent(r.agreement), r.params, r.nonzero_macs, format_bytes(r.file_bytes),
                 r.median_ms, None if r.speedup is None else f"{r.speedup:.2f}x", r.prune_s] for r in self.rows]
        title = (f"{self.model}: accuracy on the first {self.eval_samples} MNIST test images, latency at batch "
                 f"{self.batch} on {self.provider} ({self.seconds:.0f} s in all)")
        return table(["method", "sparsity", "acc %", "agree %", "params", "MACs (nonzero)", "file", "median ms",
                      "speed-up", "prune s"], rows, title=title)


def run_demo(out_dir: str | None = None, batch: int = 32) -> DemoResult:
    """Prune the bundled CNN with every method at its default demo sparsity and measure each output."""
    dense = MODELS_DIR / "cnn.onnx"
    calib_path, test_path = MODELS_DIR / "cnn_calib.npz", MODELS_DIR / "cnn_test.npz"
    if not dense.is_file() or not test_path.is_file():
        raise ModelError(f"the demo needs the bundled models in {MODELS_DIR} (run from an onnxprune checkout)")
    start = time.perf_counter()
    folder = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="onnxprune-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    test = load_data(test_path, load_model(dense)).take(EVAL_SAMPLES)
    base = evaluate(dense, test)
    dense_stats = model_stats(load_model(dense), dense)
    dense_bench = benchmark(dense, batch=batch, runs=50, warmup=5)
    result = DemoResult(model=dense.name, eval_samples=len(test), batch=batch, provider=dense_bench.provider)
    result.rows.append(DemoRow("dense", 0.0, base.accuracy, None, dense_stats.params, dense_stats.sparse_macs,
                               dense_stats.file_bytes, dense_bench.median_ms, None, None))
    for spec in tqdm(list(METHODS.values()), desc="demo", unit="method"):
        sparsity = DEMO_SPARSITY[spec.structured]
        target = folder / f"cnn_{spec.name.replace('+', 'p')}_{sparsity}.onnx"
        began = time.perf_counter()
        outcome = prune(dense, target, spec.name, calib=calib_path if spec.needs_calib else None,
                        sparsity=sparsity, **DEMO_OPTIONS.get(spec.name, {}))
        pruned_s = time.perf_counter() - began
        quality = evaluate(target, test, reference=dense)
        speed = benchmark(target, vs=dense, batch=batch, runs=50, warmup=5)
        result.rows.append(DemoRow(spec.name, sparsity, quality.accuracy, quality.agreement, outcome.after.params,
                                   outcome.after.sparse_macs, outcome.after.file_bytes, speed.median_ms, speed.ratio,
                                   pruned_s))
    result.seconds = time.perf_counter() - start
    return result
