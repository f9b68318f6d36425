"""Statistics of a noise residual (noisy - clean), the ones that tell camera noise from Gaussian:
level, luma/chroma balance, spatial correlation of luma at 1/2/4 px, cross-channel correlation and
the share of energy at low frequencies (blotches). Compares real pairs with a simulator:

    python bench/noise_stats.py --real ../shared/realnoise/cc60 --sim mild-camera --sim mix
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
STATS = ("sigma", "luma", "chroma", "chroma/luma", "corr1", "corr2", "corr4", "xcorr", "low")


def _autocorr(p: np.ndarray, d: int) -> float:
    a, b = p[:, :-d], p[:, d:]
    c, e = p[:-d, :], p[d:, :]
    num = (a * b).mean() + (c * e).mean()
    return float(num / (2 * p.var() + 1e-12))


def residual_stats(noisy: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """(H, W, 3) arrays on the 0-255 scale -> the statistics named in STATS."""
    r = noisy.astype(np.float64) - clean.astype(np.float64)
    r -= r.mean((0, 1))
    ycc = r @ YCC.T
    y = ycc[..., 0]
    luma = float(y.std())
    chroma = float(np.sqrt((ycc[..., 1].var() + ycc[..., 2].var()) / 2))
    x = [float(np.corrcoef(r[..., i].ravel(), r[..., j].ravel())[0, 1]) for i, j in ((0, 1), (0, 2), (1, 2))]
    f = np.abs(np.fft.fft2(y)) ** 2
    fy = np.abs(np.fft.fftfreq(y.shape[0]))[:, None]
    fx = np.abs(np.fft.fftfreq(y.shape[1]))[None, :]
    low = float(f[np.maximum(fy, fx) < 1 / 8].sum() / f.sum())
    return {"sigma": float(r.std()), "luma": luma, "chroma": chroma, "chroma/luma": chroma / (luma + 1e-9),
            "corr1": _autocorr(y, 1), "corr2": _autocorr(y, 2), "corr4": _autocorr(y, 4),
            "xcorr": float(np.mean(x)), "low": low}


def summarize(rows: list[dict[str, float]]) -> dict[str, tuple[float, float, float]]:
    """min, median, max of each statistic."""
    return {k: (float(np.min([r[k] for r in rows])), float(np.median([r[k] for r in rows])),
                float(np.max([r[k] for r in rows]))) for k in STATS}


def real_stats(folder: Path) -> list[dict[str, float]]:
    from real import find_pairs, read_rgb
    return [residual_stats(read_rgb(p.noisy), read_rgb(p.clean)) for p in find_pairs(folder)]


def sim_stats(spec: str, n: int, seed: int, photos: Path | None) -> list[dict[str, float]]:
    import torch

    from denoise_core.noise.synth import noisy_pair
    from denoise_core.training.photos import SELECTION, load_photos, require_prepared
    from denoise_core.training.train import random_patches

    imgs = load_photos(require_prepared(photos, SELECTION), SELECTION)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        clean = random_patches(imgs, 1, 272, gen)
        noisy, target = noisy_pair(clean, spec, gen, out_size=256)
        a = noisy[0].permute(1, 2, 0).numpy() * 255
        b = target[0].permute(1, 2, 0).numpy() * 255
        if np.abs(a - b).max() > 0:
            rows.append(residual_stats(a, b))
    return rows


def table(named: dict[str, list[dict[str, float]]]) -> str:
    head = "| statistic | " + " | ".join(f"{k} (min / median / max)" for k in named) + " |"
    lines = [head, "| --- |" + " ---: |" * len(named)]
    sums = {k: summarize(v) for k, v in named.items()}
    for s in STATS:
        cells = [" / ".join(f"{v:.2f}" for v in sums[k][s]) for k in named]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", type=Path, action="append", default=[], help="folder of real pairs")
    ap.add_argument("--sim", action="append", default=[], help="noise spec of the simulator (repeatable)")
    ap.add_argument("--n", type=int, default=60, help="simulated crops per spec")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--photos", type=Path, default=None, help="prepared photos (the selection photos are used)")
    a = ap.parse_args()
    named = {}
    for folder in a.real:
        named[f"real: {folder.name}"] = real_stats(folder)
    for spec in a.sim:
        named[f"sim: {spec}"] = sim_stats(spec, a.n, a.seed, a.photos)
    print("Residual statistics on the 0-255 scale; luma/chroma as YCbCr standard deviations; corrN: luma "
          "autocorrelation at N px; xcorr: mean correlation of the R, G, B residuals; low: share of luma "
          "energy below 1/8 cycle/px.\n")
    print(table(named))


if __name__ == "__main__":
    main()
