"""Where each data set comes from: official URLs, mirrors, file names and checksums.

Checksums are the ones of the official releases (the same lists torchvision checks). The raw
(uncompressed) MNIST idx md5s were computed from the official .gz files; Fashion-MNIST's raw
files have no published md5, so an uncompressed Fashion-MNIST copy is checked by its idx
header and size only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cifarbench.errors import unknown_name


@dataclass(frozen=True)
class Source:
    """One downloadable data set (CIFAR-100 fine and coarse share one source)."""

    key: str
    kind: str  # "cifar" (python pickles in a tarball) or "idx" (MNIST-style .gz files)
    mirrors: tuple[str, ...]  # base URLs; a file's URL is base + file name
    downloads: tuple[tuple[str, str], ...]  # (file name, md5) fetched from a mirror
    folder: str  # sub-folder of the data dir that holds the official files
    files: tuple[tuple[str, str], ...]  # (official file name, md5) that the parser reads
    alt_folders: tuple[str, ...] = ()  # other layouts found in the wild (torchvision's)
    raw_md5: tuple[tuple[str, str | None], ...] = ()  # idx: md5 of the uncompressed files
    class_names: tuple[str, ...] = ()  # idx sets have no meta file

    def urls(self, mirrors: list[str] | None = None) -> list[str]:
        """Every URL a download of this source tries, mirrors in order."""
        return [base + name for name, _ in self.downloads for base in (mirrors or self.mirrors)]


_CIFAR_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)

CIFAR10 = Source(
    key="cifar10",
    kind="cifar",
    mirrors=_CIFAR_MIRRORS,
    downloads=(("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
    folder="cifar-10-batches-py",
    files=(
        ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
        ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
        ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
        ("data_batch_4", "634d18415352ddfa80567beed471001a"),
        ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
        ("test_batch", "40351d587109b95175f43aff81a1287e"),
        ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
    ),
)

CIFAR100 = Source(
    key="cifar100",
    kind="cifar",
    mirrors=_CIFAR_MIRRORS,
    downloads=(("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
    folder="cifar-100-python",
    files=(
        ("train", "16019d7e3df5f24257cddd939b257f8d"),
        ("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
        ("meta", "7973b15100ade9c7d40fb424638fde48"),
    ),
)

_IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_MNIST_GZ = tuple(
    zip(
        _IDX_NAMES,
        (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
    )
)
_FASHION_GZ = tuple(
    zip(
        _IDX_NAMES,
        (
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ),
    )
)

MNIST = Source(
    key="mnist",
    kind="idx",
    # The original host (yann.lecun.com) often refuses downloads; PyTorch's S3 copy is byte-identical.
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    downloads=_MNIST_GZ,
    folder="mnist",
    files=_MNIST_GZ,  # the .gz files are parsed as they are
    alt_folders=("MNIST/raw",),
    raw_md5=(
        ("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb"),
        ("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624"),
        ("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea"),
        ("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637"),
    ),
    class_names=tuple(str(i) for i in range(10)),
)

FASHION_MNIST = Source(
    key="fashion-mnist",
    kind="idx",
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    downloads=_FASHION_GZ,
    folder="fashion-mnist",
    files=_FASHION_GZ,
    alt_folders=("FashionMNIST/raw",),
    raw_md5=tuple((n[:-3], None) for n in _IDX_NAMES),  # not published
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
)

SOURCES: dict[str, Source] = {s.key: s for s in (CIFAR10, CIFAR100, MNIST, FASHION_MNIST)}

# dataset name -> (source key, label variant); "synthetic" and "npz:PATH" have no source.
VARIANTS: dict[str, tuple[str, str]] = {
    "cifar10": ("cifar10", "labels"),
    "cifar100": ("cifar100", "fine"),
    "cifar100-coarse": ("cifar100", "coarse"),
    "mnist": ("mnist", "labels"),
    "fashion-mnist": ("fashion-mnist", "labels"),
}
EMBEDDED = ("mnist-mini",)  # shipped inside the package (cifarbench/data/embedded.py)
GENERATED = ("synthetic",)
DATASET_NAMES: list[str] = [*VARIANTS, *EMBEDDED, *GENERATED]

_ALIASES = {
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "cifar100-fine": "cifar100",
    "cifar-100-coarse": "cifar100-coarse",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "mnist_mini": "mnist-mini",
    "mini-mnist": "mnist-mini",
}


def canonical_name(name: str) -> str:
    """The dataset's canonical name; ``npz:PATH`` keeps its path as given."""
    stripped = name.strip()
    if stripped.lower().startswith("npz:"):
        return "npz:" + stripped[4:]
    low = stripped.lower()
    low = _ALIASES.get(low, low)
    if low not in DATASET_NAMES:
        raise unknown_name("dataset", name, [*DATASET_NAMES, "npz:PATH"])
    return low


def source_for(name: str) -> tuple[Source, str] | None:
    """(source, label variant) of a canonical name, or None for embedded/generated/npz data."""
    if name in VARIANTS:
        key, variant = VARIANTS[name]
        return SOURCES[key], variant
    return None


def search_dirs(source: Source, data_dir: Path) -> list[Path]:
    """Folders that may hold the source's official files, in order of preference."""
    dirs = [data_dir / source.folder] + [data_dir / alt for alt in source.alt_folders]
    # The user may point --data-dir at the folder itself (e.g. .../cifar-10-batches-py).
    if data_dir.name == source.folder:
        dirs.insert(0, data_dir)
    return dirs


def file_candidates(source: Source, folder: Path, name: str, md5: str) -> list[tuple[Path, str | None]]:
    """Accepted forms of one official file: for idx sets the .gz or the uncompressed file."""
    if source.kind != "idx":
        return [(folder / name, md5)]
    raw = dict(source.raw_md5)
    return [(folder / name, md5), (folder / name[:-3], raw.get(name[:-3]))]


DOWNLOAD_MB = {"cifar10": 163, "cifar100": 161, "mnist": 11, "fashion-mnist": 29}  # MiB of the official downloads


def needs(source: Source) -> str:
    """What the data dir must hold for this source, relative to it (one line)."""
    files = ",".join(name for name, _ in source.files)
    if source.kind == "cifar":
        return f"{source.downloads[0][0]}, or its extracted {source.folder}/"
    return f"{source.folder}/{{{files}}} (.gz or uncompressed)"


def placement(source: Source, data_dir: Path) -> str:
    """Where to put which official files, with the data dir filled in (one line)."""
    if source.kind == "cifar":
        return f"{source.downloads[0][0]} (or its extracted {source.folder}/) in {data_dir}/"
    return f"{', '.join(name for name, _ in source.files)} in {data_dir / source.folder}/"
