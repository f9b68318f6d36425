"""Colour bias: does a model shift the mean of a channel, and where does its error sit?

PSNR alone does not say whether a model leaves a colour cast. For each Gaussian sigma (0 is the
clean photo passed through) this prints, over the held-out photos of `bench/quality.py` (one
centred crop each, 8-bit clipped inputs from the same seeds): PSNR; the mean signed error per
channel (0-255 scale; a cast); the same mean over the pixels where that channel is dark in the
clean photo (below --dark), where 8-bit clipping at 0 biases the noisy input and a blind model has
to guess how much to take back; and the RMS error after 8x8 box averaging (blotches, casts) next
to the total RMS error. FFDNet (told the true sigma) is the reference row where it is installed
(`bench/requirements.txt`).

    .venv/bin/python bench/bias.py [--photos DIR] [--models default,fast] [--sigmas 0,5,10,15,20,25,50]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from baselines import FFDNet, try_load  # noqa: E402
from quality import DEFAULT_PHOTOS, _seed, crops_of, ensure_photos, make_noisy, to_u8  # noqa: E402

from denoise_core.inference.api import Denoiser  # noqa: E402
from denoise_core.training.photos import BENCHMARK, load_photos  # noqa: E402

BOX = 8


def errors(out_u8: np.ndarray, clean_u8: np.ndarray, dark: int) -> dict:
    err = out_u8.astype(np.float64) - clean_u8.astype(np.float64)
    h, w = (err.shape[0] // BOX) * BOX, (err.shape[1] // BOX) * BOX
    low = err[:h, :w].reshape(h // BOX, BOX, w // BOX, BOX, 3).mean(axis=(1, 3))
    dark_mean = [err[..., c][clean_u8[..., c] < dark].mean() if (clean_u8[..., c] < dark).any() else np.nan
                 for c in range(3)]
    return {"mse": float((err ** 2).mean()), "mean": err.mean(axis=(0, 1)), "dark": np.array(dark_mean),
            "low_ms": float((low ** 2).mean())}


def _blind(den: Denoiser):
    """A method for the table: the model alone, told nothing (the sigma is for FFDNet)."""
    return lambda img, _sigma: den.denoise(img)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    ap.add_argument("--models", default="default", help="shipped names or checkpoint paths, comma-separated")
    ap.add_argument("--sigmas", default="0,5,10,15,20,25,50")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--dark", type=int, default=20, help="a clean channel value below this is dark (default 20)")
    ap.add_argument("--precision", default="auto")
    a = ap.parse_args(argv)
    photos = load_photos(ensure_photos(a.photos), BENCHMARK)
    crops = [(name, crops_of(img, a.size, 1)[0][2]) for name, img in zip(BENCHMARK, photos)]
    sigmas = [float(s) for s in a.sigmas.split(",") if s.strip()]
    print(f"{len(crops)} held-out crops (up to {a.size}x{a.size}), Gaussian noise, 8-bit inputs; errors on the "
          f"0-255 scale; 'dark' = pixels where that channel of the clean photo is below {a.dark}.\n")
    print("| model | σ | PSNR | mean error R / G / B | mean error where dark R / G / B | "
          f"RMS error, {BOX}x{BOX}-averaged | RMS error |")
    print("| --- | ---: | ---: | --- | --- | ---: | ---: |")
    methods = []  # (label, run(noisy uint8, true sigma) -> uint8); our models are blind
    for m in [m.strip() for m in a.models.split(",") if m.strip()]:
        methods.append((m, _blind(Denoiser(m, precision=a.precision))))
    ffd = try_load(FFDNet, warn=lambda m: print(m, file=sys.stderr))
    if ffd is not None:
        methods.append(("FFDNet (true σ)", lambda img, s: to_u8(ffd(img.astype(np.float32) / 255.0, s))))
    for model, run in methods:
        for sigma in sigmas:
            rows = []
            for name, clean in crops:
                noisy = clean if sigma == 0 else make_noisy(
                    clean, {"kind": "gaussian", "sigma": sigma}, _seed("bias", name, sigma))
                rows.append(errors(run(noisy, sigma), clean, a.dark))
            psnr = np.mean([10 * np.log10(255.0 ** 2 / max(r["mse"], 1e-12)) for r in rows])
            mean = np.mean([r["mean"] for r in rows], axis=0)
            dark = np.nanmean([r["dark"] for r in rows], axis=0)
            fmt = " / ".join
            print(f"| {model} | {sigma:g} | {psnr:.2f} | {fmt(f'{v:+.2f}' for v in mean)} | "
                  f"{fmt(f'{v:+.2f}' for v in dark)} | {np.sqrt(np.mean([r['low_ms'] for r in rows])):.2f} | "
                  f"{np.sqrt(np.mean([r['mse'] for r in rows])):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
