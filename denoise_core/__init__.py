"""Headless core of the CNN photo denoiser.

Sub-packages by concern: `inference` (the `Denoiser`, tiling, noise levels, device, checkpoints),
`models` (the architectures' registry), `imaging` (image files), `raw` (camera raw files), `noise`
(noise synthesis), `training` (training and evaluation; not imported when denoising), `weights` (the
shipped weights). `worker` is the process the plug-ins start. Never imports a host program (Krita,
GIMP); the plugins reach it through `denoise_core.worker`.
"""
from .imaging.imageio import Photo, read_image, write_image
from .inference.api import Cancelled, Denoiser, ModelNotFoundError, load_denoiser, shipped_models
from .inference.checkpoint import CheckpointError

__version__ = "0.5.0"  # the only place the version is written (pyproject.toml reads it; CHANGELOG.md)
__all__ = ["Cancelled", "CheckpointError", "Denoiser", "ModelNotFoundError", "Photo", "load_denoiser", "read_image",
           "shipped_models", "write_image", "__version__"]
