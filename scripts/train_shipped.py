"""Train the shipped weights on the allowed photos (see denoise_core/training/photos.py) with synthetic noise.

    python scripts/train_shipped.py --arch unet --out denoise_core/weights/unet.safetensors --steps 16000 [--resume]

Deepen a trained net (added blocks start as identities, so training resumes from its quality):

    python scripts/train_shipped.py --arch unet --arch-args '{"enc_blocks": [2, 3], "dec_blocks": [3, 2]}' \
        --grow --init denoise_core/weights/unet.safetensors --out grown.safetensors ...
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from denoise_core.inference.checkpoint import load_checkpoint
from denoise_core.inference.levels import training_levels
from denoise_core.noise.synth import noisy_pair, parse_noise
from denoise_core.training.photos import SELECTION, TRAIN, load_photos, require_prepared
from denoise_core.training.train import TrainConfig, fixed_val_set, random_patches, state_path, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--out", required=True)
    ap.add_argument("--photos", default=None,
                    help="folder of the prepared photos (<name>.png; default $DENOISE_PHOTOS, else "
                         "~/.cache/denoise-cnn/photos)")
    ap.add_argument("--steps", type=int, default=16000)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--loss", default="l1")
    ap.add_argument("--noise", default="mix")
    ap.add_argument("--val-every", type=int, default=1000)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--arch-args", default=None,
                    help="JSON keyword arguments of the architecture (default: those of --init, or of the "
                         "state being resumed, else none)")
    ap.add_argument("--init", default="", help="weights to fine-tune from")
    ap.add_argument("--grow", action="store_true", help="--init holds the same arch with fewer blocks")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16 (autocast of the forward pass)")
    a = ap.parse_args()
    if a.arch_args is not None:
        arch_args = json.loads(a.arch_args)
    elif a.resume and state_path(a.out).exists():
        arch_args = torch.load(state_path(a.out), map_location="cpu", weights_only=True)["config"]["arch_args"]
    elif a.init and not a.grow:
        arch_args = load_checkpoint(a.init).arch_args
    else:
        arch_args = {}
    photos = require_prepared(a.photos, TRAIN + SELECTION)
    train_imgs = load_photos(photos, TRAIN)
    val_imgs = load_photos(photos, SELECTION)
    noise = str(parse_noise(a.noise))  # 'mix' -> the versioned name, so the card says which
    cfg = TrainConfig(arch=a.arch, arch_args=arch_args, grow=a.grow, noise=noise, patch=a.patch,
                      batch=a.batch, steps=a.steps, lr=a.lr,
                      loss=a.loss, val_every=a.val_every, checkpoint_every=250, device="cpu",
                      init=a.init, threads=a.threads, precision=a.precision,
                      data=f"{len(TRAIN)} photos from Debian packages lomiri-wallpapers-16.04, mate-backgrounds, "
                           f"plasma-workspace-wallpapers, palapeli-data (2x box-downscaled); "
                           f"validation (model selection): {', '.join(SELECTION)}")
    val = fixed_val_set(val_imgs, noise, crop=256, per_image=2)
    levels = bool(arch_args.get("level_input"))

    def batches(gen):
        # 16 px more than the patch: developments and filters never see the patch's edge
        clean = random_patches(train_imgs, a.batch, a.patch + 16, gen)
        noisy, target = noisy_pair(clean, noise, gen, out_size=a.patch)
        return (noisy, target, training_levels(noisy, target, gen)) if levels else (noisy, target)

    t0 = time.time()

    def report(p):
        if p.step % 50 == 0 or p.val_psnr is not None:
            extra = f" val_psnr={p.val_psnr:.3f} ssim={p.val_ssim:.4f}" if p.val_psnr is not None else ""
            print(f"step {p.step}/{p.steps} loss={p.loss:.5f} lr={p.lr:.2e} "
                  f"{(time.time() - t0):.0f}s eta={p.eta_s or 0:.0f}s{extra}", flush=True)

    res = train(cfg, a.out, batches=batches, val_pairs=val, resume=a.resume, on_progress=report,
                card={"trained_with": "scripts/train_shipped.py",
                      "val_noise": f"{noise} (fixed seed)", "mix_version": noise})
    print("best", res["best_psnr"], file=sys.stderr)


if __name__ == "__main__":
    main()
