"""The CUDA fast-path logic of the torch backend, exercised on the CPU: compile modes, the timed
warm-up of `train`, no host synchronisation inside an epoch, and fused optimizers on CUDA."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest

from cifarbench.backends.base import OptimConfig, TrainOptions
from cifarbench.config import build_config
from cifarbench.engine.reporter import RecordingReporter
from cifarbench.engine.trainer import Trainer, train_options
from cifarbench.errors import UsageError
from cifarbench.models import create_spec, init_params

torch = pytest.importorskip("torch")
from cifarbench.backends.torch_backend import TorchBackend  # noqa: E402
from cifarbench.backends.torch_backend.optim import make_optimizer  # noqa: E402


# ----- compile_mode -------------------------------------------------------------------------
def test_compile_mode_implies_compile_and_validates():
    cfg = build_config(None, {"compile_mode": "max-autotune"})
    extra = train_options(cfg, (0.5,) * 3, (0.25,) * 3).extra
    assert extra["compile"] is True and extra["compile_mode"] == "max-autotune"
    assert "compile_mode" not in train_options(build_config(None, {}), (0.5,), (0.25,)).extra
    with pytest.raises(UsageError, match="needs compile"):
        build_config(None, {"compile_mode": "reduce-overhead", "compile": False})
    with pytest.raises(UsageError, match="--compile-mode: "):  # named as the flag is typed
        build_config(None, {"compile_mode": "fastest"})
    with pytest.raises(UsageError, match="unknown compile mode"):
        TorchBackend("cpu", TrainOptions(extra={"compile": True, "compile_mode": "fastest"}))


def test_compile_mode_flags():
    from typer.testing import CliRunner

    from cifarbench.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["train", "--compile-mode", "reduce-overhead", "--print-config"])
    assert res.exit_code == 0 and "compile_mode: reduce-overhead" in res.stdout
    res = runner.invoke(app, ["bench", "--synthetic", "--compile-mode", "max-autotune", "--no-compile"])
    assert res.exit_code == 2 and "needs compile" in res.output


def test_compile_mode_reaches_torch_compile(monkeypatch):
    """The mode is handed to torch.compile (recorded here: inductor itself needs minutes on 2 cores)."""
    seen = []

    def fake_compile(module, **kw):
        seen.append(kw)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    spec = create_spec("lenet", 3, 32, 10)
    for mode in ("default", "reduce-overhead", "max-autotune"):
        b = TorchBackend("cpu", TrainOptions(extra={"compile": True, "compile_mode": mode}))
        b.build(spec, init_params(spec, 0))
        assert not b._cudagraphs  # CUDA graphs only exist on cuda
    assert [kw["mode"] for kw in seen] == ["default", "reduce-overhead", "max-autotune"]


def test_fused_optimizers_on_cuda():
    """On CUDA the optimizers are fused: GradScaler then steps them without reading found_inf on the host."""
    params = [torch.nn.Parameter(torch.randn(3))]
    for name in ("sgd", "adam", "adamw"):
        opt = make_optimizer(params, OptimConfig(name), torch.device("cuda"))
        assert opt.defaults["fused"] and opt._step_supports_amp_scaling
        assert not getattr(make_optimizer(params, OptimConfig(name), torch.device("cpu")), "defaults", {}).get("fused")


# ----- no host sync inside an epoch ---------------------------------------------------------
SYNCING = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_train_step_never_reads_back_to_the_host(monkeypatch, opt):
    """Any tensor -> Python value (.item(), bool(t), .cpu(), ...) in a step would stall a GPU every step."""
    spec = create_spec("cnn", 3, 16, 4)  # BatchNorm, dropout, residual
    b = TorchBackend("cpu", TrainOptions(mean=(0.5,) * 3, std=(0.25,) * 3, label_smoothing=0.1, crop_pad=2,
                                         flip=True))
    b.build(spec, init_params(spec, 0))
    b.configure_optimizer(OptimConfig(opt, weight_decay=5e-4))
    rng = np.random.default_rng(0)
    b.set_data("train", rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8), rng.integers(0, 4, 40))
    b.begin_epoch(rng.permutation(40), rng.integers(0, 5, (40, 2)), rng.random(40) < 0.5, 1)
    calls = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def is_step_counter(t) -> bool:  # Adam's step count: a CPU tensor torch reads on the host by design
        return any(t is st.get("step") for st in b._optimizer.state.values())

    def spy(name):
        def wrapper(self, *a, **kw):
            if not is_step_counter(self):
                calls.append(f"{name} on {tuple(self.shape)}")
            return originals[name](self, *a, **kw)
        return wrapper

    for name in SYNCING:
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    for i in range(3):
        b.train_step(i * 12, min((i + 1) * 12, 40), 0.05, 0.9)
    monkeypatch.undo()
    assert calls == [], f"host reads inside train_step: {calls}"
    stats = b.end_epoch()
    assert stats.count == 36 and np.isfinite(stats.loss_sum)


# ----- warm-up timed apart ------------------------------------------------------------------
def test_train_times_warmup_apart(tiny_npz, tmp_path, monkeypatch):
    """A step of a new batch size (compile, autotune) is timed alone and kept out of images/s."""
    real_step = TorchBackend.train_step
    seen: set[int] = set()

    def slow_first(self, start, stop, lr, momentum):  # a stand-in for compilation: 0.4 s once per shape
        if stop - start not in seen:
            seen.add(stop - start)
            time.sleep(0.4)
        real_step(self, start, stop, lr, momentum)

    monkeypatch.setattr(TorchBackend, "train_step", slow_first)
    cfg = build_config(None, {"model": "lenet", "dataset": tiny_npz, "epochs": 2, "batch_size": 40,
                              "backend": "torch", "device": "cpu", "opt": "sgd", "lr": 0.01})
    rep = RecordingReporter()
    summary = Trainer(cfg, rep, run_dir=tmp_path / "run").run()
    first, second = rep.records
    assert len(seen) == 2  # 96 images in batches of 40: sizes 40 and 16
    assert first.warmup_s >= 0.8 and second.warmup_s == 0.0
    assert summary.warmup_s == pytest.approx(first.warmup_s)
    assert first.train_time_s >= 0.8
    # images/s of epoch 1 counts only its steady step (the second batch of 40) over (train time - warm-up):
    # exact accounting, not a speed ratio, so a loaded machine cannot fail it
    assert first.images_per_s == pytest.approx(40 / (first.train_time_s - first.warmup_s), rel=1e-6)
    assert second.images_per_s == pytest.approx(96 / second.train_time_s, rel=1e-6)
    assert any("warm-up" in m for m in rep.messages)
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["warmup_s"]) == pytest.approx(first.warmup_s)
