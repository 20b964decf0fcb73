"""The PyTorch backend (CUDA, MPS, CPU). Importing this package imports torch."""

from cifarbench.backends.torch_backend.backend import TorchBackend

__all__ = ["TorchBackend"]
