#!/usr/bin/env bash
# Fill the ignored folders the GPU calls carry, and check that each call's upload fits the 64 MiB limit.
#   bash benchmarks/gpu_prepare.sh 1     # .whl/ (pydantic & co.) and .gpu/ (cifar10-jpeg.npz, anchors/)
#   bash benchmarks/gpu_prepare.sh 2     # .whl/ and .gpu2/ (MLX CUDA sm_90 bundle, a 10k/2k jpeg subset)
# SHARED: the shared folder (default ../shared beside the checkout). Nothing here is committed: .whl/, .gpu/
# and .gpu2/ are in .gitignore. Prints the bytes that travel (git's tracked and untracked-not-ignored files
# plus the carried folders) against the limit, and the carry list for benchmarks/GPU_RUNBOOK.md.
set -euo pipefail
cd "$(dirname "$0")/.."
call=${1:?usage: gpu_prepare.sh 1|2}
SHARED=${SHARED:-../shared}
[ -d "$SHARED/gpu-kit" ] || { echo "no $SHARED/gpu-kit: set SHARED=/path/to/shared" >&2; exit 1; }
PY=${PYTHON:-python3}
mkdir -p .whl && cp -f "$SHARED"/gpu-kit/wheels/*.whl .whl/
# typer too (pure Python, ~50 kB): the device's own typer has never run this CLI; this one is the tested version
ls .whl/typer-*.whl >/dev/null 2>&1 || "$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl \
    "typer==${TYPER_VERSION:-0.29.2}"
if [ "$call" = 1 ]; then
    mkdir -p .gpu
    cp -f "$SHARED/data/cifar10-jpeg.npz" .gpu/
    rm -rf .gpu/anchors && cp -r "$SHARED/anchors" .gpu/anchors && chmod -R u+w .gpu/anchors
    carry=(.whl .gpu)
else
    mkdir -p .gpu2
    if ! ls .gpu2/mlx-*.whl >/dev/null 2>&1 || ! xz -t .gpu2/mlx_cuda_sm90.tar.xz 2>/dev/null; then
        bash "$SHARED/tools/mlx_cuda_wheels.sh" .gpu2   # downloads mlx-cuda-13 (~86 MiB) from PyPI, keeps sm_90
    fi
    # the first 10,000 training and 2,000 test images, still as JPEG bytes (the format gpu_kit.py decodes)
    "$PY" - "$SHARED/data/cifar10-jpeg.npz" .gpu2/cifar10-jpeg-10k.npz <<'PY'
import sys, numpy as np
z = np.load(sys.argv[1]); out = {}
for split, n in (("train", 10000), ("test", 2000)):
    off = z[f"{split}_offsets"][: n + 1]
    out[f"{split}_jpeg"], out[f"{split}_offsets"] = z[f"{split}_jpeg"][: off[-1]], off
    out[f"y_{split}"] = z[f"y_{split}"][:n]
np.savez(sys.argv[2], class_names=z["class_names"], **out)
PY
    carry=(.whl .gpu2)
fi
for d in "${carry[@]}"; do
    git check-ignore -q "$d" || { echo "$d is not ignored by git: it must never be committed" >&2; exit 1; }
done
tree=$(git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
carried=$(du -sb "${carry[@]}" | awk '{s+=$1} END {print s+0}')
limit=$((64 * 1024 * 1024))
total=$((tree + carried))
awk -v c="$call" -v t="$total" -v a="$tree" -v b="$carried" -v l="$limit" -v k="${carry[*]}" 'BEGIN {
    printf "call %s travels %d bytes (%.1f MiB): tree %d + carried %d (%s); limit %d (64 MiB), headroom %.1f MiB\n",
        c, t, t / 1048576, a, b, k, l, (l - t) / 1048576 }'
find "${carry[@]}" -type f -printf "%10s  %p\n" | sort -k2
[ "$total" -lt "$limit" ] || { echo "over the 64 MiB upload limit" >&2; exit 1; }
printf 'carry=["%s"]\n' "$(printf '%s", "' "${carry[@]}" | sed 's/", "$//')"
