"""How many threads onnxprune uses, the same count for torch, ONNX Runtime and numpy's BLAS, and how idle
ones wait.

OpenMP threads that spin at barriers collapse beside another busy process: one descheduled thread
stalls all the others (a CHITA prune once ran 48x slower beside one busy loop), while waking sleeping
threads costs time on idle cores (passive waits made CHITA++ 1.3x slower there). So onnxprune looks at
the cores when it starts: idle threads spin briefly when every core is idle, and wait passively
otherwise; by default it uses the cores of this process that are idle.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from onnxprune.errors import ConfigError

log = logging.getLogger(__name__)

_chosen: int | None = None
# Spin iterations an idle OpenMP thread makes before it sleeps, when every core is idle at start (libgomp's
# GOMP_SPINCOUNT; its own default is 300,000 and passive waits are 0). CHITA++ on the bundled CNN (3 stages,
# 2 threads) took 27 s with it and 35 s with passive waits on idle cores, but 70 s against 45 s beside a
# busy loop: hence passive waits as soon as a core is busy at start.
QUIET_SPINCOUNT = 10000
# Variables by which a user chooses how OpenMP threads wait (libgomp, LLVM and Intel runtimes).
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
_REUSE_SAMPLE_S = 2.0  # the start-up sample of idle cores also serves the default thread count this long
_sample: tuple[float, float | None] | None = None  # (monotonic time, idle CPUs) of the last sample


def wait_settings(idle: float | None, cores: int) -> dict[str, str]:
    """The environment that sets how idle OpenMP threads wait: a short spin when all ``cores`` are
    ``idle``, passive waits when some are busy or idleness is unknown."""
    if idle is not None and idle >= cores - 0.5:
        return {"GOMP_SPINCOUNT": str(QUIET_SPINCOUNT)}
    return {"OMP_WAIT_POLICY": "PASSIVE"}


def choose_waits() -> None:
    """Set how idle OpenMP threads wait, from the cores' idleness now, unless the user chose. OpenMP reads
    this once, when torch loads its runtime, so it only takes effect before torch is imported (importing
    onnxprune and the CLI call it first thing)."""
    if "torch" in sys.modules or any(name in os.environ for name in WAIT_VARIABLES):
        return
    settings = wait_settings(_idle_now(), len(usable_cpus()))
    os.environ.update(settings)
    log.debug("OpenMP waits: %s", settings)


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


def _idle_now() -> float | None:
    """Idle usable CPUs: a fresh sample, or the last one when it is under ``_REUSE_SAMPLE_S`` old."""
    global _sample
    if _sample is None or time.monotonic() - _sample[0] > _REUSE_SAMPLE_S:
        _sample = (time.monotonic(), idle_cpus())
    return _sample[1]


def default_threads() -> int:
    """The usable CPUs that are idle now (at least 1), so that onnxprune does not fight a busy process
    for a core; all usable CPUs where idleness cannot be measured."""
    cores = len(usable_cpus())
    idle = _idle_now()
    if idle is None:
        return cores
    return max(1, min(cores, int(idle + 0.5)))


def set_threads(count: int | None) -> int:
    """Use ``count`` threads in torch and every ONNX Runtime session (None: the default); returns it."""
    global _chosen
    if count is not None and int(count) < 1:
        raise ConfigError(f"threads must be >= 1, not {count}")
    _chosen = int(count) if count is not None else default_threads()
    log.info("using %d thread(s) for torch, ONNX Runtime and numpy's BLAS", _chosen)
    if "torch" in sys.modules:
        apply_to_torch()
    apply_to_blas()
    return _chosen


def thread_count() -> int:
    """The thread count in force (chosen on first use when nobody set one)."""
    return _chosen if _chosen is not None else set_threads(None)


def apply_to_blas() -> None:
    """Give numpy's BLAS (OpenBLAS, MKL) the thread count in force: how a product is split between threads
    changes its last bits, so a Ray task of the same count then selects the channels a run here selects."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=thread_count(), user_api="blas")


def apply_to_torch() -> None:
    """Give torch the thread count in force; methods call it after importing torch."""
    import torch

    count = thread_count()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
