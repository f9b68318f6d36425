"""What the tiler's border (mirrored context past the photo's edge) costs and saves.

For each border width: the model pixels a 2 MP photo costs the default model at the default tile
size, and the PSNR of the outer 24 px band and of the whole crop on held-out photos (the
validation photos of `bench/quality.py`, one 400x520 crop each, Gaussian sigma 25 and D750 camera
noise at ISO 12800, 8-bit inputs). The full overlap is the reference; tiled output is the same as
whole-image output for every border, so the crops run as one tile.

    .venv/bin/python bench/border.py [--photos DIR] [--borders 0,8,16,32]
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

from quality import DEFAULT_PHOTOS, ensure_photos, make_noisy  # noqa: E402
from speed import image_shape  # noqa: E402

from denoise_core.inference.api import DEFAULT_TILE, Denoiser  # noqa: E402
from denoise_core.training.photos import BENCHMARK  # noqa: E402
from denoise_core.inference.tiler import make_grid  # noqa: E402

NOISES = {"σ=25": {"kind": "gaussian", "sigma": 25.0},
          "camera": {"kind": "camera", "camera": "Nikon D750", "iso": 12800.0, "ev": 0.0}}
BAND = 24


def _psnr(err2: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / err2.mean()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    ap.add_argument("--borders", default="0,8,16,32")
    args = ap.parse_args()
    folder = ensure_photos(args.photos)
    from PIL import Image
    clean = [np.asarray(Image.open(folder / f"{n}.png").convert("RGB"))[:400, :520] for n in BENCHMARK]
    ref = Denoiser("default", device="cpu")
    borders = [int(b) for b in args.borders.split(",")] + [ref.overlap]
    h, w = image_shape(2)
    print(f"default model, overlap {ref.overlap} px, tile {DEFAULT_TILE}; {len(clean)} held-out crops\n")
    print("| border px | model MP for a 2 MP photo | " + " | ".join(
        f"{k}: outer {BAND} px dB | {k}: whole dB" for k in NOISES) + " |")
    print("| ---: | ---: | " + " | ".join("---: | ---:" for _ in NOISES) + " |")
    for b in borders:
        dn = Denoiser("default", device="cpu", border=b)
        g = make_grid(h, w, tile=DEFAULT_TILE, overlap=dn.overlap, multiple=dn.multiple, border=b)
        mp = sum((t.window[2] - t.window[0]) * (t.window[3] - t.window[1]) for t in g) / 1e6
        cells = []
        for _k, cond in NOISES.items():
            edge, whole = [], []
            for i, im in enumerate(clean):
                out = dn.denoise(make_noisy(im, cond, seed=i), tile=4096).astype(np.float64)
                e = (out - im) ** 2
                band = np.ones(e.shape[:2], bool)
                band[BAND:-BAND, BAND:-BAND] = False
                edge.append(e[band].mean())
                whole.append(e.mean())
            cells.append(f"{_psnr(np.array(edge)):.3f} | {_psnr(np.array(whole)):.3f}")
        label = f"{b} (full overlap)" if b == ref.overlap else str(b)
        print(f"| {label} | {mp:.2f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
