"""Reproduce the shipped raw-domain weights (`raw`): denoise_core/training/raw_train.py on the allowed
package photos (denoise_core/training/photos.py) with their fixed split (TRAIN; SELECTION validates), and a
time limit per session. Resumable: run it again with --resume to continue.

    python scripts/train_raw.py --out training/raw/raw.safetensors --steps 20000 --minutes 30 --threads 1
    python scripts/train_raw.py --out training/raw/raw.safetensors --steps 20000 --minutes 30 --resume

To train the raw model on your own clean photos, use the installed command instead:
    denoise-train --domain raw --clean photos/ --out raw-mine.safetensors --steps 20000
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from denoise_core.training.photos import PACKAGES, SELECTION, TRAIN, load_photos, require_prepared
from denoise_core.training.raw_train import RAW_LOSS, noise_description, train_raw, val_set
from denoise_core.training.train import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="weights file (.safetensors); state goes to <out>.state.pt")
    ap.add_argument("--photos", default=None,
                    help="folder of the prepared photos (<name>.png; default $DENOISE_PHOTOS, else "
                         "~/.cache/denoise-cnn/photos)")
    ap.add_argument("--steps", type=int, default=20000, help="length of the learning-rate schedule")
    ap.add_argument("--minutes", type=float, default=None, help="stop (state saved) after this much time")
    ap.add_argument("--patch", type=int, default=64, help="patch side in packed pixels (mosaic: twice that)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("--arch-args", default="{}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    photos = require_prepared(a.photos, TRAIN + SELECTION)
    train_imgs = load_photos(photos, TRAIN)
    val_pairs = val_set(load_photos(photos, SELECTION))
    cfg = TrainConfig(arch="raw", arch_args=json.loads(a.arch_args), noise=noise_description(), patch=a.patch,
                      batch=a.batch, steps=a.steps, lr=a.lr, loss=RAW_LOSS, val_every=a.val_every,
                      checkpoint_every=250, device="cpu",
                      data=f"{len(TRAIN)} photos from {', '.join(PACKAGES)} (2x box-downscaled); "
                           f"selection: {', '.join(SELECTION)}",
                      threads=a.threads, precision=a.precision, seed=a.seed)
    t0 = time.time()
    res = train_raw(cfg, a.out, images=train_imgs, val_pairs=val_pairs, resume=a.resume,
                    max_seconds=None if a.minutes is None else a.minutes * 60,
                    log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True))
    print(f"done: step {res['step']}, best validation {res['best_psnr']:.3f} dB, "
          f"{res['seconds'] / 60:.1f} min trained in all ({(time.time() - t0) / 60:.1f} this run)", file=sys.stderr)


if __name__ == "__main__":
    main()
