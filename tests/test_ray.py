"""Ray, the optional extra: a sweep's points and the layer engine's solves run as tasks of a local 2-CPU cluster
write the files a run in this process writes, and a task whose worker is killed runs again. Skipped without Ray."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from onnxprune import cluster
from onnxprune.errors import ConfigError
from onnxprune.pipeline import Pruner
from onnxprune.threads import set_threads, thread_count
from onnxprune.workflows.sweeps import sweep

pytest.importorskip("ray")

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def local_cluster():
    found = cluster.connect("local", cpus=2)
    yield found
    cluster.disconnect()


@pytest.fixture
def one_thread():
    """One thread per task, as in the run here it is compared with (two tasks at once on the 2-CPU cluster)."""
    before = thread_count()
    set_threads(1)
    yield
    set_threads(before)


def _files(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.glob("*.onnx"))}


def _test_data(tmp_path: Path, model: str = "mlp") -> Path:
    data = tmp_path / f"{model}_test.npz"
    with np.load(MODELS / f"{model}_test.npz") as full:
        np.savez(data, input=full["input"][:500], labels=full["labels"][:500])
    return data


def test_sweep_on_ray_writes_the_files_of_a_sweep_here(tmp_path, local_cluster, one_thread):
    data = _test_data(tmp_path)
    common = dict(data=data, calib=MODELS / "mlp_calib.npz", sparsities=[0.5, 0.7], runs=50, batch=8,
                  methods=["magnitude", "sparsegpt", "l1-channel", "chita++"])
    here = sweep(MODELS / "mlp.onnx", tmp_path / "here", **common)
    there = sweep(MODELS / "mlp.onnx", tmp_path / "ray", ray_address="local", **common)
    assert there.environment["ray"] == local_cluster.describe() and "ray" not in here.environment
    written = _files(tmp_path / "here")
    assert len(written) == 8 and written == _files(tmp_path / "ray")  # byte for byte, chita++'s staged path too
    for a, b in zip(here.points, there.points):
        assert (a.method, a.sparsity, a.accuracy, a.agreement, a.error) == (b.method, b.sparsity, b.accuracy,
                                                                            b.agreement, b.error)
        assert a.accuracy is not None and b.prune_s > 0


@pytest.mark.parametrize("model, options", [("mlp", {"sparsity": 0.6, "allocation": "global"}),
                                            ("cnn", {"pattern": "2:4", "samples": 200})])
def test_layer_solves_on_ray_write_the_model_solved_here(tmp_path, local_cluster, one_thread, model, options):
    common = dict(calib=MODELS / f"{model}_calib.npz", measure_speed=False, **options)
    here = Pruner(MODELS / f"{model}.onnx", "sparsegpt", **common).write(tmp_path / "here.onnx")
    there = Pruner(MODELS / f"{model}.onnx", "sparsegpt", ray_address="local", **common).write(tmp_path / "ray.onnx")
    assert (tmp_path / "here.onnx").read_bytes() == (tmp_path / "ray.onnx").read_bytes()
    assert there.details["ray"] == local_cluster.describe() and "ray" not in here.details
    layers = there.details["layers"]
    assert sum(row["sparsity"] > 0 for row in layers.values()) >= 2  # the global allocation may keep one dense
    assert [row["relative_error"] for row in layers.values()] == [row["relative_error"] for row in
                                                                  here.details["layers"].values()]


def _kill_first_task(killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first Ray worker seen running an onnxprune sweep task (its process title names the task)."""
    while not stop.is_set() and not killed:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"ray::onnxprune sweep"):
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                return
        time.sleep(0.02)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the worker through /proc")
def test_a_killed_worker_task_runs_again(tmp_path, local_cluster, one_thread):
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_task, args=(killed, stop))
    killer.start()
    try:
        report = sweep(MODELS / "cnn.onnx", tmp_path / "ray", data=_test_data(tmp_path, "cnn"),
                       calib=MODELS / "cnn_calib.npz", methods=["sparsegpt"], sparsities=[0.4, 0.6], runs=50,
                       batch=8, options={"samples": 200}, ray_address="local")
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1 and all(p.error is None for p in report.points)
    here = Pruner(MODELS / "cnn.onnx", "sparsegpt", calib=MODELS / "cnn_calib.npz", samples=200, measure_speed=False)
    for point in report.points:
        here.write(tmp_path / "here.onnx", point.sparsity)
        assert Path(point.model).read_bytes() == (tmp_path / "here.onnx").read_bytes(), point.sparsity


def test_what_ray_cannot_go_with_is_refused(tmp_path, local_cluster):
    with pytest.raises(ConfigError, match="--resume .* --ray"):
        sweep(MODELS / "mlp.onnx", tmp_path / "out", data=_test_data(tmp_path), methods=["magnitude"],
              ray_address="local", resume=tmp_path / "resume")
    with pytest.raises(ConfigError, match="l1-channel here has none to spread"):
        Pruner(MODELS / "mlp.onnx", "l1-channel", ray_address="local").session()
    with pytest.raises(ConfigError, match="address 'local' only"):
        cluster.connect("auto", cpus=2)
    assert cluster.active() == local_cluster


@pytest.mark.parametrize("sequential", ["on", "off"])
def test_channel_selections_on_ray_write_the_model_selected_here(tmp_path, local_cluster, one_thread, sequential):
    common = dict(calib=MODELS / "cnn_calib.npz", measure_speed=False, sparsity=0.5, samples=64, sequential=sequential)
    here = Pruner(MODELS / "cnn.onnx", "chita-channel", **common).write(tmp_path / "here.onnx")
    there = Pruner(MODELS / "cnn.onnx", "chita-channel", ray_address="local", **common).write(tmp_path / "ray.onnx")
    assert there.details["ray"] == local_cluster.describe() and len(there.details["groups"]) >= 2
    assert (tmp_path / "here.onnx").read_bytes() == (tmp_path / "ray.onnx").read_bytes()
    assert there.after.params == here.after.params < here.before.params
