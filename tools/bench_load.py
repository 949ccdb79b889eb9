"""How onnxprune's wall time holds up beside another busy process, as on a laptop or a shared CI runner.

Each command runs on a quiet machine, then beside one busy-loop process (``python -c "while True:
pass"``), and the table gives both wall times and their ratio. ``--old`` adds the behaviour before
threads were chosen deliberately (spinning OpenMP waits, every core), ``--passive`` passive waits
always (the default before waits followed the cores' idleness), for comparison.

    python tools/bench_load.py [--runs 1] [--old] [--passive] [--only chita|chita-model|chita++|demo]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from onnxprune.threads import WAIT_VARIABLES  # noqa: E402
CLI = [sys.executable, "-m", "onnxprune.cli"]


def commands(out: Path) -> dict[str, list[str]]:
    chita = [*CLI, "prune", "models/cnn.onnx", "-o", str(out / "chita.onnx"), "--method", "chita",
             "--sparsity", "0.7", "--calib", "models/cnn_calib.npz"]
    staged = [*CLI, "prune", "models/cnn.onnx", "-o", str(out / "staged.onnx"), "--method", "chita++",
              "--sparsity", "0.9", "-O", "stages=3", "--calib", "models/cnn_calib.npz"]
    return {"chita": chita, "chita-model": [*chita, "-O", "engine=model"], "chita++": staged, "demo": [*CLI, "demo"]}


def wall(command: list[str], env: dict[str, str]) -> float:
    """Seconds one run of ``command`` takes; the run must succeed."""
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--old", action="store_true", help="also time spinning waits on every core")
    parser.add_argument("--passive", action="store_true", help="also time passive waits on the default threads")
    parser.add_argument("--only", choices=["chita", "chita-model", "chita++", "demo"])
    args = parser.parse_args(argv)
    base = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    settings = {"onnxprune defaults": (base, [])}
    if args.passive:
        settings["passive waits"] = ({**base, "OMP_WAIT_POLICY": "PASSIVE"}, [])
    if args.old:
        settings["spinning waits, all cores"] = ({**base, "OMP_WAIT_POLICY": "ACTIVE"},
                                                 ["--threads", str(os.cpu_count() or 1)])
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, command in commands(Path(folder)).items():
            if args.only and name != args.only:
                continue
            for label, (env, extra) in settings.items():
                full = command[:len(CLI)] + extra + command[len(CLI):]
                quiet = median([wall(full, env) for _ in range(args.runs)])
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                try:
                    loaded = median([wall(full, env) for _ in range(args.runs)])
                finally:
                    busy.kill()
                    busy.wait()
                rows.append((name, label, f"{quiet:.1f}", f"{loaded:.1f}", f"{loaded / quiet:.2f}x"))
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    head = ("command", "threads", "quiet s", "beside a busy process s", "ratio")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    for row in [head] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
