#!/usr/bin/env bash
# Create .venv beside the repository and install onnxprune (editable) with its test and Ray extras.
# Safe to run again: an existing .venv is reused and only what is missing gets installed.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
log=.venv/pip-install.log
echo "installing onnxprune and its dependencies into .venv (log: $log) ..."
# A large wheel cut off mid-download fails pip's hash check; try again before giving up.
installed=no
for attempt in 1 2 3; do
    if .venv/bin/python -m pip install --retries 10 --timeout 60 -e ".[dev,ray]" >"$log" 2>&1; then
        installed=yes
        break
    fi
    echo "pip install attempt $attempt failed; last lines of $log:" >&2
    grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -5 >&2
done
if [ "$installed" != yes ]; then
    grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -40
    echo "setup failed: see $log" >&2
    exit 1
fi
.venv/bin/python - <<'PY'
import importlib.metadata as md
import onnx2torch, onnxruntime, torch, torchvision  # onnx2torch needs an importable torchvision
gpu = {"onnxruntime", "onnxruntime-gpu"} & {d.metadata["Name"].lower() for d in md.distributions()}
assert len(gpu) == 1, f"exactly one of onnxruntime / onnxruntime-gpu must be installed, found {sorted(gpu)}"
print(f"ready: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"{gpu.pop()} {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})")
PY
