"""Training loop: patches, noise, loss, Adam with cosine decay, validation, atomic resumable state.

Training state (model, optimizer, schedule, RNG, step, best PSNR) goes to `<out>.state.pt`, saved
with torch.save and read back with `weights_only=True` (no code runs on load). The best validation
weights go to `<out>` as a safetensors checkpoint with a card.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .atomic import atomic_path
from .checkpoint import save_checkpoint
from .device import pick_device
from .metrics import psnr, ssim
from .models import create_model
from .noise import NoiseSpec, apply_noise, parse_noise


class TrainingError(RuntimeError):
    pass


@dataclass
class TrainConfig:
    arch: str = "unet"
    arch_args: dict = field(default_factory=dict)
    noise: str = "mix"
    patch: int = 64
    batch: int = 8
    steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-5
    loss: str = "l1"
    clip: float = 1.0
    seed: int = 0
    val_every: int = 500
    checkpoint_every: int = 200
    device: str = "cpu"
    data: str = ""


@dataclass
class Progress:
    step: int
    steps: int
    loss: float
    lr: float
    val_psnr: float | None = None
    val_ssim: float | None = None
    best_psnr: float | None = None
    eta_s: float | None = None


# --------------------------------------------------------------------------- patches
def random_patches(images: Sequence[np.ndarray], n: int, size: int, gen: torch.Generator,
                   partners: Sequence[np.ndarray] | None = None):
    """`n` random crops with random flips and 90-degree rotations, as float (N, C, size, size).

    With `partners` (noisy images aligned to `images`), the same crop and transform is cut from
    both and a pair (partner_batch, image_batch) is returned.
    """
    out, out_p = [], []
    weights = torch.tensor([max(1, im.shape[0] * im.shape[1]) for im in images], dtype=torch.float64)
    idx = torch.multinomial(weights, n, replacement=True, generator=gen)
    for i in idx.tolist():
        im = images[i]
        h, w = im.shape[:2]
        if h < size or w < size:
            raise TrainingError(f"image {i} is {w}x{h}, smaller than the {size}x{size} patch")
        y = int(torch.randint(h - size + 1, (1,), generator=gen))
        x = int(torch.randint(w - size + 1, (1,), generator=gen))
        k = int(torch.randint(4, (1,), generator=gen))
        flip = bool(torch.randint(2, (1,), generator=gen))
        crops = [im[y:y + size, x:x + size]]
        if partners is not None:
            crops.append(partners[i][y:y + size, x:x + size])
        res = []
        for c in crops:
            t = _to_float(c)
            t = torch.rot90(t, k, dims=(1, 2))
            if flip:
                t = torch.flip(t, dims=(2,))
            res.append(t)
        out.append(res[0])
        if partners is not None:
            out_p.append(res[1])
    clean = torch.stack(out)
    return (torch.stack(out_p), clean) if partners is not None else clean


def _to_float(a: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    scale = 65535.0 if a.dtype == np.uint16 else 255.0 if a.dtype == np.uint8 else 1.0
    t = t.float() / scale
    if t.ndim == 2:
        t = t[..., None]
    return t.permute(2, 0, 1)


def fixed_val_set(images: Sequence[np.ndarray], noise: NoiseSpec | str, *, crop: int = 256,
                  per_image: int = 2, seed: int = 1234):
    """Deterministic (noisy, clean) crops from validation photos: same noise every evaluation."""
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for im in images:
        h, w = im.shape[:2]
        c = min(crop, h, w) // 8 * 8
        for j in range(per_image):
            y = (h - c) * (j + 1) // (per_image + 1)
            x = (w - c) * (j + 1) // (per_image + 1)
            clean = _to_float(im[y:y + c, x:x + c])[None]
            pairs.append((apply_noise(clean, noise, gen), clean))
    return pairs


@torch.inference_mode()
def evaluate(model: nn.Module, pairs, device: torch.device) -> tuple[float, float]:
    model.eval()
    ps, ss = [], []
    for noisy, clean in pairs:
        out = model(noisy.to(device)).float().clamp(0, 1).cpu()
        ps.append(psnr(out, clean))
        ss.append(ssim(out, clean))
    model.train()
    return float(np.mean(ps)), float(np.mean(ss))


# --------------------------------------------------------------------------- loop
def _lr_at(cfg: TrainConfig, step: int) -> float:
    warm = min(200, cfg.steps // 10)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def state_path(out: str | os.PathLike) -> Path:
    return Path(str(out) + ".state.pt")


def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    *,
    batches: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    val_pairs: list,
    resume: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    card: dict | None = None,
    model: nn.Module | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    is_main: bool = True,
) -> dict:
    """Train; `batches(gen)` yields one (noisy, clean) batch. Returns the final card."""
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = model or create_model(cfg.arch, **cfg.arch_args)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, best, history = 0, -float("inf"), []
    sp = state_path(out)
    if resume:
        if not sp.exists():
            raise TrainingError(f"--resume: no training state at {sp}")
        st = torch.load(sp, map_location="cpu", weights_only=True)
        if st["config"]["arch"] != cfg.arch:
            raise TrainingError(f"{sp} is a {st['config']['arch']!r} run, not {cfg.arch!r}")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        step, best, history = st["step"], st["best"], list(st["history"])
    net = wrap(model) if wrap else model
    model.train()
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    card = dict(card or {})
    t0, s0 = time.time(), step
    loss_ema = None

    def save_state() -> None:
        if not is_main:
            return
        blob = {"config": asdict(cfg), "model": model.state_dict(), "opt": opt.state_dict(),
                "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "step": step,
                "best": best, "history": history}
        with atomic_path(sp) as tmp:
            torch.save(blob, tmp)

    while step < cfg.steps:
        lr = _lr_at(cfg, step)
        for g in opt.param_groups:
            g["lr"] = lr
        noisy, clean = batches(gen)
        noisy = noisy.to(device, non_blocking=True)
        clean = clean.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            pred = net(noisy)
            loss = (F.l1_loss if cfg.loss == "l1" else F.mse_loss)(pred.float(), clean)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {float(loss)} at step {step + 1}; training stopped "
                                f"(last good state: {sp}). Try a lower --lr.")
        opt.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        step += 1
        lv = float(loss.detach())
        loss_ema = lv if loss_ema is None else 0.98 * loss_ema + 0.02 * lv
        rate = (step - s0) / max(1e-6, time.time() - t0)
        prog = Progress(step, cfg.steps, loss_ema, lr, best_psnr=best if best > -1e9 else None,
                        eta_s=(cfg.steps - step) / rate if rate > 0 else None)
        if step % cfg.val_every == 0 or step == cfg.steps:
            vp, vs = evaluate(model, val_pairs, device) if val_pairs else (float("nan"), float("nan"))
            history.append({"step": step, "loss": loss_ema, "val_psnr": vp, "val_ssim": vs})
            prog.val_psnr, prog.val_ssim = vp, vs
            if is_main and (vp > best or not val_pairs):
                best = vp
                card.update({"steps": step, "val_psnr": round(vp, 3), "val_ssim": round(vs, 4),
                             "noise": cfg.noise, "data": cfg.data, "loss": cfg.loss,
                             "patch": cfg.patch, "batch": cfg.batch})
                save_checkpoint(out, model, card)
            prog.best_psnr = best
            save_state()
        elif step % cfg.checkpoint_every == 0:
            save_state()
        if on_progress:
            on_progress(prog)
    return {"card": card, "history": history, "best_psnr": best}
