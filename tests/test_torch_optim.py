"""The torch backend's CPU optimizer: torch.optim's single-tensor SGD/Adam/AdamW steps without
torch.optim, so a CPU run does not import torch._dynamo (about 0.8 s of start-up)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cifarbench.backends.base import OptimConfig

torch = pytest.importorskip("torch")
from cifarbench.backends.torch_backend.optim import (  # noqa: E402
    EagerOptimizer,
    _groups,
    export_state,
    import_state,
    make_optimizer,
    set_hyper,
)

NAMES = ["conv.weight", "bn.bias", "fc.weight"]
SHAPES = [(4, 3, 3, 3), (4,), (10, 8)]


def _reference(params, opt: OptimConfig):
    """torch.optim itself, on the path it takes for CPU tensors (no foreach, no fused)."""
    groups = _groups(params, NAMES, opt)
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=opt.momentum, nesterov=opt.nesterov,
                               weight_decay=opt.weight_decay, foreach=False)
    cls = torch.optim.Adam if opt.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=0.0, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay, foreach=False)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("scales", [(), (("bn.bias", 2.0, 0.0), ("fc.weight", 0.5, 3.0))])
def test_cpu_optimizer_steps_bit_for_bit_as_torch_optim(name, scales):
    """Six steps with lr and momentum/beta1 changing every step (as the schedules do), weight decay,
    nesterov, per-group lr/wd factors: weights and every state slot equal torch.optim's bit for bit;
    the state round-trips through export_state/import_state and keeps stepping identically."""
    opt = OptimConfig(name, momentum=0.9, nesterov=True, weight_decay=5e-4 if name == "sgd" else 5e-2, scales=scales)
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) for s in SHAPES]
    ours_p = [torch.nn.Parameter(t.clone()) for t in init]
    ref_p = [torch.nn.Parameter(t.clone()) for t in init]
    ours = make_optimizer(ours_p, opt, torch.device("cpu"), names=NAMES)
    ref = _reference(ref_p, opt)
    assert isinstance(ours, EagerOptimizer)
    for t in range(6):
        if t == 3:  # a checkpoint mid-run: state out, a fresh optimizer, state back in
            slots, steps = export_state(ours, name, dict(zip(ours_p, NAMES)), t)
            ours = make_optimizer(ours_p, opt, torch.device("cpu"), names=NAMES)
            import_state(ours, name, dict(zip(NAMES, ours_p)), slots, steps)
        grads = [torch.randn(s, generator=gen) for s in SHAPES]
        lr, mom = 0.1 * (t + 1) / 6, 0.95 - 0.02 * t
        for o, ps in ((ours, ours_p), (ref, ref_p)):
            o.zero_grad(set_to_none=True)
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            set_hyper(o, name, lr, mom, t)
            o.step()
        for a, b in zip(ours_p, ref_p):
            assert torch.equal(a, b), (name, t)
    ours_slots, ours_steps = export_state(ours, name, dict(zip(ours_p, NAMES)), 6)
    ref_slots, ref_steps = export_state(ref, name, dict(zip(ref_p, NAMES)), 6)
    assert ours_steps == ref_steps == 6 and ours_slots.keys() == ref_slots.keys() and ours_slots
    for k, v in ref_slots.items():
        assert (ours_slots[k] == v).all(), k


def test_cpu_training_does_not_import_dynamo():
    """A CPU train step of the torch backend leaves torch._dynamo unimported (torch.optim would
    import it at construction)."""
    code = (
        "import sys, numpy as np\n"
        "from cifarbench.backends.base import OptimConfig, TrainOptions\n"
        "from cifarbench.backends.torch_backend import TorchBackend\n"
        "from cifarbench.models import create_spec, init_params\n"
        "b = TorchBackend('cpu', TrainOptions(mean=(0.5,), std=(0.25,)))\n"
        "spec = create_spec('lenet', 1, 28, 10); b.build(spec, init_params(spec, 0))\n"
        "b.configure_optimizer(OptimConfig('adamw', weight_decay=0.01))\n"
        "rng = np.random.default_rng(0)\n"
        "b.set_data('train', rng.integers(0, 256, (8, 28, 28, 1), np.uint8), rng.integers(0, 10, 8))\n"
        "b.begin_epoch(np.arange(8), None, None, 0); b.train_step(0, 8, 1e-3, 0.9); b.synchronize()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
