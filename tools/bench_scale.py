"""Scale benchmark on the CPU: torchvision ResNet-18 (32×32, 10 classes) and ResNet-50 (224×224, 1000
classes), a BERT-base-sized encoder (110 M weights, 128 random 64-token rows) and Llama-shaped decoders with
TinyLlama's widths (10 layers: 572 M weights, 2.3 GB; all 22: 1.1 B, 4.4 GB; external data) at random init,
each pruned in its own ``onnxprune prune`` process by CHITA's whole-model and layer engines (or by ``--method``).
Prints one table: wall time, time per phase (from the ``--report`` JSON), peak RSS and the verdict against
the case's targets for that method.

    python tools/bench_scale.py DIR [--select GLOB] [--method chita] [--engines model,layer] [--sparsity 0.5]
                                    [--threads 2] [--timeout 960] [--extra '-O patience=30'] [--markdown]

Models and calibration data are written to DIR once and reused. Phases: ``load`` (read, canonicalise,
reference run), ``setup`` (model engine: torch view and parity check; layer engine: what the method spent
outside capture and solve), ``grads/capture`` (model engine: the gradient matrix; layer engine: Gram
matrices from ONNX Runtime), ``solve`` and ``write`` (ORT check and save).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxprune  # noqa: E402,F401  (before torch: sets how idle OpenMP threads wait)

log = logging.getLogger("bench_scale")

MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class Case:
    """One benchmark model with its calibration set and the targets it must meet."""

    name: str
    arch: str  # a torchvision model, 'bert-base', or 'llama-N' (TinyLlama's widths, N layers)
    classes: int
    side: int  # image side, or tokens per row
    samples: int
    max_s: dict[str, float]  # by method
    max_bytes: int
    extra: tuple[str, ...] = ()

    def model(self, folder: Path) -> Path:
        return folder / f"{self.name}.onnx"

    def calib(self, folder: Path) -> Path:
        return folder / f"{self.name}_calib{self.samples}.npz"


CASES = (
    Case("resnet18_32", "resnet18", 10, 32, 128, {"chita": 90.0}, 4 * GIB),
    Case("resnet50_224", "resnet50", 1000, 224, 64, {"chita": 300.0}, 8 * GIB, ("--max-memory", "8G")),
    Case("bert_base_64", "bert-base", 0, 64, 128, {"chita": 900.0, "sparsegpt": 300.0}, 4 * GIB),
    Case("llama10_64", "llama-10", 0, 64, 128, {}, 16 * GIB, ("--max-memory", "16G")),
    Case("llama22_64", "llama-22", 0, 64, 128, {}, 16 * GIB, ("--max-memory", "16G")),
)
# BERT-base's shape (Devlin et al.): 12 layers of width 768, 12 heads, FFN 3072, a 30,522-token vocabulary.
BERT_BASE = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2,
             "layer_norm_eps": 1e-12, "hidden_act": "gelu"}


@dataclass
class Run:
    """The outcome of one prune process."""

    wall_s: float
    peak_bytes: int
    report: dict | None
    error: str | None


def export(case: Case, path: Path) -> None:
    """Export the model at random init (seed 0) with the TorchScript exporter, opset 17."""
    import torch
    import torchvision

    torch.manual_seed(0)
    if case.arch == "bert-base":
        sys.path.insert(0, str(ROOT / "tools"))
        import bert_export

        path.write_bytes(bert_export.export_onnx(bert_export.BertEncoder(BERT_BASE)))
        return
    if case.arch.startswith("llama-"):
        sys.path.insert(0, str(ROOT / "tools"))
        import llama_export

        layers = int(case.arch.split("-")[1])
        llama_export.write_decoder(dict(llama_export.TINYLLAMA, num_hidden_layers=layers), path)
        return
    net = getattr(torchvision.models, case.arch)(num_classes=case.classes).eval()
    example = torch.zeros(1, 3, case.side, case.side)
    torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def synthetic_images(count: int, side: int, seed: int = 0):
    """Structured images: smooth random colour fields (8×8 noise upsampled) plus a little pixel noise,
    roughly standardised like normalised photographs; float32 ``[count, 3, side, side]``."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, 3, 8, 8, generator=generator)
    smooth = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)
    images = smooth + 0.3 * torch.randn(count, 3, side, side, generator=generator)
    images = (images - images.mean()) / images.std()
    return images.numpy().astype(np.float32)


def prepare(case: Case, folder: Path) -> None:
    """Write the case's model and calibration data into ``folder`` unless they are there already."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    if not case.model(folder).exists():
        log.info("exporting %s", case.model(folder))
        export(case, case.model(folder))
    if not case.calib(folder).exists():
        if case.arch == "bert-base" or case.arch.startswith("llama-"):  # random tokens, every position attended
            vocab = BERT_BASE["vocab_size"] if case.arch == "bert-base" else 32000
            ids = np.random.default_rng(0).integers(1, vocab, (case.samples, case.side))
            np.savez(case.calib(folder), input_ids=ids, attention_mask=np.ones_like(ids))
        else:
            np.savez(case.calib(folder), input=synthetic_images(case.samples, case.side))


def run_prune(case: Case, folder: Path, method: str, engine: str, sparsity: float, threads: int, timeout: float,
              extra: list[str]) -> Run:
    """One ``onnxprune prune`` process under ``/usr/bin/time``, so its peak RSS is its own (a child forked
    from this process would count this one's memory). Past ``timeout`` it is interrupted (SIGINT, which
    ``time`` ignores, so the peak so far is still written), then killed."""
    out = folder / "pruned" / f"{case.name}_{method}_{engine}_{sparsity}.onnx"
    out.parent.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "onnxprune.cli", "--threads", str(threads), "prune", str(case.model(folder)),
               "-o", str(out), "--method", method, *(["-O", f"engine={engine}"] if method == "chita" else []),
               "--sparsity", str(sparsity), "--calib", str(case.calib(folder)), *case.extra, *extra]
    with tempfile.TemporaryDirectory() as scratch:
        report, peak = Path(scratch) / "report.json", Path(scratch) / "peak"
        start = time.perf_counter()
        process = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(peak), *command, "--report", str(report)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                   start_new_session=True)
        try:
            _, stderr = process.communicate(timeout=timeout)
            error = None
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
            stderr, error = "", f"stopped after {timeout:.0f} s"
        wall = time.perf_counter() - start
        peak_bytes = int(peak.read_text().split()[-1]) * 1024 if peak.exists() and peak.read_text().strip() else 0
        if error is None and process.returncode:
            lines = [ln for ln in stderr.splitlines() if ln.startswith(("error", "internal error"))]
            error = (lines or stderr.strip().splitlines() or ["?"])[-1]
        if error:
            return Run(wall, peak_bytes, None, error)
        return Run(wall, peak_bytes, json.loads(report.read_text()), None)


def phases(report: dict) -> dict[str, float]:
    """Seconds per phase from a prune report: load, setup, gradients or capture, solve, write."""
    timings, details = report["timings"], report["details"]
    work = details.get("gradients_s", details.get("capture_s", 0.0))
    solve = details.get("solve_s", 0.0)
    return {"load": timings["load"], "setup": timings["method"] - work - solve, "grads/capture": work,
            "solve": solve, "write": timings["write"]}


def verdict(case: Case, method: str, run: Run) -> str:
    """Whether a run meets the case's time and memory targets; a refusal naming --max-memory counts as meeting."""
    if run.error and not run.error.startswith("stopped"):
        return "refused up front (ok)" if "--max-memory" in run.error else "FAILED"
    misses = []
    limit = case.max_s.get(method)
    if run.error or (limit is not None and run.wall_s > limit):
        misses.append(f"time > {limit:.0f} s" if limit is not None else "stopped")
    if run.peak_bytes > case.max_bytes:
        misses.append(f"peak > {case.max_bytes / GIB:.0f} GiB")
    return "MISSES: " + ", ".join(misses) if misses else "meets"


def row(case: Case, method: str, engine: str, sparsity: float, run: Run) -> list[str]:
    """One table row."""
    times = phases(run.report) if run.report else {}
    cells = [f"{times[k]:.1f}" if k in times else "-" for k in ("load", "setup", "grads/capture", "solve", "write")]
    limit = case.max_s.get(method)
    target = (f"≤{limit:.0f} s, " if limit is not None else "") + f"≤{case.max_bytes / GIB:.0f} GiB"
    peak = f"{run.peak_bytes / MIB:.0f}" if run.peak_bytes else "-"
    return [case.name, method, engine, f"{sparsity:g}", f"{run.wall_s:.1f}", *cells, peak,
            target, verdict(case, method, run) + (f" ({run.error})" if run.error else "")]


HEAD = ["model", "method", "engine", "sparsity", "wall s", "load s", "setup s", "grads/capture s", "solve s", "write s",
        "peak MiB", "target", "verdict"]


def render(rows: list[list[str]], markdown: bool) -> str:
    """The table as aligned text or as markdown."""
    if markdown:
        return "\n".join(["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
                         + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in rows + [HEAD]) for i in range(len(HEAD))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [HEAD] + rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where models, calibration data and pruned files go")
    parser.add_argument("--select", default="*", help="glob over model names: " + ", ".join(c.name for c in CASES))
    parser.add_argument("--method", default="chita", help="chita (both engines by --engines), sparsegpt, wanda")
    parser.add_argument("--engines", default="model,layer", help="CHITA's engines to run (chita only)")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2, help="onnxprune --threads of every prune")
    parser.add_argument("--timeout", type=float, default=960.0, help="seconds before a prune is killed")
    parser.add_argument("--extra", default="", help="more prune arguments for every run, e.g. '-O patience=30'")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    for case in [c for c in CASES if fnmatch.fnmatch(c.name, args.select)]:
        prepare(case, args.folder)
        for engine in args.engines.split(",") if args.method == "chita" else ["-"]:
            run = run_prune(case, args.folder, args.method, engine, args.sparsity, args.threads, args.timeout,
                            args.extra.split())
            rows.append(row(case, args.method, engine + (f" {args.extra}" if args.extra else ""), args.sparsity, run))
            log.info("%s", " | ".join(rows[-1]))
    print(render(rows, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
