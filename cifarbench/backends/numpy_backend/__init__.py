"""The from-scratch NumPy/CuPy engine: every forward and backward written out by hand.

Read in this order: ``conv`` (im2col + GEMM), ``norm`` (batch norm), ``layers`` (ReLU,
pooling, linear, dropout, flatten), ``loss`` (softmax cross-entropy), ``optim`` (SGD, Adam,
AdamW), ``network`` (a spec as a tree of nodes), ``backend`` (the Backend contract).
CuPy is imported only when CupyBackend is used.
"""

from cifarbench.backends.numpy_backend.backend import CupyBackend, NumpyBackend

__all__ = ["CupyBackend", "NumpyBackend"]
