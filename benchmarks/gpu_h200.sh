#!/usr/bin/env bash
# Call 1 of the GPU kit (issue #17): the torch paths on the GPU, side by side with the speed record.
#   bash benchmarks/gpu_h200.sh                         # on the GPU machine, from the repository root
#   SIZE=tiny DEVICE=cpu bash benchmarks/gpu_h200.sh    # the same parts at CPU size (a dry run, here)
# Parts, in priority order, each under its own time budget (benchmarks/gpu_kit.py list --call 1):
#   env, sync (no host sync in train steps), bench-cnn (b64/b512 fp32/bf16), bench-resnet18-eager
#   (b512 bf16), bench-resnet18-default / -reduce-overhead (b1024 compiled), data (decode cifar10-jpeg),
#   speedrun (10 runs after 1 warm-up), airbench (the record's own code, 10 runs), onecycle (resnet18,
#   40 epochs), then, if time is left, bench-resnet18-max-autotune, speedrun-compiled, onecycle-fp32.
# Environment: OUT (default runs/gpu-kit-SIZE-DEVICE), SIZE=full|tiny, DEVICE=cuda|cpu,
# DEADLINE_S (seconds for all parts; default 560: keep it 30-40 s under the call's timeout_s),
# PARTS=a,b (only these). Prepare the carried folders with benchmarks/gpu_prepare.sh; the exact device
# call is in benchmarks/GPU_RUNBOOK.md. Results: $OUT/summary.md, parts-call1.json, raw-call1.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
exec "$PY" benchmarks/gpu_kit.py run --call 1 "$@"
