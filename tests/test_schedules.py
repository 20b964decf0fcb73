"""The engine's schedules: OneCycle equals torch's OneCycleLR step for step; the others by formula."""

import math

import pytest

from cifarbench.config import build_config
from cifarbench.engine.schedules import OneCycle, make_schedule


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
@pytest.mark.parametrize("total,pct", [(200, 0.3), (97, 0.25), (10, 0.5)])
def test_onecycle_matches_torch(opt, total, pct):
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    if opt == "sgd":
        optimizer = torch.optim.SGD([p], lr=0.001, momentum=0.9)
    else:
        optimizer = torch.optim.AdamW([p], lr=0.001)
    sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=total, pct_start=pct)
    ours = OneCycle(max_lr=0.1, total_steps=total, pct_start=pct)
    for step in range(total):
        group = optimizer.param_groups[0]
        want_m = group["momentum"] if opt == "sgd" else group["betas"][0]
        lr, mom = ours(step)
        assert lr == pytest.approx(group["lr"], rel=1e-12, abs=1e-15)
        assert mom == pytest.approx(want_m, rel=1e-12)
        optimizer.step()
        sched.step()


@pytest.mark.parametrize("opt,extra", [("sgd", {"momentum": 0.9}), ("adam", {}), ("adamw", {"betas": (0.9, 0.99)})])
def test_onecycle_run_config_matches_torch_whole_run(opt, extra):
    """A run config's onecycle, every step of a whole run, against OneCycleLR driving the optimizer
    the user configured: torch replaces SGD's momentum / Adam's beta1 with max_momentum (0.95)."""
    torch = pytest.importorskip("torch")
    cfg = build_config(None, {"opt": opt, "sched": "onecycle", "lr": 0.05, "epochs": 3, **extra})
    steps_per_epoch = 41
    ours = make_schedule(cfg, steps_per_epoch)
    p = torch.nn.Parameter(torch.zeros(1))
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[opt]
    kwargs = {"momentum": cfg.momentum} if opt == "sgd" else {"betas": tuple(cfg.betas)}
    optimizer = cls([p], lr=cfg.lr, **kwargs)
    sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, epochs=cfg.epochs,
                                                steps_per_epoch=steps_per_epoch, pct_start=cfg.pct_start)
    seen = set()
    for step in range(cfg.epochs * steps_per_epoch):
        group = optimizer.param_groups[0]
        want_m = group["momentum"] if opt == "sgd" else group["betas"][0]
        lr, mom = ours(step)
        assert lr == pytest.approx(group["lr"], rel=1e-12, abs=1e-15)
        assert mom == pytest.approx(want_m, rel=1e-12)
        seen.add(round(mom, 6))
        optimizer.step()
        sched.step()
    assert max(seen) == pytest.approx(0.95) and min(seen) == pytest.approx(0.85)


def test_onecycle_recipe_numbers():
    """The seed recipe: 40 epochs x 782 steps starts at 0.004, peaks at 0.1, ends at 4e-7."""
    cfg = build_config("resnet18-onecycle")
    sched = make_schedule(cfg, 782)
    total = 40 * 782
    assert sched(0) == (pytest.approx(0.004), pytest.approx(0.95))
    peak = max(range(total), key=lambda s: sched(s)[0])
    assert peak == 9383
    assert sched(peak)[0] == pytest.approx(0.1)
    assert sched(peak)[1] == pytest.approx(0.85)
    assert sched(total - 1)[0] == pytest.approx(4e-7)
    assert sched(total - 1)[1] == pytest.approx(0.95)


def test_warmup_then_cosine():
    cfg = build_config(None, {"sched": "cosine", "lr": 1.0, "epochs": 10, "warmup_epochs": 2, "min_lr": 0.1, "opt": "sgd"})
    s = make_schedule(cfg, 10)
    assert s(0)[0] == 0.0
    assert s(10)[0] == pytest.approx(0.5)
    assert s(20)[0] == pytest.approx(1.0)
    mid = 20 + 40
    assert s(mid)[0] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 0.5)) / 2)
    assert s(99)[0] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 79 / 80)) / 2)
    assert s(5)[1] == 0.9


def test_step_and_constant():
    cfg = build_config(None, {"sched": "step", "lr": 1.0, "epochs": 6, "step_epochs": [2, 4], "step_gamma": 0.5})
    s = make_schedule(cfg, 3)
    assert [s(e * 3)[0] for e in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    const = make_schedule(build_config(None, {"lr": 0.02, "opt": "adam", "betas": (0.8, 0.99)}), 5)
    assert const(0) == (0.02, 0.8) and const(123) == (0.02, 0.8)
