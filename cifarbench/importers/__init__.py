"""`cifarbench import`: checkpoints of the original projects -> cifarbench run directories.

``convert`` reads a foreign file (safely, see ``readers``), maps names and layouts to the
canonical ones (``layouts``), picks the model and data set (given, or inferred from the file),
checks the result against the model spec, and records the input normalisation the original
used, so that ``cifarbench test RUN_DIR`` evaluates the weights exactly as the original did.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cifarbench.errors import CheckpointError, UsageError, unknown_name
from cifarbench.importers import layouts
from cifarbench.importers.readers import read_any

SOURCES = ("menzhse", "mike7seven", "definfo")
# The file formats each project wrote; checked before a file is opened (a .pth named --from definfo is never unpickled).
SOURCE_FORMATS = {"menzhse": ("npz", "safetensors", "pth"), "mike7seven": ("npz", "safetensors", "pth"),
                  "definfo": ("pkl",)}

# The input normalisation each original applied (mean, std per channel, in [0, 1] pixel units).
UNIT = ((0.0,), (1.0,))  # x / 255
HALF = ((0.5,), (0.5,))  # (x / 255 - 0.5) / 0.5
NORMALISATION = {"menzhse": UNIT, "mike7seven": HALF, "definfo": UNIT}

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle "
    "caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant "
    "flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man "
    "maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor "
    "train trout tulip turtle wardrobe whale willow_tree wolf woman worm".split()
)
# name -> (channels, image size, class names)
DATASETS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "cifar10": (3, 32, CIFAR10_CLASSES),
    "cifar100": (3, 32, CIFAR100_CLASSES),
    "mnist": (1, 28, tuple(str(i) for i in range(10))),
}


@dataclass
class Converted:
    state: dict[str, np.ndarray]
    model: str
    dataset: str
    source: str
    framework: str  # what wrote the file: mlx, torch or numpy
    mean: tuple[float, ...]
    std: tuple[float, ...]
    notes: list[str] = field(default_factory=list)  # caveats for the user


# ---------------------------------------------------------------- model and data set choice

def _guess_model(source: str, framework: str, state: dict[str, np.ndarray]) -> str:
    """The model a converted state belongs to, from its canonical names and shapes."""
    if source == "menzhse":
        if "layer1.0.conv1.weight" in state:
            raise CheckpointError(
                "this is a menzHSE --finetune checkpoint: an ImageNet torchvision ResNet (7x7 stem, 224 px input), "
                "not one of cifarbench's CIFAR-stem models", hint="train the CIFAR variant instead (--model resnet50)"
            )
        return "cnn" if framework == "mlx" else "cnn-leaky"  # MLX used ReLU, the torch sibling leaky ReLU
    if "layer1.0.conv1.weight" in state:
        return "resnet18"
    if "skip2.weight" in state:
        return "cnn"
    conv1 = state.get("conv1.weight")
    if conv1 is not None and "fc3.weight" in state:
        return "lenet" if conv1.shape[0] == 6 else "lenet-large"
    raise CheckpointError("cannot tell which model this checkpoint holds", hint="pass --model")


def _guess_dataset(path: Path, in_channels: int, num_classes: int) -> str:
    name = path.name.lower().replace("_", "-")
    if "cifar-100" in name or "cifar100" in name:
        return "cifar100"
    if in_channels == 1:
        return "mnist"
    if num_classes == 100:
        return "cifar100"
    return "cifar10"


def _shape_facts(model: str, state: dict[str, np.ndarray]) -> tuple[int, int]:
    """(in_channels, num_classes) read off the weights, using the spec's first conv and last linear."""
    from cifarbench.models import create_spec
    from cifarbench.models.spec import Conv, Linear

    probe = create_spec(model, 3, 32, 10)
    layers = list(probe.param_layers())
    first = next(l for l in layers if isinstance(l, Conv))
    last = [l for l in layers if isinstance(l, Linear)][-1]
    for key in (f"{first.name}.weight", f"{last.name}.weight"):
        if key not in state:
            known = {**probe.param_shapes(), **probe.buffer_shapes()}
            unknown = sorted(k for k in state if k not in known)
            listed = ", ".join(unknown[:4]) + (", ..." if len(unknown) > 4 else "")
            detail = f"; {len(unknown)} of its {len(state)} tensor names are not the model's: {listed}" if unknown else ""
            raise CheckpointError(f"checkpoint does not match model '{model}' (missing {key}{detail})")
    return int(state[f"{first.name}.weight"].shape[1]), int(state[f"{last.name}.weight"].shape[0])


# ---------------------------------------------------------------- conversion

def _canonical(source: str, fmt: str, raw: Any) -> tuple[dict[str, np.ndarray], str, str | None, list[str]]:
    """Names mapped to ours; conv layout still the file's. Returns (state, framework, model if known, notes)."""
    notes: list[str] = []
    if source == "definfo":
        kind = layouts.definfo_kind(raw)
        if kind == "resnet32-definfo":
            notes.append(
                "definfo's ResNet32 normalised over the wrong axis and kept no BN running statistics; "
                "running mean/var are set to 0/1, so accuracy will differ until BN statistics are re-estimated "
                "(e.g. fine-tune briefly)"
            )
            return layouts.definfo_resnet32(raw), "numpy", kind, notes
        return layouts.definfo_simplecnn(raw), "numpy", kind, notes
    if fmt in ("npz", "safetensors"):  # MLX save_weights writes either; the same names and layout
        state = layouts.rename_mike7seven_mlx(raw) if source == "mike7seven" else layouts.rename_menzhse(raw)
        return state, "mlx", None, notes
    state = layouts.drop_torch_buffers(layouts.unwrap_state_dict(raw))
    if source == "menzhse":
        state = layouts.rename_menzhse(state)
    return state, "torch", None, notes


def convert(path: str | Path, source: str, model: str | None = None, dataset: str | None = None,
            trust_pickle: bool = False) -> Converted:
    from cifarbench.checkpoint import check_compatible
    from cifarbench.models import create_spec, model_names

    path = Path(path)
    source = source.lower()
    if source not in SOURCES:
        raise unknown_name("source", source, SOURCES)
    if model is not None and model not in model_names():
        raise unknown_name("model", model, model_names())
    fmt, raw = read_any(path, trust_pickle, SOURCE_FORMATS[source], source)
    state, framework, kind, notes = _canonical(source, fmt, raw)
    model = model or kind or _guess_model(source, framework, state)
    if framework == "mlx":
        state = layouts.mlx_to_torch_layout(state)
    in_channels, num_classes = _shape_facts(model, state)
    dataset = _check_dataset(dataset or _guess_dataset(path, in_channels, num_classes), in_channels, num_classes)
    channels, size, _ = DATASETS[dataset]
    spec = create_spec(model, channels, size, num_classes)
    if framework == "mlx":
        state = layouts.hwc_to_chw_columns(spec, state)
    filled = layouts.add_identity_bn_stats(spec, state)
    if filled and source != "definfo":
        notes.append(f"{len(filled)} BN layers had no running statistics; set to mean 0, var 1")
    check_compatible(state, spec, f"{path.name} (from {source})")
    mean, std = NORMALISATION[source]
    return Converted(state, model, dataset, source, framework, mean * channels, std * channels, notes)


def _check_dataset(dataset: str, in_channels: int, num_classes: int) -> str:
    ds = dataset.lower().replace("-", "").replace("_", "")
    if ds not in DATASETS:
        raise unknown_name("dataset", dataset, list(DATASETS))
    channels, _, classes = DATASETS[ds]
    if (channels, len(classes)) != (in_channels, num_classes):
        raise CheckpointError(
            f"the checkpoint has {in_channels} input channels and {num_classes} classes; "
            f"{ds} has {channels} and {len(classes)}"
        )
    return ds


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_output(conv: Converted, path: Path) -> Path:
    return Path("runs") / f"{conv.model}-{conv.dataset}-{conv.source}-{path.stem}"


def import_checkpoint(path: str | Path, source: str, model: str | None = None, dataset: str | None = None,
                      output: str | Path | None = None, trust_pickle: bool = False) -> tuple[Path, Converted]:
    """Convert and write ``model.safetensors`` + ``checkpoint.json``; returns (run_dir, conversion)."""
    from cifarbench.checkpoint import model_metadata, save_checkpoint

    path = Path(path)
    conv = convert(path, source, model, dataset, trust_pickle)
    run_dir = Path(output) if output else default_output(conv, path)
    if (run_dir / "model.safetensors").exists():
        raise UsageError(f"{run_dir} already holds a checkpoint", hint="choose another --output")
    channels, size, classes = DATASETS[conv.dataset]
    meta = model_metadata(conv.model, conv.dataset, len(classes), channels, size, list(classes),
                          conv.mean, conv.std, conv.framework)
    sidecar = {
        "imported_from": conv.source, "source_file": str(path.resolve()), "source_sha256": _sha256(path),
        "source_framework": conv.framework, "import_notes": conv.notes,
    }
    save_checkpoint(run_dir, conv.state, meta, sidecar=sidecar)
    return run_dir, conv
