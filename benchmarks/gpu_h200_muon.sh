#!/usr/bin/env bash
# Call 3 of the GPU kit (issue #21): speedrun-muon side by side with the speed record, and Muon's share of a step.
#   bash benchmarks/gpu_h200_muon.sh                         # on the GPU machine, from the repository root
#   SIZE=tiny DEVICE=cpu bash benchmarks/gpu_h200_muon.sh    # the same parts at CPU size (a dry run, here)
# Parts (python benchmarks/gpu_kit.py list --call 3): env, data (decode cifar10-jpeg), muon-profile
# (torch.profiler + clocks: optimizer share of a batch-2000 bf16 step, goal < 15%), speedrun-muon (1 warm-up +
# 10 runs), airbench (the record's own code, 10 runs), then, if time is left, muon-profile-compiled and speedrun.
# Carry [".whl", ".gpu"] as for call 1 (benchmarks/gpu_prepare.sh 1). Results: $OUT/summary.md, parts-call3.json.
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
exec "$PY" benchmarks/gpu_kit.py run --call 3 "$@"
