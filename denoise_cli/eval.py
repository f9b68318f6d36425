"""`denoise-eval`: measure a model on noisy/clean pairs.

    denoise-eval --noisy high_iso/ --clean base_iso/ --model unet [--compare-dir cmp/]

Pairs are matched, checked, aligned and exposure-matched exactly as for training
(denoise_core.training.pairs). Prints per-image and mean PSNR/SSIM of the noisy input and of the denoised
result against the clean image; --compare-dir gets a noisy | denoised | clean PNG per pair (a
central crop of at most 1024 px, written atomically). Exit status: 0 done, 1 failure, 2 bad usage
or input, 130 on Ctrl-C, 143/129 on SIGTERM/SIGHUP (no temp file is left).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import click
import numpy as np
import torch

from denoise_core.inference.api import DEFAULT_TILE, Denoiser, ModelNotFoundError
from denoise_core.imaging.atomic import Terminated, signals_as_interrupts
from denoise_core.inference.checkpoint import CheckpointError
from denoise_core.inference.device import DEVICES, PRECISIONS, use_all_cores
from denoise_core.training.metrics import ssim
from denoise_core.training.pairs import PairCheck, PairError, load_pairs, to_unit
from denoise_core.training.train import save_comparison

from .suggest import did_you_mean


class InputError(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"denoise-eval: error: {self.format_message()}", err=True)


def image_metrics(a: np.ndarray, b: np.ndarray, band: int = 256) -> tuple[float, float]:
    """PSNR and SSIM of two (H, W, C) float images in [0, 1], in row bands to bound memory."""
    h, w = a.shape[:2]
    sse = sum(float(np.square(a[y:y + band] - b[y:y + band], dtype=np.float64).sum()) for y in range(0, h, band))
    mse = sse / a.size
    p = float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)
    total, count = 0.0, 0
    for c0 in range(5, h - 5, band):  # rows of SSIM window centres; each band reads 5 rows of context
        c1 = min(h - 5, c0 + band)
        ta, tb = (torch.from_numpy(np.ascontiguousarray(x[c0 - 5:c1 + 5])).permute(2, 0, 1)[None] for x in (a, b))
        n = (c1 - c0) * (w - 10)
        total += ssim(ta, tb) * n
        count += n
    return p, (total / count if count else float("nan"))


def _center_crop(a: np.ndarray, size: int = 1024) -> np.ndarray:
    h, w = a.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return a[y:y + size, x:x + size]


@click.command(name="denoise-eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--noisy", type=click.Path(path_type=Path), metavar="DIR", required=True, help="Folder of noisy photos.")
@click.option("--clean", type=click.Path(path_type=Path), metavar="DIR", required=True,
              help="Folder of clean photos, same names.")
@click.option("--model", default="default", show_default=True,
              help="Shipped model name (default, unet, fast, seed) or a checkpoint file.")
@click.option("--compare-dir", type=click.Path(path_type=Path, file_okay=False), metavar="DIR",
              help="Write noisy | denoised | clean comparison PNGs here.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Arithmetic of the convolutions (see denoise-batch --help).")
@click.option("--tile", type=click.IntRange(64), default=DEFAULT_TILE, show_default=True)
@click.option("--max-shift", type=click.IntRange(0), default=PairCheck.max_shift, show_default=True,
              help="Largest misalignment (px) of a pair that is cropped away instead of rejected.")
def main(noisy, clean, model, compare_dir, device, precision, tile, max_shift) -> None:
    """Per-image and mean PSNR/SSIM of noisy input and denoised output against clean references."""
    use_all_cores()
    try:
        dn = Denoiser(model, device=device, tile=tile, precision=precision)
    except ModelNotFoundError as e:
        raise InputError(f"{e}{did_you_mean(model)}") from None
    except (CheckpointError, ValueError) as e:
        raise InputError(str(e)) from None
    try:
        pairs = load_pairs(noisy, clean, PairCheck(max_shift=max_shift))
    except PairError as e:
        raise InputError(str(e)) from None
    if compare_dir is not None:
        compare_dir.mkdir(parents=True, exist_ok=True)
    width = max(8, *(len(p.info.name) for p in pairs))
    click.echo(f"{'image':<{width}}  {'noisy PSNR':>10}  {'denoised PSNR':>13}  {'noisy SSIM':>10}  "
               f"{'denoised SSIM':>13}")
    try:
        with signals_as_interrupts():
            _evaluate(dn, pairs, width, compare_dir)
    except KeyboardInterrupt as e:
        click.echo(f"denoise-eval: interrupted{f' ({e.args[0]})' if isinstance(e, Terminated) else ''}", err=True)
        sys.exit(128 + e.signum if isinstance(e, Terminated) else 130)


def _evaluate(dn: Denoiser, pairs, width: int, compare_dir: Path | None) -> None:
    rows = []
    for p in pairs:
        click.echo(f"  {p.info.describe()}", err=True)
        den = dn.denoise(p.noisy)
        n, d, c = to_unit(p.noisy), to_unit(den), to_unit(p.clean)
        (pn, sn), (pd, sd) = image_metrics(n, c), image_metrics(d, c)
        rows.append((pn, pd, sn, sd))
        click.echo(f"{p.info.name:<{width}}  {pn:>10.2f}  {pd:>13.2f}  {sn:>10.4f}  {sd:>13.4f}")
        if compare_dir is not None:
            save_comparison(compare_dir / f"{p.info.name}.png", *(_center_crop(x) for x in (n, d, c)),
                            labels=(f"noisy {pn:.2f} dB", f"denoised ({dn.path.stem}) {pd:.2f} dB", "clean"))
    m = np.mean(np.array(rows), axis=0)
    click.echo(f"{'mean':<{width}}  {m[0]:>10.2f}  {m[1]:>13.2f}  {m[2]:>10.4f}  {m[3]:>13.4f}")


if __name__ == "__main__":
    main(prog_name="denoise-eval")
