"""Camera developments for the benchmark: the held-out pipelines, and training's own for comparison.

Held out from training (`denoise_core.noise.pipeline.TRAIN_SETTINGS`) on purpose, so that a model that
only memorized the simulator does not score well here:

- demosaicing by LibRaw (AHD, DHT, AAHD through rawpy), not by the simulator's own four;
- sharpening by a 3x3 Laplacian kernel, or an unsharp mask of radius 2.0 (training: 0.5-1.5);
- JPEG with 4:2:2 chroma (training: 4:2:0 and 4:4:4);
- cameras of makers training never draws (`pipeline.HELDOUT_MAKERS`).

Each condition fixes the development except what is drawn per crop from the crop's seed (camera,
ISO, colour matrix, white balance, JPEG quality). The reference is the same development of the
noise-free mosaic, as in training.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import replace

import numpy as np
import torch

from denoise_core.noise import pipeline as P
from denoise_core.noise.pipeline import Development

HELD_OUT = {
    "held-out PNG": dict(demosaic="libraw-ahd", curve="srgb", sharpen="laplacian", sharpen_amount=0.5,
                         sharpen_luma=True, chroma_nr=0.0, output="png8"),
    "held-out JPEG": dict(demosaic="libraw-dht", curve="base", curve_param=1.5, sharpen="usm", sharpen_radius=2.0,
                          sharpen_amount=0.6, sharpen_luma=True, chroma_nr=0.0, output="jpeg",
                          jpeg_subsampling="4:2:2"),
    "held-out JPEG + NR": dict(demosaic="libraw-aahd", curve="srgb-s", curve_param=0.3, sharpen="usm",
                               sharpen_radius=2.0, sharpen_amount=0.4, sharpen_luma=False, chroma_nr=2.5,
                               output="jpeg", jpeg_subsampling="4:2:2"),
}
HELD_OUT_ISO = (6400, 12800)
HELD_OUT_EV = 1.0
HELD_OUT_JPEG_Q = (85, 90)


def libraw_demosaic(algorithm: str):
    """A demosaic function (N=1 RGGB mosaic tensor -> RGB) that runs LibRaw's `algorithm` on a DNG."""
    import rawpy
    from denoise_core.raw.rawfile import write_bayer_dng

    algo = getattr(rawpy.DemosaicAlgorithm, algorithm.upper())
    headroom = 4.0  # white-balanced, pushed mosaics exceed 1; LibRaw clips at the white level

    def run(m: torch.Tensor) -> torch.Tensor:
        a = np.clip(m[0, 0].double().numpy() / headroom, 0, 1)
        with tempfile.TemporaryDirectory() as tmp:
            p = os.path.join(tmp, "m.dng")
            write_bayer_dng(p, np.round(a * 65535).astype(np.uint16), make="Bench", model="Mosaic", iso=100)
            with rawpy.imread(p) as r:
                rgb = r.postprocess(demosaic_algorithm=algo, output_color=rawpy.ColorSpace.raw, gamma=(1, 1),
                                    no_auto_bright=True, use_camera_wb=False, use_auto_wb=False,
                                    user_wb=[1, 1, 1, 1], output_bps=16, user_flip=0)
        t = torch.from_numpy(rgb.astype(np.float32) / 65535 * headroom).permute(2, 0, 1)[None]
        return t.to(m.dtype)
    return run


def _demosaic_fn(name: str):
    return libraw_demosaic(name.split("-", 1)[1]) if name.startswith("libraw-") else P.DEMOSAICS[name]


def develop_pair(clean_u8: np.ndarray, condition: str, seed: int, *, cameras: str = "heldout",
                 overrides: dict | None = None) -> tuple[np.ndarray, np.ndarray, Development]:
    """(noisy uint8, reference float HxWx3 in [0, 1], the development) for one crop. For a held-out
    condition, `overrides` replaces some of its fixed settings and `cameras` is the camera set drawn
    from (`bench/factors.py` swaps one held-out factor at a time back to what training draws)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(clean_u8.astype(np.float32) / 255).permute(2, 0, 1)[None]
    if condition == "training settings":
        d = P.draw_development(gen)  # everything as training draws it (photos are still unseen)
        demosaic = P.DEMOSAICS[d.demosaic]
    else:
        fixed = {**HELD_OUT[condition], **(overrides or {})}
        base = P.draw_development(gen, replace(P.TRAIN_SETTINGS, cameras=cameras, iso=HELD_OUT_ISO))
        q = int(torch.randint(HELD_OUT_JPEG_Q[0], HELD_OUT_JPEG_Q[1] + 1, (1,), generator=gen))
        d = replace(base, ev_push=HELD_OUT_EV, clip_black=True, downscale=1.0, jpeg_quality=q,
                    curve_param=fixed.get("curve_param", 0.0), **{k: v for k, v in fixed.items() if k != "curve_param"})
        demosaic = _demosaic_fn(d.demosaic)
    noisy, target = P.simulate(x, d, gen, demosaic=demosaic)
    if d.output != "jpeg":  # 16-bit outputs are scored as the 8-bit files a benchmark reads
        noisy = torch.round(noisy.clamp(0, 1) * 255) / 255
    n = np.round(noisy[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    return n, target[0].permute(1, 2, 0).numpy().astype(np.float32), d


def describe(d: Development) -> str:
    out = {"jpeg": f"JPEG q{d.jpeg_quality} {d.jpeg_subsampling}", "png8": "PNG 8-bit", "png16": "16-bit"}[d.output]
    sh = "no sharpening" if d.sharpen == "none" else f"{d.sharpen} r{d.sharpen_radius:.1f} x{d.sharpen_amount:.1f}"
    nr = f", chroma NR {d.chroma_nr:.1f}" if d.chroma_nr else ""
    return (f"{d.camera.maker} {d.camera.model} ISO {d.camera.iso:.0f} +{d.ev_push:.1f} EV, {d.demosaic}, "
            f"{d.curve}, {sh}{nr}, {out}")


__all__ = ["HELD_OUT", "develop_pair", "describe", "libraw_demosaic"]
