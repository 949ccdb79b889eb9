"""How many threads onnxprune uses, the same count for torch and ONNX Runtime, and how idle ones wait.

OpenMP threads that spin at barriers collapse beside another busy process: one descheduled thread
stalls all the others (a CHITA prune ran 48x slower beside one busy loop). So idle threads wait
passively, and by default onnxprune uses the cores of this process that are idle when it starts.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from onnxprune.errors import ConfigError

log = logging.getLogger(__name__)

_chosen: int | None = None


def prefer_passive_waits() -> None:
    """Passive OpenMP waits unless the user chose a policy. OpenMP reads this once, when torch loads its
    runtime, so it only takes effect before torch is imported (the CLI calls it first thing)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def usable_cpus() -> list[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _cpu_times(cpus: list[int]) -> tuple[int, int] | None:
    """(idle, total) jiffies summed over ``cpus`` from /proc/stat; None where it is unavailable."""
    try:
        with open("/proc/stat") as handle:
            lines = handle.readlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    idle = total = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            values = [int(v) for v in fields[1:]]
            idle += values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
            total += sum(values[:8])
    return (idle, total) if total else None


def idle_cpus(sample_s: float = 0.1) -> float | None:
    """How many of the usable CPUs were idle over a short sample; None where /proc/stat is unavailable."""
    cpus = usable_cpus()
    first = _cpu_times(cpus)
    time.sleep(sample_s)
    second = _cpu_times(cpus)
    if first is None or second is None or second[1] <= first[1]:
        return None
    return len(cpus) * (second[0] - first[0]) / (second[1] - first[1])


def default_threads() -> int:
    """The usable CPUs that are idle now (at least 1), so that onnxprune does not fight a busy process
    for a core; all usable CPUs where idleness cannot be measured."""
    cores = len(usable_cpus())
    idle = idle_cpus()
    if idle is None:
        return cores
    return max(1, min(cores, int(idle + 0.5)))


def set_threads(count: int | None) -> int:
    """Use ``count`` threads in torch and every ONNX Runtime session (None: the default); returns it."""
    global _chosen
    if count is not None and int(count) < 1:
        raise ConfigError(f"threads must be >= 1, not {count}")
    _chosen = int(count) if count is not None else default_threads()
    log.info("using %d thread(s) for torch and ONNX Runtime", _chosen)
    if "torch" in sys.modules:
        apply_to_torch()
    return _chosen


def thread_count() -> int:
    """The thread count in force (chosen on first use when nobody set one)."""
    return _chosen if _chosen is not None else set_threads(None)


def apply_to_torch() -> None:
    """Give torch the thread count in force; methods call it after importing torch."""
    import torch

    count = thread_count()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
