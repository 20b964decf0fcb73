"""--threads: config field -> TrainOptions.extra["threads"] -> torch.set_num_threads / BLAS threads.

Thread counts are process-global: the torch checks restore torch's setting afterwards and read the
count back from torch and from what the backend reports (``describe()`` -> ``device_name``); the
BLAS check runs in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cifarbench.config import build_config
from cifarbench.engine.trainer import train_options
from cifarbench.errors import UsageError


def test_threads_field_reaches_backend_options():
    assert "threads" not in train_options(build_config(None, {}), (0.5,), (0.5,)).extra  # unset: framework default
    assert train_options(build_config(None, {"threads": 1}), (0.5,), (0.5,)).extra["threads"] == 1
    with pytest.raises(UsageError, match="threads"):
        build_config(None, {"threads": 0})


@pytest.fixture
def torch_threads():
    """A thread count unlike the current one; torch's global setting is restored afterwards."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    yield before + 1
    torch.set_num_threads(before)


def _cli(*args: str) -> dict:
    from typer.testing import CliRunner

    from cifarbench.cli import app

    res = CliRunner().invoke(app, [*args, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_train_and_test_threads_flag_sets_torch_threads(tiny_npz, tmp_path, torch_threads):
    import torch

    n, out = torch_threads, tmp_path / "run"
    summary = _cli("train", "lenet", "--dataset", tiny_npz, "--epochs", "1", "--batch-size", "32", "--backend", "torch",
                   "--device", "cpu", "--threads", str(n), "-o", str(out))
    assert torch.get_num_threads() == n and summary["device_name"].endswith(f"({n} threads)")
    assert f"threads: {n}" in (out / "config.yaml").read_text()
    torch.set_num_threads(1)
    result = _cli("test", str(out), "--backend", "torch", "--device", "cpu", "--threads", str(n))
    assert result["device_name"].endswith(f"({n} threads)"), result["device_name"]
    torch.set_num_threads(1)
    assert _cli("test", str(out), "--backend", "torch", "--device", "cpu")["device_name"].endswith("(1 threads)")


def test_bench_threads_flag_sets_torch_threads(tmp_path, torch_threads):
    n = torch_threads
    result = _cli("bench", "--backend", "torch", "--device", "cpu", "--synthetic", "-m", "lenet", "-b", "8",
                  "--warmup-steps", "1", "--steps", "2", "--repeats", "1", "--eval-batch-size", "16",
                  "--threads", str(n), "-o", str(tmp_path / "bench"))
    assert result["rows"][0]["device_name"].endswith(f"({n} threads)")
    assert result["config"]["threads"] == n


def _blas_child(code: str) -> list[str]:
    """What ``code`` prints in a fresh interpreter (BLAS threads are per process); skips where the
    BLAS has no thread control (the code prints 'none')."""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    if res.stdout.strip() == "none":
        pytest.skip("no BLAS thread control reachable here")
    return res.stdout.split()


def test_numpy_backend_sets_blas_threads():
    code = (
        "from cifarbench.backends.base import TrainOptions\n"
        "from cifarbench.backends.numpy_backend import NumpyBackend\n"
        "from cifarbench.backends.numpy_backend.arrays import blas_threads\n"
        "if blas_threads() is None: print('none'); raise SystemExit\n"
        "blas_threads(2)\n"
        "NumpyBackend('cpu', TrainOptions(extra={'threads': 1}))\n"
        "print(blas_threads())\n"
    )
    assert _blas_child(code) == ["1"]


@pytest.mark.parametrize("cpus,load,expected", [(2, 0.3, 2), (2, 1.2, 1), (2, 9.6, 1), (4, 0.9, 3), (4, 1.6, 2)])
def test_idle_threads_leaves_the_loaded_cpus_out(monkeypatch, cpus, load, expected):
    from cifarbench.backends.numpy_backend import arrays

    monkeypatch.setattr(arrays.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setattr(arrays.os, "getloadavg", lambda: (load, load, load))
    assert arrays.idle_threads() == expected


def test_numpy_backend_default_threads_follow_the_load():
    code = (
        "import os\n"
        "from cifarbench.backends.numpy_backend import arrays\n"
        "if arrays.blas_threads() is None: print('none'); raise SystemExit\n"
        "os.getloadavg = lambda: (50.0, 50.0, 50.0)\n"
        "from cifarbench.backends.base import TrainOptions\n"
        "from cifarbench.backends.numpy_backend import NumpyBackend\n"
        "be = NumpyBackend('cpu', TrainOptions())\n"
        "print(arrays.blas_threads(), be.threads)\n"
    )
    assert _blas_child(code) == ["1", "1"]


def _numpy_steps(threads: int, model: str = "resnet20", steps: int = 2):
    """Weights after a few SGD steps of the NumPy backend with ``threads`` conv threads."""
    import numpy as np

    from cifarbench.backends.base import OptimConfig, TrainOptions
    from cifarbench.backends.numpy_backend import NumpyBackend
    from cifarbench.models import create_spec, init_params

    be = NumpyBackend("cpu", TrainOptions(mean=(0.5,) * 3, std=(0.25,) * 3, extra={"threads": threads}))
    spec = create_spec(model, 3, 8, 10)
    be.build(spec, init_params(spec, 0))
    be.configure_optimizer(OptimConfig("sgd", momentum=0.9, nesterov=True, weight_decay=5e-4))
    rng = np.random.default_rng(0)
    n = 24
    be.set_data("train", rng.integers(0, 256, (n, 8, 8, 3), np.uint8), rng.integers(0, 10, n).astype(np.int64))
    be.begin_epoch(np.arange(n), None, None, 0)
    for s in range(steps):
        be.train_step(s * 12, s * 12 + 12, 0.05, 0.9)
    return be.conv_threads, be.state_dict()


def test_numpy_row_pieces_change_nothing_but_speed(monkeypatch):
    """BatchNorm, ReLU and residual adds run in row pieces over the same lanes: with pieces small
    enough that every lane holds several (and remainders), 1, 2 and 3 threads still give
    bit-identical weights."""
    import numpy as np

    from cifarbench.backends.numpy_backend import arrays

    monkeypatch.setattr(arrays, "ROW_BYTES", 4096)
    runs = {t: _numpy_steps(t) for t in (1, 2, 3)}
    for t in (2, 3):
        for k, v in runs[1][1].items():
            assert np.array_equal(runs[t][1][k], v), (t, k)


def test_numpy_conv_threads_change_nothing_but_speed():
    """The batch's lanes do not depend on the thread count (Workspace.lanes): 1, 2 and 3 threads
    give bit-identical weights, so a run resumed with another thread count continues exactly."""
    import numpy as np

    runs = {t: _numpy_steps(t) for t in (1, 2, 3)}
    assert [runs[t][0] for t in (1, 2, 3)] == [1, 2, 3]
    ref = runs[1][1]
    for t in (2, 3):
        assert runs[t][1].keys() == ref.keys()
        for k, v in ref.items():
            assert np.array_equal(runs[t][1][k], v), (t, k)


@pytest.mark.parametrize("threads,text", [(1, ", 1 thread)"), (2, ", 2 threads)"), (3, ", 3 threads)")])
def test_numpy_backend_names_its_thread_count(threads, text):
    """The run header's backend line (describe -> device_name) says how many threads the engine runs on."""
    from cifarbench.backends.base import TrainOptions
    from cifarbench.backends.numpy_backend import NumpyBackend

    be = NumpyBackend("cpu", TrainOptions(extra={"threads": threads}))
    assert be.describe().endswith(text) and be.conv_threads == threads
