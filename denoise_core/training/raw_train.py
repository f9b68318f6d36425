"""Training data and loop for the raw-domain model (`raw`).

Data: clean sRGB photos are unprocessed into plausible sensor mosaics with `pipeline.unprocess`
(inverse tone curve, inverse camera-like colour matrix and white balance, exposure pushed 0-2 EV
down, RGGB mosaic; every setting drawn per image by `pipeline.draw_development`), darktable-profile
noise is added per photosite (`pipeline.add_sensor_noise`: a random camera of the makers training
may see, ISO 800-25600), the result is clipped at the white point, sometimes at black (as some
cameras store it), quantized to a 12- or 14-bit raw range, and packed into R, G1, G2, B planes.
The target is the clean mosaic; the model is told the noise standard deviation per photosite that
inference computes from the profile (`raw.noise_sigma` on the noisy data), with a +-10% error
drawn per image so it does not rely on the profile being exact.

Loss: L1 after a square root (the encoding raw converters' tone curves approximate), so a shadow
error weighs about as much as it will after development instead of vanishing under the highlights.

Validation: fixed crops of the SELECTION photos, each under its own development (Malvar demosaic,
white balance, colour matrix and tone curve of its draw, no sharpening), PSNR in sRGB against the
development of the clean mosaic: the quantity the raw benchmark measures.

The loop is the sRGB trainer's (`train.fit`: Adam, warm-up and cosine decay, gradient clipping,
bf16 autocast where the CPU has it, resumable state in `<out>.state.pt`); this module gives it the
raw batches, the loss and the developed validation. The best validation weights go to `<out>` with
a card, beside them the `.curves.png` and `.compare.png` (developed crops).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..inference.device import autocast, pick_precision
from ..noise.camera import CameraProfile, camera_key, camera_table, interp_profile
from ..noise.pipeline import (Development, Settings, add_sensor_noise, camera_keys, demosaic_malvar, develop,
                              draw_development, unprocess)
from .metrics import psnr, ssim
from .train import TrainConfig, fit, random_patches, state_path, to_float, val_windows

RAW_SETTINGS = Settings(iso=(800, 25600), cameras="train")
SIGMA_JITTER = 0.1
RAW_LOSS = "sqrt-l1"


def noise_description(settings: Settings = RAW_SETTINGS) -> str:
    """What the noise of raw training is, for TrainConfig.noise and the weights card."""
    return (f"darktable profiles of {settings.cameras} cameras at ISO {settings.iso[0]:g}-{settings.iso[1]:g} "
            "per photosite on unprocessed mosaics")


# ----------------------------------------------------------------------------------- data
def pack_t(m: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) RGGB mosaic, H and W even -> (N, 4, H/2, W/2) planes R, G1, G2, B."""
    return torch.cat([m[..., 0::2, 0::2], m[..., 0::2, 1::2], m[..., 1::2, 0::2], m[..., 1::2, 1::2]], 1)


def unpack_t(p: torch.Tensor) -> torch.Tensor:
    n, _, h, w = p.shape
    m = p.new_empty(n, 1, 2 * h, 2 * w)
    m[..., 0::2, 0::2], m[..., 0::2, 1::2] = p[:, 0:1], p[:, 1:2]
    m[..., 1::2, 0::2], m[..., 1::2, 1::2] = p[:, 2:3], p[:, 3:4]
    return m


def profile_ab_t(cam: CameraProfile) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance coefficients per packed plane (4x darktable's a, b, clamped), shape (4,)."""
    idx = [0, 1, 1, 2]
    a = torch.tensor(cam.a, dtype=torch.float32).clamp_min(0)[idx]
    b = torch.tensor(cam.b, dtype=torch.float32).clamp_min(0)[idx]
    return 4 * a, 4 * b


@functools.lru_cache(maxsize=8)
def _cameras(which: str, iso: tuple[float, float]) -> tuple:
    """(maker, model, profiles, lo, hi) of every camera `which` selects that covers part of `iso`."""
    table = camera_table()
    out = []
    for mk, md in camera_keys(which):
        key = camera_key(f"{mk} {md}")
        profs = table[key][2] if key in table else table[camera_key(md)][2]
        lo, hi = max(iso[0], profs[0][0]), min(iso[1], profs[-1][0])
        if lo <= hi:
            out.append((mk, md, profs, lo, hi))
    return tuple(out)


def draw_camera(gen: torch.Generator, settings: Settings = RAW_SETTINGS) -> CameraProfile:
    """A random camera of `settings.cameras` (uniform over models), ISO log-uniform in its share of
    `settings.iso`: `pipeline.draw_camera`'s distribution, with the camera table built once."""
    cams = _cameras(settings.cameras, tuple(settings.iso))
    mk, md, profs, lo, hi = cams[int(torch.randint(len(cams), (1,), generator=gen))]
    u = float(torch.rand((), generator=gen))
    iso = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    a, b = interp_profile(profs, iso)
    return CameraProfile(mk, md, iso, a, b)


def raw_sample(x: torch.Tensor, gen: torch.Generator, settings: Settings = RAW_SETTINGS,
               d: Development | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Development]:
    """One clean sRGB image (1, 3, H, W), H and W even -> (noisy planes, clean planes, sigma planes,
    development), planes (1, 4, H/2, W/2)."""
    from ..raw.rawfile import noise_sigma
    d = d or draw_development(gen, settings, camera=draw_camera(gen, settings))
    clean = unprocess(x, d).clamp(0, 1)
    noisy = add_sensor_noise(clean, d.camera, gen).clamp_max(1.0)
    if d.clip_black:
        noisy = noisy.clamp_min(0)
    levels = 4095.0 if float(torch.rand((), generator=gen)) < 0.3 else 16383.0
    noisy = torch.round(noisy * levels) / levels
    A, B = profile_ab_t(d.camera)
    noisy_p = pack_t(noisy)
    err = 1 + SIGMA_JITTER * (2 * float(torch.rand((), generator=gen)) - 1)
    sigma = noise_sigma(noisy_p, A, B) * err
    return noisy_p, pack_t(clean), sigma, d


def raw_batches(images: Sequence[np.ndarray], patch: int, batch: int,
                settings: Settings = RAW_SETTINGS) -> Callable[[torch.Generator], tuple]:
    """`batches(gen)` -> (noisy, clean, sigma), each (batch, 4, patch, patch) packed planes."""
    def draw(gen: torch.Generator):
        crops = random_patches(images, batch, 2 * patch, gen)
        out = [raw_sample(crops[i:i + 1], gen, settings)[:3] for i in range(batch)]
        return tuple(torch.cat(t) for t in zip(*out))
    return draw


def val_set(images: Sequence[np.ndarray], crop: int = 256, per_image: int = 2, seed: int = 4321):
    """Fixed (noisy, clean, sigma, development) crops of whole photos, same noise every time."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for im in images:
        for sy, sx in val_windows(im.shape[0], im.shape[1], crop, per_image):
            out.append(raw_sample(to_float(im[sy, sx])[None], gen))
    return out


def develop_planes(planes: torch.Tensor, d: Development) -> torch.Tensor:
    """Packed planes -> sRGB under `d` without sharpening or scaling (Malvar demosaic)."""
    plain = dataclasses.replace(d, sharpen="none", downscale=1.0, chroma_nr=0.0)
    return develop(unpack_t(planes.float()), plain, demosaic_malvar).clamp(0, 1)


# ----------------------------------------------------------------------------------- loss
def sqrt_l1(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    f = lambda t: (t.clamp_min(-eps / 2) + eps).sqrt()  # noqa: E731
    return F.l1_loss(f(pred), f(target))


# ----------------------------------------------------------------------------------- loop
def noisy_psnr(pairs) -> float:
    """Mean PSNR (dB) of the noisy crops of a `val_set`, developed as `evaluate` develops the
    model's output: the figure a trained model must beat."""
    return float(np.mean([psnr(develop_planes(noisy, d), develop_planes(clean, d)) for noisy, clean, _, d in pairs]))


@torch.inference_mode()
def evaluate(model: nn.Module, pairs, amp_dtype=None) -> tuple[float, float]:
    model.eval()
    ps, ss = [], []
    for noisy, clean, sigma, d in pairs:
        with autocast(torch.device("cpu"), amp_dtype):
            out = model(noisy, sigma).float()
        a, b = develop_planes(out, d), develop_planes(clean, d)
        ps.append(psnr(a, b))
        ss.append(ssim(a, b))
    model.train()
    return float(np.mean(ps)), float(np.mean(ss))


def train_raw(cfg: TrainConfig, out: str | Path, *, images: Sequence[np.ndarray], val_pairs: list,
              resume: bool = False, max_seconds: float | None = None, card: dict | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Train the `raw` model on the CPU with the shared loop (`train.fit`); stops at cfg.steps or
    after `max_seconds` (state saved, resumable). `resume` continues `<out>.state.pt` when there is
    one. `cfg.init` starts from those weights (same arch and arch_args; ignored on resume). Without
    `val_pairs` nothing is validated: the weights of every validation step are kept (the last ones
    in the end). Problems with the state, the init weights or the loss raise TrainingError."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cpu = torch.device("cpu")
    amp_dtype = pick_precision(cpu, cfg.precision)
    draw = raw_batches(images, cfg.patch, cfg.batch)

    def batches(gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        return tuple(t.contiguous(memory_format=torch.channels_last) for t in draw(gen))

    def validate(model: nn.Module, device: torch.device) -> tuple[float, float]:
        return evaluate(model, val_pairs, amp_dtype)

    def compare(model: nn.Module, device: torch.device):
        noisy0, clean0, sigma0, d0 = val_pairs[0]
        with torch.inference_mode(), autocast(cpu, amp_dtype):
            den0 = model.eval()(noisy0, sigma0).float()
        model.train()
        return develop_planes(noisy0, d0), develop_planes(den0, d0), develop_planes(clean0, d0)

    return fit(cfg, out, batches=batches, loss_fn=sqrt_l1, loss_name=RAW_LOSS,
               validate=validate if val_pairs else None, compare=compare,
               resume=resume and state_path(out).exists(), device=cpu, channels_last=True, card=card, log=log,
               max_seconds=max_seconds, loss_every=10)
