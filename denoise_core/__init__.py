"""Headless core of the CNN photo denoiser: models, tiling, checkpoints, image I/O, noise, training.

Never imports a host program (Krita, GIMP); the plugins reach it through `denoise_core.worker`.
"""
from .api import Cancelled, Denoiser, ModelNotFoundError, load_denoiser, shipped_models
from .checkpoint import CheckpointError

__version__ = "0.5.0"  # the only place the version is written (pyproject.toml reads it; CHANGELOG.md)
__all__ = ["Cancelled", "CheckpointError", "Denoiser", "ModelNotFoundError", "load_denoiser",
           "shipped_models", "__version__"]
