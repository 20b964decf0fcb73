#!/usr/bin/env bash
# The torch backend's CUDA fast path, measured in one call (issue #6): the step benchmarks and the
# resnet18-onecycle recipe on cifar10-jpeg, with everything needed to read the numbers kept small.
#
# On the machine with the GPU, from the repository root:
#     bash benchmarks/gpu_fastpath.sh                 # PARTS="check bench train" by default
# From a session here, with the device tool (data and tool travel in the ignored .gpu/ folder):
#     mkdir -p .gpu && cp ../shared/data/cifar10-jpeg.npz ../shared/tools/cifar10_jpeg.py .gpu/
#     run(command="bash benchmarks/gpu_fastpath.sh", carry=[".gpu", ".whl"], timeout_s=600)
# The device image lacks pydantic and platformdirs: fetch their wheels into .whl/ first (see
# /work/.library/device/README.md; pydantic, pydantic-core, annotated-types, typing-inspection,
# platformdirs); this script installs whatever .whl/ holds into /tmp/site.
#
# Results go to $OUT (default runs/gpu-fastpath), at most 8 small files so that all come back:
#   checks.txt (GPU, versions, the no-host-sync check), bench-*.json (cifarbench bench --json),
#   train-resnet18-onecycle.json (run summary) and its metrics.jsonl, log.txt (all progress).
# SIZE=tiny runs the same commands at CPU size (DEVICE=cpu) to check them anywhere; compile modes
# are then left out (inductor needs minutes per graph on a small CPU) unless TINY_COMPILE=1.
# Each part prints its wall time; a full run is meant to fit one 10-minute call (max-autotune's
# warm-up is the long pole: split with PARTS="check bench" then PARTS=train if it does not).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/gpu-fastpath}
SIZE=${SIZE:-full}
DEVICE=${DEVICE:-cuda}
PARTS=${PARTS:-check bench train}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG="$OUT/log.txt"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

cb() { $PY -m cifarbench "$@"; }
part() { echo "=== $* ($(date +%T))" | tee -a "$LOG"; }

if [ "$SIZE" = tiny ]; then
    BIG=32; MID=16; SMALL=8; WIN="--warmup-steps 1 --steps 2 --repeats 1 --eval-batch-size 16"
    AUTOTUNE=""; OVERHEAD=""; EPOCHS="--epochs 1"; DATA_LIMIT=256
    LOW=${TINY_LOW:-fp32}; EAGER=fp32  # bf16 is emulated (very slow) on CPUs without AVX512-BF16/AMX
    if [ "${TINY_COMPILE:-0}" = 1 ]; then AUTOTUNE="--compile-mode max-autotune"; OVERHEAD="--compile-mode reduce-overhead"; fi
else
    BIG=1024; MID=512; SMALL=64; WIN="--warmup-steps 10 --steps 50 --repeats 5 --eval-batch-size 2000"
    AUTOTUNE="--compile-mode max-autotune"; OVERHEAD="--compile-mode reduce-overhead"; EPOCHS=""; DATA_LIMIT=0
    LOW=bf16; EAGER=fp32,bf16
fi

# ----- check: the machine, the versions, and no host sync inside training steps -------------------------------
if [[ " $PARTS " == *" check "* ]]; then
    part check
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
        $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
        $PY benchmarks/gpu_sync_check.py --device "$DEVICE"
    } 2>>"$LOG" | tee "$OUT/checks.txt"
fi

# ----- bench: synthetic data on the device, warm-up timed apart, median of 5 windows ---------------------------
if [[ " $PARTS " == *" bench "* ]]; then
    COMMON="--synthetic --backend torch --device $DEVICE $WIN --opt sgd --lr 0.01"
    part "bench resnet18 $LOW channels_last $AUTOTUNE batch $BIG"
    SECONDS=0
    cb bench $COMMON -m resnet18 --precision "$LOW" -b "$BIG" $AUTOTUNE -o runs/gpu-bench-resnet18-compiled --json \
        >"$OUT/bench-resnet18-compiled.json" 2>>"$LOG"
    echo "  ${SECONDS}s" | tee -a "$LOG"
    part "bench resnet18 eager $EAGER batch $MID"
    SECONDS=0
    cb bench $COMMON -m resnet18 --precision "$EAGER" -b "$MID" --no-compile -o runs/gpu-bench-resnet18-eager --json \
        >"$OUT/bench-resnet18-eager.json" 2>>"$LOG"
    echo "  ${SECONDS}s" | tee -a "$LOG"
    part "bench cnn fp32 batch $SMALL,$MID (eager, and $OVERHEAD)"
    SECONDS=0
    cb bench $COMMON -m cnn --precision fp32 -b "$SMALL,$MID" --no-compile -o runs/gpu-bench-cnn --json \
        >"$OUT/bench-cnn.json" 2>>"$LOG"
    if [ -n "$OVERHEAD" ]; then
        cb bench $COMMON -m cnn --precision fp32 -b "$SMALL,$MID" $OVERHEAD -o runs/gpu-bench-cnn-graphs --json \
            >"$OUT/bench-cnn-graphs.json" 2>>"$LOG"
    fi
    echo "  ${SECONDS}s" | tee -a "$LOG"
    $PY - "$OUT"/bench-*.json <<'EOF' | tee -a "$LOG"
import json, sys
for path in sys.argv[1:]:
    res = json.load(open(path))
    cfg = res["config"]
    mode = cfg.get("compile_mode", "default") if cfg.get("compile") or cfg.get("compile_mode", "default") != "default" else "off"
    for r in res["rows"]:
        ips = r["train_ips"]
        print(f"{r['model']:9s} {r['precision']:5s} batch {r['batch_size']:5d} compile={mode}: "
              f"{ips['median']:,.0f} images/s (min {ips['min']:,.0f}, max {ips['max']:,.0f}); warm-up {r['warmup_s']:.1f} s")
    for s in res["skipped"]:
        print("not run:", s)
EOF
fi

# ----- train: resnet18-onecycle (40 epochs, batch 64) on cifar10-jpeg, bf16 + CUDA graphs ---------------------
if [[ " $PARTS " == *" train "* ]]; then
    part "train resnet18-onecycle on cifar10-jpeg"
    DATA=/tmp/cifar10-jpeg
    TOOL=.gpu/cifar10_jpeg.py; [ -f "$TOOL" ] || TOOL=../shared/tools/cifar10_jpeg.py
    SRC=.gpu/cifar10-jpeg.npz; [ -f "$SRC" ] || SRC=../shared/data/cifar10-jpeg.npz
    if [ ! -f "$DATA/cifar10-jpeg-decoded.npz" ]; then
        mkdir -p "$DATA"
        # the tool reads ../data/cifar10-jpeg.npz beside itself: give it that layout in /tmp
        mkdir -p /tmp/c10tool/tools /tmp/c10tool/data
        cp "$TOOL" /tmp/c10tool/tools/ && ln -sf "$(realpath "$SRC")" /tmp/c10tool/data/cifar10-jpeg.npz
        $PY /tmp/c10tool/tools/cifar10_jpeg.py "$DATA" --npz 2>>"$LOG"
    fi
    NPZ="$DATA/cifar10-jpeg-decoded.npz"
    if [ "$DATA_LIMIT" -gt 0 ]; then  # tiny: the first images of each split, same format
        $PY -c "
import numpy as np, sys
d = np.load('$NPZ'); n = $DATA_LIMIT
np.savez('$DATA/tiny.npz', x_train=d['x_train'][:n], y_train=d['y_train'][:n], x_test=d['x_test'][:n // 4],
         y_test=d['y_test'][:n // 4], class_names=d['class_names'])"
        NPZ="$DATA/tiny.npz"
    fi
    SECONDS=0
    cb train -c resnet18-onecycle --dataset "npz:$NPZ" --backend torch --device "$DEVICE" --precision "$LOW" $OVERHEAD \
        $EPOCHS -o runs/gpu-train-resnet18-onecycle --json >"$OUT/train-resnet18-onecycle.json" 2>>"$LOG"
    echo "  ${SECONDS}s wall for the whole command (imports, data, warm-up, epochs, evaluation)" | tee -a "$LOG"
    cp runs/gpu-train-resnet18-onecycle/metrics.jsonl "$OUT/train-resnet18-onecycle.metrics.jsonl"
    $PY -c "
import json; s = json.load(open('$OUT/train-resnet18-onecycle.json'))
print(f\"test accuracy {s['test_accuracy']:.4f}; total {s['total_time_s']:.1f} s (warm-up {s['warmup_s']:.1f} s), \"
      f\"{s['images_per_s']:,.0f} images/s median epoch\")" | tee -a "$LOG"
fi
echo "done: $(ls "$OUT" | tr '\n' ' ')"
