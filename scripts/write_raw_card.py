"""Write denoise_core/weights/raw.md, the card of the raw-domain weights, from the checkpoint's metadata, the
training state (steps, minutes, validation curve) and bench/raw.py's Markdown table.

    python scripts/write_raw_card.py --weights denoise_core/weights/raw.safetensors \
        --state training/raw/raw.safetensors.state.pt --bench docs/bench/raw.md --out denoise_core/weights/raw.md
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import torch

from denoise_core.imaging.atomic import atomic_write_bytes
from denoise_core.inference.checkpoint import load_checkpoint
from denoise_core.training.photos import PACKAGES, SELECTION, TRAIN


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default="denoise_core/weights/raw.safetensors")
    ap.add_argument("--state", default=None, help="the training run's <out>.state.pt (curves, minutes)")
    ap.add_argument("--bench", default="docs/bench/raw.md")
    ap.add_argument("--out", default="denoise_core/weights/raw.md")
    a = ap.parse_args()
    p = Path(a.weights)
    ck = load_checkpoint(p)
    net: Any = ck.build()  # a RawUNet: size_multiple and receptive_radius are plain ints
    params = sum(t.numel() for t in net.parameters())
    card = ck.card
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    lines = [
        "# `raw` weights (raw-domain denoiser)", "",
        f"- file: `{p.name}`, {p.stat().st_size / 1e6:.2f} MB, sha256 `{sha[:16]}…`",
        f"- architecture: `raw` ({'default arguments' if not ck.arch_args else ck.arch_args}), {params:,} parameters; "
        f"in: the Bayer mosaic packed into R, G1, G2, B planes (black 0, white 1) and the noise standard deviation "
        f"of every photosite; out: the denoised planes (residual). Sides a multiple of {net.size_multiple} packed "
        f"pixels ({2 * net.size_multiple} photosites), receptive radius {net.receptive_radius} packed pixels "
        f"({2 * net.receptive_radius} photosites)",
        f"- data: {len(TRAIN)} photos from Debian packages {', '.join(PACKAGES)} (2x box-downscaled), unprocessed "
        f"into sensor mosaics; model selection on {', '.join(SELECTION)}; never the BENCHMARK photos",
        "- noise: per patch a random development draw (`pipeline.draw_development`: inverse tone curve — sRGB, "
        "sRGB + S-curve or a camera base curve —, inverse camera-like colour matrix and white balance, exposure "
        "pushed 0-2 EV down, RGGB mosaic), then the darktable profile of a random camera whose maker is not held "
        "out (Fujifilm, Pentax, Olympus and Ricoh are) at ISO 800-25600, Poisson-Gaussian per photosite with "
        "variance 4(a x + b); clipped at white, at black for 30% of patches, quantized to 12 or 14 bits; the "
        "model is told the profile's noise std per photosite (from the 3x3 mean of the noisy data, as at "
        "inference) with a +-10% error per patch; target: the clean mosaic",
        f"- training: {card.get('steps')} steps (best validation) of batch {card.get('batch')} patches of "
        f"{card.get('patch')}x{card.get('patch')} packed pixels ({2 * int(card.get('patch', 0))}x"
        f"{2 * int(card.get('patch', 0))} photosites) with flips/rotations, L1 after a square root, Adam with "
        f"warm-up and cosine decay, gradient clipping 1.0, one CPU thread, {card.get('precision')} forward pass "
        "(scripts/train_raw.py, denoise_core/training/raw_train.py)",
        f"- validation during training: PSNR {card.get('val_psnr')} dB, SSIM {card.get('val_ssim')} (2 crops of "
        "256x256 photosites from each selection photo, each under its own development: Malvar demosaic, white "
        "balance, colour matrix, tone curve; sRGB against the development of the clean mosaic)",
    ]
    if a.state and Path(a.state).exists():
        st = torch.load(a.state, map_location="cpu", weights_only=True)
        hist = st.get("history", [])
        lines.append(f"- run: {st['step']} steps in {st.get('seconds', 0) / 60:.1f} min; validation PSNR by step: "
                     + ", ".join(f"{h['step']}: {h['val_psnr']:.2f}" for h in hist))
    if Path(a.bench).exists():
        lines += ["", "## Benchmark (`bench/raw.py`, held-out photos)", "",
                  Path(a.bench).read_text().split("\n", 2)[2].strip()]
    atomic_write_bytes(a.out, ("\n".join(lines) + "\n").encode())
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
