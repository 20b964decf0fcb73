"""MLX backend (Metal, CUDA or CPU): models walked from their specs in NHWC, compiled steps."""

from cifarbench.backends.mlx_backend.backend import MLXBackend

__all__ = ["MLXBackend"]
