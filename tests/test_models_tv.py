"""tv:NAME: clear error without torchvision; the small-image adaptation on a torchvision-like model."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest

from cifarbench.errors import UsageError
from cifarbench.models import tv

HAS_TV = importlib.util.find_spec("torchvision") is not None


@pytest.mark.skipif(HAS_TV, reason="torchvision is installed")
def test_missing_torchvision_is_a_usage_error():
    with pytest.raises(UsageError, match=r"tv:resnet18 needs the torchvision extra \(pip install 'cifarbench\[torchvision\]'\)"):
        tv.build_torchvision_model("tv:resnet18", 3, 32, 10)
    with pytest.raises(UsageError, match="torchvision extra"):
        tv.list_torchvision_models()


@pytest.fixture
def fake_torchvision(monkeypatch):
    """A stand-in exposing torchvision's list_models/get_model with an ImageNet-style stem."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Tiny(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2))
            self.fc = nn.Linear(8, num_classes)

        def forward(self, x):
            x = self.layer(self.maxpool(self.conv1(x)))
            return self.fc(x.mean(dim=(2, 3)))

    models = types.ModuleType("torchvision.models")
    models.list_models = lambda module=None: ["tiny"]
    models.get_model = lambda name, weights=None, num_classes=1000: Tiny(num_classes)
    fake = types.ModuleType("torchvision")
    fake.models = models
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return torch


def test_adaptation_replaces_stem_and_keeps_later_pools(fake_torchvision):
    torch = fake_torchvision
    assert tv.list_torchvision_models() == ["tiny"]
    model = tv.build_torchvision_model("tv:tiny", 1, 28, 100)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.in_channels == 1
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert isinstance(model.layer[1], torch.nn.MaxPool2d)  # not in the stem: kept
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 100)
    with pytest.raises(UsageError, match="unknown torchvision model"):
        tv.build_torchvision_model("tv:nope", 3, 32, 10)
