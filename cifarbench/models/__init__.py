"""Models as specs, and the registry that names them."""

from cifarbench.models.registry import create_spec, init_params, list_models, model_names, register_model
from cifarbench.models.spec import ModelSpec

__all__ = ["ModelSpec", "create_spec", "init_params", "list_models", "model_names", "register_model"]
