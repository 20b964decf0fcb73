#!/usr/bin/env bash
# Call 2 of the GPU kit (issue #17): MLX on CUDA, CuPy and the nccl DDP path, next to torch.
#   bash benchmarks/gpu_h200_call2.sh                        # on the GPU machine (carry .whl and .gpu2)
#   SIZE=tiny DEVICE=cpu bash benchmarks/gpu_h200_call2.sh   # dry run here (MLX CPU; CuPy parts fail cleanly)
# Parts: env, mlx-probe, data (10k/2k cifar10-jpeg subset), ddp-nccl (torchrun --nproc-per-node 1),
# bench-torch (cnn, resnet18 b256 fp32), train-torch, bench-cupy-cnn, train-cupy, bench-mlx-cnn, train-mlx
# (train-*: resnet20, 2 epochs, seed 0, the same data), then extras: bench-cupy-resnet18, bench-mlx-resnet18,
# bench-mlx-compiled (mx.compile: its first JIT took about 3 min on an H100).
# Same environment variables as gpu_h200.sh (DEADLINE_S default 560; set it from the device time left).
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
if [ "${DEVICE:-cuda}" = cuda ] && ls .gpu2/mlx-*.whl >/dev/null 2>&1; then
    # MLX for CUDA: the pruned sm_90 bundle of ../shared/tools/mlx_cuda_wheels.sh
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu2/mlx-*.whl \
        && tar -xJf .gpu2/mlx_cuda_sm90.tar.xz -C /tmp/site || echo "MLX bundle did not install" >&2
    case ":$PYTHONPATH:" in *:/tmp/site:*) ;; *) export PYTHONPATH=$PYTHONPATH:/tmp/site ;; esac
fi
exec "$PY" benchmarks/gpu_kit.py run --call 2 "$@"
