"""Noisy/clean training pairs: matching files by name, checking and aligning each pair.

Real pairs (one scene shot at high and at base ISO) are never pixel-identical. For each pair this
module checks size and colour/grayscale agreement, estimates the global shift (phase correlation
on luminance, coarse on a downscaled copy, then refined at full resolution), crops both images to
their overlap when the shift is small and rejects the pair when it is not, rejects a pair whose
aligned images hardly correlate (not the same scene), and fits a per-channel gain and offset from
clean to noisy in linear light on box-downscaled copies (so the noise averages out and does not
bias the fit). The clean image is corrected, not the noisy one: the target must have the noisy
image's exposure so the net learns to remove noise, not to re-expose.

Shift convention: a shift (dy, dx) means noisy[y, x] shows what clean[y - dy, x - dx] shows.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..imaging.imageio import SUPPORTED_EXTENSIONS, ImageReadError, read_image
from ..noise.synth import linear_to_srgb, srgb_to_linear


class PairError(ValueError):
    pass


@dataclass(frozen=True)
class PairCheck:
    max_shift: int = 8              # full-resolution pixels; a pair shifted by more is rejected
    min_correlation: float = 0.5    # of aligned, downscaled luminance; below it: not the same scene
    max_gain: float = 8.0           # exposure gains outside [1/max_gain, max_gain] are rejected


@dataclass
class PairInfo:
    name: str
    noisy_path: Path
    clean_path: Path
    shift: tuple[int, int]
    size: tuple[int, int]           # (width, height) of the aligned overlap
    correlation: float
    gain: tuple[float, ...]
    offset: tuple[float, ...]

    def describe(self) -> str:
        parts = [f"{self.name}: {self.size[0]}x{self.size[1]}"]
        if self.shift != (0, 0):
            parts.append(f"shifted by (dy={self.shift[0]:+d}, dx={self.shift[1]:+d}) px, cropped to the overlap")
        if any(abs(g - 1) > 0.01 for g in self.gain) or any(abs(o) > 0.005 for o in self.offset):
            gains = "/".join(f"{g:.3f}" for g in self.gain)
            offs = "/".join(f"{o:+.4f}" for o in self.offset)
            parts.append(f"exposure corrected (gain {gains}, offset {offs})")
        parts.append(f"correlation {self.correlation:.3f}")
        return ", ".join(parts)


@dataclass
class Pair:
    info: PairInfo
    noisy: np.ndarray   # (H, W, C) in the file's dtype
    clean: np.ndarray   # (H, W, C) uint16 target, aligned to `noisy` and at its exposure


# --------------------------------------------------------------------------- files
def image_files(folder: str | os.PathLike) -> list[Path]:
    d = Path(folder)
    if not d.is_dir():
        raise PairError(f"{d}: not a folder" if d.exists() else f"{d}: no such folder")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS)
    if not files:
        raise PairError(f"{d}: no images in this folder (looked for {', '.join(SUPPORTED_EXTENSIONS)})")
    return files


def match_files(noisy_dir: str | os.PathLike, clean_dir: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """Pair files by name without extension (case-insensitive); every file must find a partner."""
    def by_stem(folder) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for p in image_files(folder):
            key = p.stem.lower()
            if key in out:
                raise PairError(f"{folder}: {out[key].name} and {p.name} have the same name; "
                                f"pairs are matched by name, so keep one of them")
            out[key] = p
        return out

    noisy, clean = by_stem(noisy_dir), by_stem(clean_dir)
    lonely = [f"  {noisy[k]} (no clean file named {noisy[k].stem}.*)" for k in sorted(set(noisy) - set(clean))]
    lonely += [f"  {clean[k]} (no noisy file named {clean[k].stem}.*)" for k in sorted(set(clean) - set(noisy))]
    if lonely:
        raise PairError(f"{len(lonely)} file(s) without a partner (pairs are matched by file name):\n"
                        + "\n".join(lonely))
    return [(noisy[k].stem, noisy[k], clean[k]) for k in sorted(noisy)]


def load_pairs(noisy_dir: str | os.PathLike, clean_dir: str | os.PathLike,
               check: PairCheck = PairCheck()) -> list[Pair]:
    """Read, check and align every pair; all problems are reported together in one PairError."""
    pairs, problems = [], []
    for name, np_path, cp_path in match_files(noisy_dir, clean_dir):
        try:
            noisy, clean = read_image(np_path).pixels, read_image(cp_path).pixels
            pairs.append(align_pair(name, noisy, clean, check, paths=(np_path, cp_path)))
        except (ImageReadError, PairError) as e:
            problems.append(f"  {e}")
    if problems:
        raise PairError(f"{len(problems)} of the pairs cannot be used:\n" + "\n".join(problems))
    return pairs


# --------------------------------------------------------------------------- checks
def align_pair(name: str, noisy: np.ndarray, clean: np.ndarray, check: PairCheck = PairCheck(),
               *, paths: tuple[Path, Path] | None = None) -> Pair:
    noisy, clean = _hwc(noisy), _hwc(clean)
    np_path, cp_path = paths or (Path(name), Path(name))
    label = f"{np_path.name} / {cp_path.name}" if paths else name
    (h, w, c), (hc, wc, cc) = noisy.shape, clean.shape
    if (h, w) != (hc, wc):
        raise PairError(f"{label}: sizes differ (noisy {w}x{h}, clean {wc}x{hc})")
    if c != cc:
        kind = {1: "grayscale", 3: "colour"}
        raise PairError(f"{label}: noisy is {kind[c]}, clean is {kind[cc]}; both must be colour or both grayscale")
    fn, fc = to_unit(noisy), to_unit(clean)
    dy, dx = estimate_shift(fn, fc)
    sn, sc = overlap_slices((h, w), (dy, dx) if abs(dy) < h // 2 and abs(dx) < w // 2 else (0, 0))
    corr = scene_correlation(fn[sn], fc[sc])
    if corr < check.min_correlation:
        raise PairError(f"{label}: these do not look like the same scene (correlation {corr:.2f} after "
                        f"the best alignment, need {check.min_correlation:.2f})")
    if max(abs(dy), abs(dx)) > check.max_shift:
        raise PairError(f"{label}: the images are shifted by (dy={dy:+d}, dx={dx:+d}) px, more than the "
                        f"{check.max_shift} px this tool crops away; align them first")
    sn, sc = overlap_slices((h, w), (dy, dx))
    noisy, fn, fc = noisy[sn], fn[sn], fc[sc]
    gain, offset = fit_exposure(fn, fc)
    if not all(1 / check.max_gain <= g <= check.max_gain for g in gain):
        raise PairError(f"{label}: exposures differ by a gain of {'/'.join(f'{g:.2f}' for g in gain)}; "
                        f"not a usable pair (limit {check.max_gain:g}x)")
    target = apply_exposure(fc, gain, offset)
    info = PairInfo(name, np_path, cp_path, (dy, dx), (noisy.shape[1], noisy.shape[0]), corr, gain, offset)
    return Pair(info, noisy, target)


def to_unit(a: np.ndarray) -> np.ndarray:
    """Pixels as float32 in [0, 1]."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    return np.clip(a.astype(np.float32), 0.0, 1.0)


def _hwc(a: np.ndarray) -> np.ndarray:
    return a[..., None] if a.ndim == 2 else a


def _luma(a: np.ndarray) -> np.ndarray:
    return a.mean(axis=2, dtype=np.float64) if a.ndim == 3 else a.astype(np.float64)


def _box_down(a: np.ndarray, f: int) -> np.ndarray:
    if f <= 1:
        return a
    h, w = a.shape[0] // f * f, a.shape[1] // f * f
    a = a[:h, :w]
    return a.reshape(h // f, f, w // f, f, *a.shape[2:]).mean(axis=(1, 3))


def overlap_slices(shape: tuple[int, int], shift: tuple[int, int]) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices of noisy and of clean that cover the same scene under `shift`."""
    (h, w), (dy, dx) = shape, shift
    sn = (slice(max(0, dy), h + min(0, dy)), slice(max(0, dx), w + min(0, dx)))
    sc = (slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
    return sn, sc


def _phase_correlation(a: np.ndarray, b: np.ndarray, lowpass: float = 0.2) -> tuple[int, int]:
    """Integer (dy, dx) with a[y, x] ~ b[y - dy, x - dx], from the whitened cross-power spectrum.

    A Gaussian low-pass weight on the spectrum (sigma `lowpass` cycles/pixel) keeps noise-dominated
    high frequencies from swamping the peak.
    """
    h, w = a.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    fa = np.fft.rfft2((a - a.mean()) * win)
    fb = np.fft.rfft2((b - b.mean()) * win)
    cross = fa * np.conj(fb)
    cross /= np.abs(cross) + 1e-12
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    cross *= np.exp(-(fy ** 2 + fx ** 2) / (2 * lowpass ** 2))
    r = np.fft.irfft2(cross, s=(h, w))
    py, px = np.unravel_index(int(np.argmax(r)), r.shape)
    return int(py - h if py > h // 2 else py), int(px - w if px > w // 2 else px)


def estimate_shift(noisy: np.ndarray, clean: np.ndarray, *, coarse_size: int = 512,
                   fine_size: int = 1024) -> tuple[int, int]:
    """Global integer shift of `noisy` against `clean` (see the module docstring for the sign)."""
    ln, lc = _luma(noisy), _luma(clean)
    h, w = ln.shape
    f = max(1, -(-max(h, w) // coarse_size))
    dy, dx = _phase_correlation(_box_down(ln, f), _box_down(lc, f))
    dy, dx = dy * f, dx * f
    if f == 1 or abs(dy) >= h // 2 or abs(dx) >= w // 2:
        return dy, dx
    sn, sc = overlap_slices((h, w), (dy, dx))
    a, b = ln[sn], lc[sc]
    ch, cw = min(fine_size, a.shape[0]), min(fine_size, a.shape[1])
    y0, x0 = (a.shape[0] - ch) // 2, (a.shape[1] - cw) // 2
    ry, rx = _phase_correlation(a[y0:y0 + ch, x0:x0 + cw], b[y0:y0 + ch, x0:x0 + cw])
    return dy + ry, dx + rx


def _analysis_factor(shape: tuple[int, ...]) -> int:
    """Box-downscale factor for statistics: averages noise away, keeps >= ~64 px per side."""
    return int(max(1, min(4, min(shape[0], shape[1]) // 64)))


def scene_correlation(noisy: np.ndarray, clean: np.ndarray) -> float:
    """Pearson correlation of the downscaled luminance of two aligned images of equal size."""
    f = _analysis_factor(noisy.shape)
    a, b = _box_down(_luma(noisy), f).ravel(), _box_down(_luma(clean), f).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def fit_exposure(noisy: np.ndarray, clean: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel least-squares gain and offset in linear light with lin(noisy) ~ g*lin(clean) + o.

    Fitted on box-downscaled copies. Pixels are chosen by the clean value and the fit's prediction,
    never by the noisy value (selecting on the noisy side would bias the slope): a first fit on
    everything not near black or white in the clean image, then a refit leaving out pixels
    predicted within about two noise deviations of black or white, where clipping biases the mean.
    """
    f = _analysis_factor(noisy.shape)
    dn, dc = _box_down(noisy, f), _box_down(clean, f)
    lo = min(0.25, max(0.02, 2.0 * noise_sigma(noisy)))
    ln = srgb_to_linear(torch.from_numpy(np.ascontiguousarray(dn, np.float64))).numpy()
    lc = srgb_to_linear(torch.from_numpy(np.ascontiguousarray(dc, np.float64))).numpy()
    gains, offsets = [], []
    for ch in range(dn.shape[2]):
        x, y = lc[..., ch].ravel(), ln[..., ch].ravel()
        ok = (dc[..., ch].ravel() > 0.02) & (dc[..., ch].ravel() < 0.98)
        g, o = _line_fit(x[ok], y[ok])
        pred = linear_to_srgb(torch.from_numpy(g * x + o)).numpy()
        ok2 = ok & (pred > lo) & (pred < 1 - lo)
        if ok2.sum() >= 16:
            g, o = _line_fit(x[ok2], y[ok2])
        gains.append(g)
        offsets.append(o)
    return tuple(gains), tuple(offsets)


def _line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if x.size < 16 or float(x.std()) < 1e-4:
        return 1.0, float(y.mean() - x.mean()) if x.size else 0.0
    g, o = np.polyfit(x, y, 1)
    return float(g), float(o)


def noise_sigma(img: np.ndarray) -> float:
    """Rough noise deviation: robust (MAD) spread of horizontal neighbour differences (every 4th row)."""
    d = np.diff(img[::4], axis=1)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def apply_exposure(clean: np.ndarray, gain, offset) -> np.ndarray:
    """Clean float image brought to the noisy exposure, as uint16."""
    lin = srgb_to_linear(torch.from_numpy(np.ascontiguousarray(clean)))
    g = torch.tensor(gain, dtype=lin.dtype)
    o = torch.tensor(offset, dtype=lin.dtype)
    out = linear_to_srgb(lin * g + o).numpy()
    return np.round(out * 65535.0).astype(np.uint16)
