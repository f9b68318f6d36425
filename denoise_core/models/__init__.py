"""Architectures and the registry that names them."""
from . import seed as _seed  # noqa: F401  (registers `seed`)
from . import unet as _unet  # noqa: F401  (registers `unet`, `fast`)
from . import raw as _raw  # noqa: F401  (registers `raw`, after unet: it reuses its blocks)
from .registry import UnknownModelError, create_model, is_model, list_models, register_model

__all__ = ["UnknownModelError", "create_model", "is_model", "list_models", "register_model"]
