"""cifarbench: train, test and benchmark CIFAR-class image classifiers on every framework.

Importing this package imports no deep-learning framework (DESIGN.md, principle 6).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
