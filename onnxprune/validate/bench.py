"""Latency in ONNX Runtime: warm-up, fixed threads, many timed runs, median and p90; two models are
interleaved (ABAB) so drifts of the machine hit both equally, with thread spinning off so one session's
idle threads do not steal the other's cores. CUDA runs use IO binding."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnxruntime as ort
from tqdm.auto import tqdm

from onnxprune.data import Source, check_input_shapes, load_data
from onnxprune.errors import ConfigError
from onnxprune.graph.io import load_model
from onnxprune.threads import thread_count
from onnxprune.runtime.feeds import make_feed, session_inputs
from onnxprune.runtime.sessions import make_session, provider_name, session_bytes

log = logging.getLogger(__name__)

MIN_RUNS = 50


@dataclass
class BenchResult:
    """Latency of one call at ``batch`` in milliseconds. With ``vs``, ``ratio`` = vs median / median,
    i.e. the speed-up of the model over the other one (> 1: the model is faster)."""

    model: str
    provider: str
    batch: int
    threads: int
    runs: int
    warmup: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    vs: str | None = None
    vs_median_ms: float | None = None
    vs_p90_ms: float | None = None
    ratio: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _timer(session: ort.InferenceSession, feed: dict[str, np.ndarray]):
    """A zero-argument callable running one inference; on CUDA inputs and outputs stay on the device."""
    if provider_name(session) != "cuda":
        return lambda: session.run(None, feed)
    binding = session.io_binding()
    for name, array in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda", 0)

    def run() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
    return run


def interleaved_times(sessions: list[ort.InferenceSession], feed: dict[str, np.ndarray], runs: int,
                      warmup: int, *, seconds: float | None = None, min_runs: int = 1) -> list[list[float]]:
    """Milliseconds of ``runs`` calls of each session on ``feed``, the sessions taking turns call by call
    (after ``warmup`` untimed rounds) so that a drift of the machine hits them all alike; with ``seconds``,
    fewer rounds (at least ``min_runs``) once that much time has passed."""
    calls = [_timer(s, feed) for s in sessions]
    for _ in range(warmup):
        for call in calls:
            call()
    times: list[list[float]] = [[] for _ in calls]
    began = time.perf_counter()
    for done in tqdm(range(runs), desc="bench", unit="run", leave=False, disable=None):
        if seconds is not None and done >= min_runs and time.perf_counter() - began >= seconds:
            break
        for call, bucket in zip(calls, times):
            start = time.perf_counter()
            call()
            bucket.append((time.perf_counter() - start) * 1000.0)
    return times


def latencies(models: list[str | os.PathLike | onnx.ModelProto], feed: dict[str, np.ndarray], *,
              seconds: float = 2.0, max_runs: int = 20, min_runs: int = 5, threads: int | None = None,
              room: int | None = None) -> tuple[list[float], str, bool]:
    """Median milliseconds of each model on ``feed``, timed in turns call by call (ONNX Runtime, CPU or CUDA
    as ``bench`` picks, named in the result): two untimed rounds, then rounds until ``seconds`` have passed
    (at least ``min_runs``, at most ``max_runs``), so that a report's speed figure costs little on a large model.
    When the sessions would not fit in ``room`` bytes together (``session_bytes``), each is made, timed and
    dropped in turn instead; the third value says whether they were timed together."""
    together = room is None or sum(session_bytes(m) for m in models) <= room
    if not together:
        log.info("timing the %d models one after the other: their sessions do not fit in %d bytes together",
                 len(models), room)
    medians, provider = [], "cpu"
    for group in [models] if together else [[m] for m in models]:  # a group's sessions live while it is timed
        sessions = [make_session(m if isinstance(m, onnx.ModelProto) else str(m), threads=threads) for m in group]
        times = interleaved_times(sessions, feed, max_runs, warmup=2, seconds=seconds, min_runs=min_runs)
        medians += [float(np.median(t)) for t in times]
        provider = provider_name(sessions[0])
        del sessions
    return medians, provider, together


def benchmark(model_path: str | os.PathLike, *, vs: str | os.PathLike | None = None, batch: int = 1,
              threads: int | None = None, runs: int = 100, warmup: int = 10, device: str = "auto",
              data: str | os.PathLike | Source | None = None,
              input_shapes: dict[str, tuple[int, ...]] | None = None) -> BenchResult:
    """Time ``model_path`` (and ``vs``, interleaved) on ``batch`` samples of ``data`` or random inputs
    (dynamic dims beyond the batch from ``input_shapes``, else 1)."""
    if runs < MIN_RUNS:
        raise ConfigError(f"runs must be >= {MIN_RUNS} for a stable median, got {runs}")
    if batch < 1 or warmup < 0:
        raise ConfigError(f"batch must be >= 1 and warmup >= 0, got batch={batch}, warmup={warmup}")
    threads = threads or thread_count()
    sessions = [make_session(str(model_path), threads=threads, device=device)]
    dataset = load_data(data, load_model(model_path), "evaluation") if data is not None else None
    specs = session_inputs(sessions[0])
    if input_shapes:
        check_input_shapes(input_shapes, specs)
        specs = [dataclasses.replace(s, shape=(s.shape[0], *input_shapes[s.name][1:])) if s.name in input_shapes
                 else s for s in specs]
    feed = make_feed(specs, batch, dataset)
    if vs is not None:
        sessions.append(make_session(str(vs), threads=threads, device=device))
        other_names = sorted(s.name for s in session_inputs(sessions[1]))
        if other_names != sorted(feed):
            raise ConfigError(f"--vs model has inputs {other_names}, the model has {sorted(feed)}")
    times = interleaved_times(sessions, feed, runs, warmup)
    stats = [(float(np.median(t)), float(np.percentile(t, 90)), float(np.mean(t))) for t in times]
    result = BenchResult(model=str(model_path), provider=provider_name(sessions[0]), batch=batch, threads=threads,
                         runs=runs, warmup=warmup, median_ms=stats[0][0], p90_ms=stats[0][1], mean_ms=stats[0][2])
    if vs is not None:
        result.vs, result.vs_median_ms, result.vs_p90_ms = str(vs), stats[1][0], stats[1][1]
        result.ratio = stats[1][0] / stats[0][0]
    return result
