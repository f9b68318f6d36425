"""Python API for plugins, notebooks and the CLI: load a model once, denoise arrays.

    from denoise_core import Denoiser
    dn = Denoiser("default", device="auto")
    out = dn.denoise(pixels, strength=0.8, progress=lambda done, total: ..., cancel=event.is_set)
    out = dn.denoise(pixels, noise_level=1.5)   # assume 1.5x the noise the blind pass finds
    out = dn.denoise(pixels, sigma=8)           # the noise is sigma 8 on the 0-255 scale

`strength` blends the result with the input (0 keeps it, 1 is the full result). `noise_level`
(models with a noise-level input, the default among them; see `denoise_core.inference.levels`) tells the
net how much noise to remove, relative to what it finds by itself: None (default) is blind and
one pass; a number runs a blind pass, maps the noise it removed, and runs again told that map
times the number: 0 keeps the image, 1 is about the blind result, 2 removes noise the blind pass
left. `sigma` gives the noise instead as an absolute standard deviation on the 0-255 scale (what
FFDNet and G'MIC users know), the same everywhere in the image, in one pass told that level.
`noise_level` and `sigma` exclude each other; `strength` combines with either.

Arrays are (H, W), (H, W, 1) or (H, W, 3) — colour only, alpha is the caller's to keep — in
uint8, uint16 or float (0..1, sRGB-encoded); the result has the input's shape and dtype. The image
is processed tile by tile into the output, so memory grows with the tile size, not the image.
Float input holding NaN or infinite samples is refused (ValueError saying how many), and so is a
network output that is not finite or far outside the input's range (`check_output`: broken weights), rather
than returning a NaN-spotted or black image.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from denoise_plugins.common.denoise_protocol import DEFAULT_TILE, MAX_NOISE_LEVEL, MAX_SIGMA

from ..imaging.files import file_problem
from ..models import list_models
from .checkpoint import CheckpointError, load_checkpoint
from .device import autocast, pick_device, pick_precision, precision_name
from .levels import LEVEL_RADIUS, LEVEL_UNIT, level_map, level_planes
from .tiler import CancelFn, Cancelled, ProgressFn, make_grid, run_tiles

DEFAULT_MODEL = "unet"
DEFAULT_BORDER = 16  # mirrored context past the image edge (see tiler); the full overlap costs time, not quality


class ModelNotFoundError(ValueError):
    pass


def weights_dir() -> Path:
    """The folder of the shipped weights and their cards (the package `denoise_core.weights`)."""
    return Path(str(resources.files("denoise_core.weights")))


RAW_ARCHS = ("raw",)  # sensor-mosaic models: camera raw files only (denoise_core.raw.denoise)


def shipped_models(*, include_raw: bool = False) -> dict[str, Path]:
    """Registry names that have shipped weights, mapped to their files: the sRGB image models
    (what `Denoiser`, the plug-ins and the benchmarks take), and with `include_raw` the raw ones."""
    d = weights_dir()
    return {n: d / f"{n}.safetensors" for n in list_models()
            if (d / f"{n}.safetensors").is_file() and (include_raw or n not in RAW_ARCHS)}


def resolve_model(model: str | os.PathLike) -> Path:
    """A shipped model name ('default', 'unet', 'fast', 'seed') or a checkpoint path -> file."""
    name = str(model)
    if name == "default":
        name = DEFAULT_MODEL
    shipped = shipped_models(include_raw=True)
    if name in shipped:
        return shipped[name]
    p = Path(name).expanduser()
    if p.suffix or os.sep in name or os.path.lexists(p):
        problem = file_problem(p, "a checkpoint file", missing="checkpoint file not found")
        if problem:
            raise ModelNotFoundError(f"{p}: {problem}")
        return p
    raise ModelNotFoundError(
        f"unknown model {name!r}: not a checkpoint file and not a shipped model "
        f"(shipped: {', '.join(['default', *sorted(shipped)]) if shipped else 'none'})")


def build_for_inference(ckpt, device: str, precision: str) -> tuple[nn.Module, torch.device, torch.dtype | None]:
    """A checkpoint's network on the picked device (channels-last on the CPU) and its autocast dtype."""
    dev = pick_device(device)
    net = ckpt.build().to(dev)
    if dev.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    return net, dev, pick_precision(dev, precision)


class Denoiser:
    def __init__(self, model: str | os.PathLike = "default", *, device: str = "auto",
                 tile: int = DEFAULT_TILE, overlap: int | None = None, border: int = DEFAULT_BORDER,
                 precision: str = "auto", allow_raw: bool = False, threads: int | None = None) -> None:
        """`threads`, when given, sets torch's CPU thread count, which is one setting for the whole
        process; by default the Denoiser leaves it as it is (torch's own default, or what the program
        chose: denoise-batch and the plug-in worker use every core)."""
        if threads is not None:
            if int(threads) < 1:
                raise ValueError(f"threads must be at least 1, got {threads}")
            torch.set_num_threads(int(threads))
        self.path = resolve_model(model)
        ckpt = load_checkpoint(self.path)
        if ckpt.arch in RAW_ARCHS and not allow_raw:
            raise ValueError(f"{self.path.name} holds a {ckpt.arch!r} model for camera raw files (sensor "
                             f"mosaics); give denoise-batch the raw file itself, or pick an image model")
        self.card = ckpt.card
        self.arch = ckpt.arch
        net, self.device, self.amp_dtype = build_for_inference(ckpt, device, precision)
        self.precision = precision_name(self.amp_dtype)
        self.model: nn.Module = net
        self.multiple = int(getattr(net, "size_multiple", 1))
        self.receptive = int(getattr(net, "receptive_radius", 16))
        self.has_levels = bool(getattr(net, "level_channels", 0))
        self.tile = int(tile)
        self.overlap = self.receptive if overlap is None else int(overlap)
        self._overlap_given = overlap is not None
        self.border = int(border)

    def context(self, noise_level: float | None = None) -> int:
        """Pixels of context each output pixel depends on: the receptive radius, or with a relative
        noise level, two passes of it plus the level map's window. (An absolute sigma is one pass.)"""
        return self.receptive if noise_level is None else 2 * self.receptive + LEVEL_RADIUS

    @torch.inference_mode()
    def run_tensor(self, x: torch.Tensor, noise_level: float | None = None,
                   sigma: float | None = None) -> torch.Tensor:
        """Model on a float (N, 3, H, W) batch whose sides are multiples of `self.multiple`;
        with `noise_level`, the two passes described in the module docstring; with `sigma`, one
        pass told that level everywhere."""
        x = x.to(self.device)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            if sigma is not None:
                levels = torch.full((x.shape[0], 1, x.shape[2], x.shape[3]), float(sigma) / 255.0 / LEVEL_UNIT)
                y = self.model(x, level_planes(levels, tuple(x.shape)).to(self.device, x.dtype))
            else:
                y = self.model(x)
            if noise_level is not None:
                check_output(x, y.float(), self.path)
                planes = level_planes(level_map(x - y.float()) * float(noise_level), tuple(x.shape))
                y = self.model(x, planes.to(self.device, x.dtype))
        y = y.float()
        check_output(x, y, self.path)
        return y.cpu()

    def check_noise_level(self, noise_level: float | None, sigma: float | None = None) -> None:
        """ValueError naming the problem when the level options cannot be used with this model."""
        if noise_level is None and sigma is None:
            return
        if noise_level is not None and sigma is not None:
            raise ValueError("give a relative noise level or an absolute sigma, not both")
        if not self.has_levels:
            raise ValueError(f"model {self.path.name} ({self.arch}) has no noise-level input; use "
                             f"strength, or a model that has one (the default)")
        if noise_level is not None and not 0.0 <= float(noise_level) <= MAX_NOISE_LEVEL:
            raise ValueError(f"noise level must be within 0..{MAX_NOISE_LEVEL:g}, got {noise_level}")
        if sigma is not None and not 0.0 <= float(sigma) <= MAX_SIGMA:
            raise ValueError(f"sigma must be within 0..{MAX_SIGMA:g} (0-255 scale), got {sigma}")

    def denoise(self, image: np.ndarray, *, strength: float = 1.0, noise_level: float | None = None,
                sigma: float | None = None,
                progress: ProgressFn | None = None, cancel: CancelFn | None = None, tile: int | None = None,
                overlap: int | None = None) -> np.ndarray:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be within 0..1, got {strength}")
        self.check_noise_level(noise_level, sigma)
        arr = np.asarray(image)
        squeeze = arr.ndim == 2
        if squeeze:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3):
            raise ValueError(f"expected an (H, W), (H, W, 1) or (H, W, 3) array, got shape {np.shape(image)}")
        if arr.dtype == np.uint8:
            scale = 255.0
        elif arr.dtype == np.uint16:
            scale = 65535.0
        elif np.issubdtype(arr.dtype, np.floating):
            scale = 1.0
        else:
            raise ValueError(f"unsupported dtype {arr.dtype}; use uint8, uint16 or float")
        if scale == 1.0:
            check_finite(arr)
        h, w, c = arr.shape
        out = np.empty_like(arr)
        if strength == 0.0:
            out[...] = arr
            return out[..., 0] if squeeze else out
        if overlap is None:
            overlap = self.overlap if self._overlap_given or noise_level is None else self.context(noise_level)
        grid = make_grid(h, w, tile=tile or self.tile, overlap=overlap, multiple=self.multiple, border=self.border)

        def run(window: np.ndarray) -> np.ndarray:
            win = window.astype(np.float32) / scale
            x = torch.from_numpy(np.ascontiguousarray(win)).permute(2, 0, 1)[None]
            if c == 1:
                x = x.expand(1, 3, *x.shape[2:])
            y = self.run_tensor(x, noise_level, sigma)[0]
            if c == 1:
                y = y.mean(0, keepdim=True)
            pred = y.permute(1, 2, 0).numpy()
            return pred if strength == 1.0 else win + strength * (pred - win)

        def put_rows(y0: int, rows: np.ndarray) -> None:
            out[y0:y0 + rows.shape[0]] = _to_dtype(rows, arr.dtype, scale)

        run_tiles(arr, grid, run, c, put_rows, progress=progress, cancel=cancel)
        return out[..., 0] if squeeze else out


def check_finite(pixels: np.ndarray) -> None:
    """Float samples must be numbers: a NaN spreads through every tile it touches (one NaN sample
    in a TIFF came back as 162), so an image holding any is refused, saying how many."""
    bad = pixels.size - int(np.count_nonzero(np.isfinite(pixels)))
    if bad:
        raise ValueError(f"{bad} of {pixels.size} colour samples {'is' if bad == 1 else 'are'} NaN or infinite; "
                         "replace them before denoising")


# A denoiser's output stays near its input: the noise it removes is a fraction of the range. Output
# more than this outside the input's range (0..1, or wider for float input), or not finite, comes
# from broken weights (finite but absurd ones made an all-black image), not from a photo; an
# untrained net with small random weights stays within about 1 of it.
OUTPUT_MARGIN = 8.0


def check_output(x: torch.Tensor, y: torch.Tensor, model_path) -> None:
    """Refuse (ValueError naming the model file) a network output `y` that cannot be a denoising of `x`."""
    finite = bool(torch.isfinite(y).all())
    lo, hi = (float(y.min()), float(y.max())) if finite else (0.0, 0.0)
    x_lo, x_hi = min(0.0, float(x.min())), max(1.0, float(x.max()))
    if not finite or lo < x_lo - OUTPUT_MARGIN or hi > x_hi + OUTPUT_MARGIN:
        what = "holds NaN or infinite values" if not finite else f"ranges {lo:.3g}..{hi:.3g}"
        raise ValueError(f"the network's output is implausible (it {what} for input within {x_lo:.3g}..{x_hi:.3g}): "
                         f"the weights of {model_path} look broken")


def _to_dtype(x: np.ndarray, dtype: np.dtype, scale: float) -> np.ndarray:
    if np.issubdtype(dtype, np.floating):
        return x.astype(dtype)
    y = x * scale
    np.rint(y, out=y)
    np.clip(y, 0, scale, out=y)
    return y.astype(dtype)


def load_denoiser(model: str | os.PathLike = "default", **kwargs) -> Denoiser:
    return Denoiser(model, **kwargs)


__all__ = ["Cancelled", "CheckpointError", "Denoiser", "ModelNotFoundError", "DEFAULT_MODEL", "DEFAULT_TILE",
           "load_denoiser", "resolve_model", "shipped_models", "weights_dir"]
