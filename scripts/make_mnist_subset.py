#!/usr/bin/env python3
"""Write cifarbench's embedded ``mnist-mini`` subset from the four official MNIST files.

    python scripts/make_mnist_subset.py MNIST_DIR [--output PATH] [--check]

MNIST_DIR holds train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz
and t10k-labels-idx1-ubyte.gz (the official release; their md5s are checked). The default output is
the packaged file, cifarbench/data/mnist-mini.npz. The selection (class-balanced, seeded) and the
byte layout are in cifarbench/data/embedded.py; the result's SHA-256 must equal embedded.SHA256,
and --check exits 1 when it does not (without replacing the file).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cifarbench.data import embedded  # noqa: E402
from cifarbench.data.fetch import md5_file  # noqa: E402
from cifarbench.data.formats import read_idx  # noqa: E402
from cifarbench.data.sources import MNIST  # noqa: E402


def build(mnist_dir: Path, output: Path) -> str:
    """Write the subset to ``output``; return its SHA-256. Raises SystemExit on a bad input file."""
    arrays = {}
    for name, md5 in MNIST.files:
        path = mnist_dir / name
        if not path.is_file():
            raise SystemExit(f"error: {path} not found (need the four official MNIST .gz files in {mnist_dir})")
        if md5_file(path) != md5:
            raise SystemExit(f"error: {path} is not the official file (md5 differs from {md5})")
        arrays[name] = read_idx(path)
    subset = embedded.make_subset(
        arrays["train-images-idx3-ubyte.gz"], arrays["train-labels-idx1-ubyte.gz"],
        arrays["t10k-images-idx3-ubyte.gz"], arrays["t10k-labels-idx1-ubyte.gz"],
    )
    embedded.write_npz(output, subset)
    return embedded.sha256_file(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mnist_dir", type=Path, help="folder with the four official MNIST .gz files")
    parser.add_argument("--output", type=Path, default=embedded.PATH, help="where to write (default: the packaged file)")
    parser.add_argument("--check", action="store_true", help="build into a temp file and compare with embedded.SHA256")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            digest = build(args.mnist_dir, Path(tmp) / "mnist-mini.npz")
    else:
        digest = build(args.mnist_dir, args.output)
        print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes)")
    print(f"sha256 {digest}")
    if digest != embedded.SHA256:
        print(f"differs from embedded.SHA256 ({embedded.SHA256})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
