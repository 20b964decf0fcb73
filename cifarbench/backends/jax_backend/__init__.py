"""The JAX backend (XLA on CPU or an NVIDIA GPU). Importing this package imports jax.

Registered only through the ``cifarbench.backends`` entry-point group, as a third-party
package would be, and written only against the public contract: ``Backend`` (base.py), the
spec dataclasses and the spec walker (``cifarbench.models.walk``).
"""

from cifarbench.backends.jax_backend.backend import JaxBackend

__all__ = ["JaxBackend"]
