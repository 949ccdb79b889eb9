"""Thread settings reach torch and ONNX Runtime; idle OpenMP threads wait as the cores' idleness says unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onnxprune.errors import ConfigError
from onnxprune.threads import (QUIET_SPINCOUNT, WAIT_VARIABLES, default_threads, set_threads, thread_count,
                               usable_cpus, wait_settings)
from onnxprune.runtime.sessions import make_session

ROOT = Path(__file__).resolve().parents[1]
CNN = ROOT / "models" / "cnn.onnx"


@pytest.fixture
def restore_threads():
    before = thread_count()
    torch_before = torch.get_num_threads()
    yield
    set_threads(before)
    torch.set_num_threads(torch_before)


def test_configured_count_reaches_torch_and_every_ort_session(restore_threads):
    set_threads(1)
    assert torch.get_num_threads() == 1
    assert make_session(str(CNN), device="cpu").get_session_options().intra_op_num_threads == 1
    set_threads(2)
    assert torch.get_num_threads() == 2
    session = make_session(str(CNN), device="cpu")
    assert session.get_session_options().intra_op_num_threads == 2
    assert session.get_session_options().inter_op_num_threads == 1
    # an explicit count for one session wins over the process-wide one
    assert make_session(str(CNN), device="cpu", threads=1).get_session_options().intra_op_num_threads == 1


def test_bad_thread_counts_are_config_errors():
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        set_threads(0)
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        make_session(str(CNN), device="cpu", threads=-2)


def test_default_is_within_the_usable_cores():
    assert 1 <= default_threads() <= len(usable_cpus())


def _run(code: str, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_waits_spin_briefly_on_idle_cores_and_sleep_beside_busy_ones():
    assert wait_settings(2.0, 2) == {"GOMP_SPINCOUNT": str(QUIET_SPINCOUNT)}
    assert wait_settings(1.7, 2) == {"GOMP_SPINCOUNT": str(QUIET_SPINCOUNT)}
    assert wait_settings(1.0, 2) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert wait_settings(None, 4) == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_import_chooses_the_waits_unless_the_user_did():
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    show = "import onnxprune, os; print([os.environ.get(v) for v in %r])" % (WAIT_VARIABLES,)
    chosen = _run(show, env)
    assert chosen in (str(["PASSIVE", None, None]), str([None, str(QUIET_SPINCOUNT), None]))
    for variable, value in [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "5"), ("KMP_BLOCKTIME", "0")]:
        expected = [value if v == variable else None for v in WAIT_VARIABLES]
        assert _run(show, {**env, variable: value}) == str(expected)


def test_cli_threads_option_reaches_torch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    code = ("import sys, torch; from onnxprune.cli import main; sys.argv = ['onnxprune', '--threads', '1', "
            f"'prune', {str(CNN)!r}, '-o', {str(tmp_path / 'o.onnx')!r}, '--sparsity', '0.3']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "import onnxprune.threads as t; print(t.thread_count(), torch.get_num_threads())")
    assert _run(code, env).splitlines()[-1] == "1 1"


def test_magnitude_prune_imports_neither_torch_nor_pot_nor_ray(tmp_path):
    code = ("import sys, onnxprune; onnxprune.prune(%r, %r, 'magnitude', sparsity=0.5); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ot', 'onnx2torch', 'ray'}))"
            % (str(CNN), str(tmp_path / "m.onnx")))
    assert _run(code, dict(os.environ)) == "[]"


def test_numpy_blas_takes_the_thread_count():
    from threadpoolctl import threadpool_info

    before = thread_count()
    try:
        for count in (1, 2):
            set_threads(count)
            blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
            assert blas and all(lib["num_threads"] == count for lib in blas)
    finally:
        set_threads(before)
