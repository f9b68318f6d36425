"""Quality benchmark: our models against FFDNet and CBM3D on photos never trained on or selected on.

The benchmark photos (`denoise_core.training.photos.BENCHMARK`: never trained on, never used to pick
weights, 2x box-downscaled) are cut into crops (default: 2 per photo, up to 512x512). Each crop gets

- Gaussian noise, sigma 15, 25 and 50 (0-255 scale);
- the simulator's own camera noise (`camera:` specs, part of every training mix, so this measures
  how well the simulator is learnt, not real cameras): darktable noise profiles through the
  unprocessing pipeline of `denoise_core.noise.synth` for several cameras (default: Canon EOS 5D Mark
  III, Nikon D750, Sony ILCE-7M3, Panasonic DC-G9), ISO log-uniform in 6400-25600, exposure pushed
  0-2 EV, random white balance and colour matrix;
- camera developments (`bench/pipelines.py`): signal and noise through a whole camera pipeline,
  once with training's own settings and three times with pipelines held out of training (LibRaw
  demosaics, other sharpening, 4:2:2 JPEG, cameras training never draws), scored against the
  noise-free development; the held-out ones are reported apart and are what generalization means;
- a clean crop saved as JPEG q95, scored against itself (a clean photo must pass unchanged);

every noisy input clipped and quantized to 8 bits, as a saved PNG is, all drawn from fixed seeds.
Our models are blind (never told the noise) and run through `Denoiser.denoise` on the uint8 input
(uint8 out). FFDNet is told the true sigma on Gaussian noise; on camera noise its sigma is chosen
per image by an oracle, the best PSNR over a grid. CBM3D is told the true sigma (camera noise: only
with --cbm3d-camera, at FFDNet's oracle sigma). Baseline outputs are clipped and rounded to 8 bits
like ours. Throughput (MP/s) is timed on the Gaussian runs (one call per image; the oracle search
is not timed).

    .venv/bin/python bench/quality.py --photos /work/data/prepared          # the full run
    .venv/bin/python bench/quality.py --quick --no-cbm3d                    # a quick look

The main model also runs told a noise level (`--levels`, two passes) on every condition.

Prints Markdown tables (results, per camera, developments, targets met or missed and by how much) and writes
`quality.md`, `quality.json`, the quality-vs-speed plot `quality_speed.png` and comparison crops
`crops_*.png` (noisy | ours | FFDNet | CBM3D | clean) into --out (default docs/bench).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from baselines import CBM3D, FFDNet, INSTALL_HINT, best_sigma, try_load  # noqa: E402
from pipelines import HELD_OUT, describe, develop_pair  # noqa: E402

from denoise_core.inference.api import DEFAULT_MODEL, Denoiser, shipped_models  # noqa: E402
from denoise_core.training.metrics import psnr, ssim  # noqa: E402
from denoise_core.noise.camera import find_camera  # noqa: E402
from denoise_core.noise.synth import NoiseSpec, apply_noise  # noqa: E402
from denoise_core.training.photos import BENCHMARK, SELECTION, download_packages, prepare  # noqa: E402

DEFAULT_PHOTOS = Path(os.environ.get("DENOISE_PHOTOS", "~/.cache/denoise-cnn/photos")).expanduser()
CAMERAS = ("Canon EOS 5D Mark III", "Nikon D750", "Sony ILCE-7M3", "Panasonic DC-G9")
SIGMAS = (15, 25, 50)
ISO_RANGE = (6400, 25600)
EV_RANGE = (0.0, 2.0)
ORACLE_GRID = (5, 7.5, 10, 12.5, 15, 17.5, 20, 25, 30, 35, 40, 50, 60, 75)
CROP_POSITIONS = ((0.5, 0.5), (0.2, 0.2), (0.8, 0.8), (0.2, 0.8), (0.8, 0.2))
DEVELOPMENTS = ("training settings", *HELD_OUT)
CLEAN_JPEG_Q = 95


# --------------------------------------------------------------------------- data
def ensure_photos(folder: Path) -> Path:
    """The prepared validation photos; downloaded (apt-get download) and prepared if missing."""
    missing = [n for n in BENCHMARK + SELECTION if not (folder / f"{n}.png").is_file()]
    if missing:
        print(f"{folder}: {len(missing)} validation photos missing; fetching the Debian photo packages "
              "(apt-get download, no root needed) and preparing them ...", file=sys.stderr, flush=True)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                root = download_packages(tmp)
                prepare(root, folder)
        except Exception as e:  # noqa: BLE001
            sys.exit(f"could not build {folder}: {e}\n(apt-get download needs package lists: "
                     "run `apt-get update` first, or pass --photos DIR with prepared photos)")
    return folder


def crops_of(img: np.ndarray, size: int, n: int) -> list[tuple[int, int, np.ndarray]]:
    h, w, _ = img.shape
    s = min(size, h, w) // 2 * 2
    out = []
    for fy, fx in CROP_POSITIONS[:n]:
        y, x = int(round(fy * (h - s))), int(round(fx * (w - s)))
        out.append((y, x, np.ascontiguousarray(img[y:y + s, x:x + s])))
    return out


def _seed(*parts) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


def to_t(a: np.ndarray) -> torch.Tensor:
    """(H, W, 3) array (uint8 or float 0-1) -> (1, 3, H, W) float32."""
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]


def to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(x, np.float32) * 255.0), 0, 255).astype(np.uint8)


def make_noisy(clean_u8: np.ndarray, cond: dict, seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    x = to_t(clean_u8)
    if cond["kind"] == "gaussian":
        spec = NoiseSpec(kind="gaussian", sigma=(cond["sigma"],) * 2)
    else:
        spec = NoiseSpec(kind="camera", camera=cond["camera"], iso=cond["iso"], ev=(cond["ev"],) * 2)
    y = apply_noise(x, spec, gen)  # clipped and quantized to 8 bits
    return to_u8(y[0].permute(1, 2, 0).numpy())


def jpeg_u8(clean_u8: np.ndarray, quality: int) -> np.ndarray:
    import io
    buf = io.BytesIO()
    Image.fromarray(clean_u8).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def oracle_search(run, ref_t: torch.Tensor):
    """FFDNet's best (PSNR, sigma, output) over ORACLE_GRID (baselines.best_sigma)."""
    return best_sigma(ORACLE_GRID, run, lambda o: psnr(to_t(o), ref_t))


# --------------------------------------------------------------------------- run
def score(out_u8: np.ndarray, clean_t: torch.Tensor) -> tuple[float, float]:
    o = to_t(out_u8)
    return psnr(o, clean_t), ssim(o, clean_t)


def _diff(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None else f"{a - b:+.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS,
                    help=f"folder of prepared photos (<name>.png); built if missing (default {DEFAULT_PHOTOS}, "
                         "or $DENOISE_PHOTOS)")
    ap.add_argument("--models", default="shipped",
                    help="our models: shipped names and/or checkpoint paths, comma-separated "
                         "(default: every shipped model)")
    ap.add_argument("--crops", type=int, default=None,
                    help="crops per photo (1-5; default 2, and 5 with --photo-set selection: its 3 photos x 2 "
                         "crops could not separate candidates a few tenths of a dB apart)")
    ap.add_argument("--size", type=int, default=512, help="crop side, at most (default 512)")
    ap.add_argument("--max-photos", type=int, default=0, help="use only the first N validation photos")
    ap.add_argument("--sigmas", default=",".join(map(str, SIGMAS)), help="Gaussian sigmas (default 15,25,50)")
    ap.add_argument("--cameras", default=";".join(CAMERAS), help="cameras, ';'-separated ('' for none)")
    ap.add_argument("--developments", default=";".join(DEVELOPMENTS),
                    help="camera developments, ';'-separated ('' for none): 'training settings' (drawn as "
                         f"training draws them) and the held-out pipelines {', '.join(HELD_OUT)} (bench/pipelines.py)")
    ap.add_argument("--levels", default="2",
                    help="noise levels to run the main model at as extra rows (models with a level input; '' for none)")
    ap.add_argument("--no-clean-jpeg", dest="clean_jpeg", action="store_false",
                    help=f"skip the clean-photo condition (a noise-free crop saved as JPEG q{CLEAN_JPEG_Q}, "
                         "scored against itself)")
    ap.add_argument("--no-ffdnet", action="store_true",
                    help="skip FFDNet (its oracle-sigma search is most of a run's time): for comparing our "
                         "own candidate weights")
    ap.add_argument("--no-cbm3d", action="store_true", help="skip CBM3D (about 27 s per 512x512 crop on 2 cores)")
    ap.add_argument("--cbm3d-camera", action="store_true",
                    help="also run CBM3D on camera noise, at FFDNet's oracle sigma")
    ap.add_argument("--photo-set", choices=("benchmark", "selection"), default="benchmark",
                    help="benchmark: the photos the README reports (never trained on, never used to pick "
                         "weights); selection: the model-selection photos (never trained on), to choose "
                         "between candidate weights without looking at the benchmark (default benchmark)")
    ap.add_argument("--quick", action="store_true", help="2 photos, 1 crop of 256 px, 2 cameras")
    ap.add_argument("--out", type=Path, default=None,
                    help="where quality.md, quality.json, the plot and the crops go (default docs/bench; "
                         "with --quick a temporary folder, so a quick look never overwrites the full results)")
    ap.add_argument("--json", type=Path, metavar="OUT",
                    help="also save the results (summary, throughput, per-image numbers) as JSON here")
    ap.add_argument("--save-inputs", type=Path, help="also save every noisy input as an 8-bit PNG here")
    ap.add_argument("--tile", type=int, default=0, help="tile size for our models (default: the Denoiser's)")
    ap.add_argument("--precision", default="auto", help="our models' precision (default auto, as users get it)")
    ap.add_argument("--speed", type=Path, metavar="JSON",
                    help="throughput from `bench/speed.py --json FILE` (full-size images) for the plot and the "
                         "speed target, instead of the throughput timed on the crops")
    args = ap.parse_args(argv)
    if args.crops is None:
        args.crops = 5 if args.photo_set == "selection" else 2
    if args.quick:
        args.max_photos, args.crops, args.size = args.max_photos or 2, 1, min(args.size, 256)
        if args.cameras == ";".join(CAMERAS):
            args.cameras = ";".join(CAMERAS[:2])
        if args.developments == ";".join(DEVELOPMENTS):
            args.developments = ";".join(DEVELOPMENTS[:3])
    if args.out is None:
        if args.quick or args.photo_set != "benchmark":  # never overwrite the README's results
            args.out = Path(tempfile.gettempdir()) / f"denoise-bench-{'quick' if args.quick else args.photo_set}"
        else:
            args.out = ROOT / "docs" / "bench"
    torch.manual_seed(0)

    # methods
    if args.models == "shipped":
        names = sorted(shipped_models(), key=lambda n: (n == "seed", n != DEFAULT_MODEL, n))
    else:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
    ours = {}
    for n in names:
        dn = Denoiser(n, device="cpu", precision=args.precision, **({"tile": args.tile} if args.tile else {}))
        label = n if n in shipped_models() else Path(n).stem
        ours[label] = dn
    if not ours:
        sys.exit("no models to measure (no shipped weights found and no --models given)")
    main_model = DEFAULT_MODEL if DEFAULT_MODEL in ours else next(iter(ours))
    ffd = None if args.no_ffdnet else try_load(FFDNet, warn=lambda m: print(m, file=sys.stderr))
    cbm = None if args.no_cbm3d else try_load(CBM3D, warn=lambda m: print(m, file=sys.stderr))

    conds = [{"name": f"σ={s:g}", "kind": "gaussian", "sigma": float(s)}
             for s in (float(v) for v in args.sigmas.split(",") if v.strip())]
    cameras = [c.strip() for c in args.cameras.split(";") if c.strip()]
    for c in cameras:
        find_camera(c, ISO_RANGE[0]), find_camera(c, ISO_RANGE[1])  # validate names and ISO range early

    developments = [d.strip() for d in args.developments.split(";") if d.strip()]
    for d in developments:
        if d not in DEVELOPMENTS:
            sys.exit(f"unknown development {d!r}; choose from {', '.join(DEVELOPMENTS)}")
    level_methods = {}
    if ours[main_model].has_levels:
        level_methods = {f"{main_model} @ level {float(v):g}": float(v) for v in args.levels.split(",") if v.strip()}
    elif args.levels.strip():
        print(f"note: {main_model} has no noise-level input; no level rows", file=sys.stderr)

    photos_dir = ensure_photos(args.photos.expanduser())
    photo_set = BENCHMARK if args.photo_set == "benchmark" else SELECTION
    photo_names = photo_set[:args.max_photos] if args.max_photos else photo_set
    items = []  # (photo, crop index, y, x, clean uint8)
    for name in photo_names:
        img = np.asarray(Image.open(photos_dir / f"{name}.png").convert("RGB"))
        for k, (y, x, c) in enumerate(crops_of(img, args.size, args.crops)):
            items.append((name, k, y, x, c))
    if args.save_inputs:
        args.save_inputs.mkdir(parents=True, exist_ok=True)

    res: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))  # method -> cond -> [(psnr, ssim)]
    timing: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # method -> [seconds, MP]
    oracle_sigmas: dict[str, list[float]] = defaultdict(list)
    per_image = []
    figs = {}
    t_start = time.perf_counter()
    n_total = len(items) * (len(conds) + len(cameras) + len(developments) + bool(args.clean_jpeg))
    n_done = 0

    def timed(method, fn, mp, count):
        t0 = time.perf_counter()
        out = fn()
        if count:
            timing[method][0] += time.perf_counter() - t0
            timing[method][1] += mp
        return out

    # warm-up, untimed: the first call of a model pays for oneDNN kernel selection
    wu = items[0][4]
    for dn in ours.values():
        dn.denoise(wu)
    if ffd is not None:
        ffd(wu.astype(np.float32) / 255.0, 25.0)

    for name, k, y, x, clean in items:
        clean_t = to_t(clean)
        mp = clean.shape[0] * clean.shape[1] / 1e6
        item_conds = list(conds)
        for cam in cameras:
            rng = np.random.default_rng(_seed(name, k, cam))
            iso = float(round(math.exp(rng.uniform(math.log(ISO_RANGE[0]), math.log(ISO_RANGE[1])))))
            ev = float(round(rng.uniform(*EV_RANGE), 2))
            item_conds.append({"name": f"camera: {cam}", "kind": "camera", "camera": cam, "iso": iso, "ev": ev})
        item_conds += [{"name": dv, "kind": "develop"} for dv in developments]
        if args.clean_jpeg:
            item_conds.append({"name": f"clean JPEG q{CLEAN_JPEG_Q}", "kind": "clean"})
        for cond in item_conds:
            ref_t = clean_t
            if cond["kind"] == "develop":
                noisy, ref, dev = develop_pair(clean, cond["name"], _seed(name, k, cond["name"]))
                ref_t = to_t(ref)
                cond = {**cond, "development": describe(dev)}
            elif cond["kind"] == "clean":
                noisy = jpeg_u8(clean, CLEAN_JPEG_Q)
                ref_t = to_t(noisy)  # a clean photo must come back as it was given
            else:
                noisy = make_noisy(clean, cond, _seed(name, k, cond["name"], cond.get("iso"), cond.get("ev")))
            noisy_f = noisy.astype(np.float32) / 255.0
            if args.save_inputs:
                tag = cond["name"].replace("σ=", "sigma").replace("camera: ", "").replace(" ", "_")
                Image.fromarray(noisy).save(args.save_inputs / f"{name}_{k}_{tag}.png")
            gauss = cond["kind"] == "gaussian"
            rec = {"photo": name, "crop": k, "y": y, "x": x, "size": clean.shape[0], **cond}
            outs = {"noisy": noisy}
            rec["noisy"] = score(noisy, ref_t)
            for label, dn in ours.items():
                out = timed(label, lambda: dn.denoise(noisy), mp, gauss)
                outs[label] = out
                rec[label] = score(out, ref_t)
            for label, lv in level_methods.items():
                out = ours[main_model].denoise(noisy, noise_level=lv)
                outs[label] = out
                rec[label] = score(out, ref_t)
            sig_for_cbm = cond.get("sigma")
            if ffd is not None and cond["kind"] != "clean":
                if gauss:
                    out = to_u8(timed("FFDNet", lambda: ffd(noisy_f, cond["sigma"]), mp, True))
                    rec["FFDNet"] = score(out, ref_t)
                else:
                    best = oracle_search(lambda s: to_u8(ffd(noisy_f, s)), ref_t)
                    out = best[2]
                    rec["FFDNet"] = score(out, ref_t)
                    rec["FFDNet_sigma"] = best[1]
                    oracle_sigmas[cond["name"]].append(best[1])
                    sig_for_cbm = best[1]
                outs["FFDNet"] = out
            if cbm is not None and sig_for_cbm is not None and (gauss or args.cbm3d_camera):
                sigma_cbm = float(sig_for_cbm)
                out = to_u8(timed("CBM3D", lambda: cbm(noisy_f, sigma_cbm), mp, gauss))
                outs["CBM3D"] = out
                rec["CBM3D"] = score(out, ref_t)
            for m in ["noisy", *ours, *level_methods, "FFDNet", "CBM3D"]:
                if m in rec:
                    res[m][cond["name"]].append(rec[m])
                    if cond["kind"] == "camera":
                        res[m]["camera"].append(rec[m])
                    if cond["kind"] == "develop" and cond["name"] in HELD_OUT:
                        res[m]["held-out"].append(rec[m])
            per_image.append(rec)
            # comparison crops: the first crop of the first photo at sigma 25/50 and the first camera
            fig_name = None
            if (name, k) == (items[0][0], items[0][1]):
                if gauss and cond["sigma"] in (25.0, 50.0):
                    fig_name = f"sigma{cond['sigma']:g}"
                elif cond["kind"] == "camera" and cond["camera"] == cameras[0]:
                    fig_name = "camera"
                elif cond["kind"] == "develop":
                    fig_name = cond["name"].replace(" + ", "_").replace(" ", "_").lower()
            if fig_name:
                if "CBM3D" not in outs and cbm is not None and sig_for_cbm is not None:
                    outs["CBM3D"] = to_u8(cbm(noisy_f, sig_for_cbm))  # for the picture only
                    rec["CBM3D_picture_only"] = score(outs["CBM3D"], clean_t)
                figs[fig_name] = (cond, outs, clean, rec)
            n_done += 1
            el = time.perf_counter() - t_start
            print(f"[{n_done}/{n_total}] {name}#{k} {cond['name']}: "
                  + ", ".join(f"{m} {rec[m][0]:.2f}" for m in ["noisy", *ours, *level_methods, "FFDNet", "CBM3D"]
                              if m in rec)
                  + f"  ({el:.0f} s, ~{el / n_done * (n_total - n_done):.0f} s left)", file=sys.stderr, flush=True)

    # ----------------------------------------------------------------------- report
    methods = [m for m in ["noisy", *ours, *level_methods, "FFDNet", "CBM3D"] if m in res]
    cols = [c["name"] for c in conds] + (["camera"] if cameras else [])

    def mean(m, c, i=0):
        v = res[m].get(c)
        return float(np.mean([t[i] for t in v])) if v else None

    crop_mps = {m: (mp / s if s else None) for m, (s, mp) in timing.items()}
    speed_note = f"Throughput (MP/s) is timed on the {args.size}-px crops"
    speed_size = None
    if args.speed:
        full = speed_from_json(args.speed, {m: (ours[m].arch, ours[m].precision) for m in ours})
        if full:
            speed_size = full.pop("_size")
            speed_note = (f"Throughput (MP/s) from {args.speed} (`bench/speed.py`, {speed_size} images; CBM3D: "
                          f"timed on the crops); on the crops it was "
                          + ", ".join(f"{m} {v:.3g}" for m, v in crop_mps.items() if v))
            crop_mps.update(full)
        else:
            print(f"note: no usable FFDNet row in {args.speed}; using the throughput timed on the crops",
                  file=sys.stderr)

    def mps(m):
        return crop_mps.get(m)

    crop_desc = f"{len(items)} crops ({len(photo_names)} photos x up to {args.crops}, up to {args.size}x{args.size})"
    lines = [f"Benchmark: {crop_desc}; Gaussian {', '.join(c['name'] for c in conds)}; camera noise: "
             f"{', '.join(cameras) or 'none'}, ISO {ISO_RANGE[0]}-{ISO_RANGE[1]}, +{EV_RANGE[0]:g}-{EV_RANGE[1]:g} EV; "
             f"8-bit inputs. Our models in {', '.join(sorted({d.precision for d in ours.values()}))}. "
             f"FFDNet on camera noise: oracle sigma from {{{', '.join(map(str, ORACLE_GRID))}}}.", "",
             "Mean PSNR dB / SSIM:", "",
             "| method | " + " | ".join(cols) + " | MP/s |",
             "| --- | " + " | ".join("---:" for _ in cols) + " | ---: |"]
    for m in methods:
        cells = []
        for c in cols:
            p = mean(m, c)
            cells.append("—" if p is None else f"{p:.2f} / {mean(m, c, 1):.3f}")
        sp = mps(m)
        label = {"FFDNet": "FFDNet (true σ; camera: oracle σ)", "CBM3D": "CBM3D (true σ)",
                 "noisy": "noisy input"}.get(m, f"{m} (ours, {'told the level' if m in level_methods else 'blind'})")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'—' if sp is None else f'{sp:.3g}'} |")
    if cameras:
        lines += ["", "Camera noise, mean PSNR per camera (FFDNet's mean oracle σ in brackets):", "",
                  "| method | " + " | ".join(cameras) + " |", "| --- | " + " | ".join("---:" for _ in cameras) + " |"]
        for m in methods:
            cells = []
            for cam in cameras:
                p = mean(m, f"camera: {cam}")
                extra = ""
                if m == "FFDNet" and oracle_sigmas.get(f"camera: {cam}"):
                    extra = f" [{np.mean(oracle_sigmas[f'camera: {cam}']):.1f}]"
                cells.append("—" if p is None else f"{p:.2f}{extra}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")

    dev_cols = [*developments, *(["held-out"] if any(d in HELD_OUT for d in developments) else []),
                *([f"clean JPEG q{CLEAN_JPEG_Q}"] if args.clean_jpeg else [])]
    if dev_cols:
        lines += ["", "Camera developments (signal and noise demosaiced, toned, sharpened, encoded together; "
                  "the reference is the noise-free development). 'training settings' is drawn as training "
                  "draws it (in distribution, unseen photos); the held-out pipelines use settings training "
                  "never saw (bench/pipelines.py); 'held-out' is their mean. The clean column is a noise-free "
                  "crop saved as JPEG and scored against itself. Mean PSNR dB / SSIM:", "",
                  "| method | " + " | ".join(dev_cols) + " |", "| --- | " + " | ".join("---:" for _ in dev_cols) + " |"]
        for m in methods:
            cells = []
            for c in dev_cols:
                p = mean(m, c)
                extra = ""
                if m == "FFDNet" and oracle_sigmas.get(c):
                    extra = f" [σ {np.mean(oracle_sigmas[c]):.1f}]"
                cells.append("—" if p is None else f"{p:.2f} / {mean(m, c, 1):.3f}{extra}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")

    # targets
    tl = []
    for m in ours:
        if m == "seed":
            continue
        for c in conds:
            o, f, b = mean(m, c["name"]), mean("FFDNet", c["name"]), mean("CBM3D", c["name"])
            if f is not None:
                d = o - f
                tl.append(f"| {m} | {c['name']} | ≥ FFDNet | {o:.2f} vs {f:.2f} | {d:+.2f} dB "
                          f"| {'met' if d >= 0 else 'missed'} |")
            if b is not None:
                d = o - (b + 0.3)
                tl.append(f"| {m} | {c['name']} | ≥ CBM3D + 0.3 dB | {o:.2f} vs {b + 0.3:.2f} | {d:+.2f} dB "
                          f"| {'met' if d >= 0 else 'missed'} |")
        if cameras and mean("FFDNet", "camera") is not None:
            o, f = mean(m, "camera"), mean("FFDNet", "camera")
            d = o - (f + 0.5)
            tl.append(f"| {m} | camera | ≥ FFDNet (oracle σ) + 0.5 dB | {o:.2f} vs {f + 0.5:.2f} | {d:+.2f} dB "
                      f"| {'met' if d >= 0 else 'missed'} |")
        for c in [d for d in developments if d in HELD_OUT] + (["held-out"] if developments else []):
            o, f = mean(m, c), mean("FFDNet", c)
            if o is not None and f is not None:
                d = o - (f + 0.5)
                tl.append(f"| {m} | {c} | ≥ FFDNet (oracle σ) + 0.5 dB | {o:.2f} vs {f + 0.5:.2f} | {d:+.2f} dB | "
                          f"{'met' if d >= 0 else 'missed'} |")
        cj = mean(m, f"clean JPEG q{CLEAN_JPEG_Q}")
        if cj is not None:
            tl.append(f"| {m} | clean JPEG q{CLEAN_JPEG_Q} | ≥ 45 dB against the input | {cj:.2f} "
                      f"| {cj - 45:+.2f} dB | {'met' if cj >= 45 else 'missed'} |")
        ours_mps, ffd_mps = mps(m), mps("FFDNet")
        if ours_mps and ffd_mps:
            r = ours_mps / ffd_mps
            where = speed_size + " images" if speed_size else f"{args.size}-px crops"
            tl.append(f"| {m} | throughput ({where}) | ≥ 5× FFDNet | {ours_mps:.3g} vs {ffd_mps:.3g} MP/s "
                      f"| {r:.2f}× | {'met' if r >= 5 else 'missed'} ({r - 5:+.2f}×) |")
    if tl:
        lines += ["", "Targets (margin = ours minus the target):", "",
                  "| model | condition | target | ours vs target | margin | result |",
                  "| --- | --- | --- | --- | ---: | --- |", *tl]
    if level_methods:
        lv_cols = [c for c in ("held-out", *developments, "camera", *[c["name"] for c in conds]) if mean(main_model, c)]
        lines += ["", f"Noise-level control: {main_model} told a level (two passes) against blind, dB:", "",
                  "| rows | " + " | ".join(lv_cols) + " |", "| --- | " + " | ".join("---:" for _ in lv_cols) + " |"]
        for lm in level_methods:
            lines.append(f"| {lm} minus blind | " + " | ".join(
                _diff(mean(lm, c), mean(main_model, c)) for c in lv_cols) + " |")
    missing = [n for n, o in (("FFDNet", ffd), ("CBM3D", cbm)) if o is None and not (n == "CBM3D" and args.no_cbm3d)
               and not (n == "FFDNet" and args.no_ffdnet)]
    if missing:
        lines += ["", f"Not measured: {', '.join(missing)} (not installed: `{INSTALL_HINT}`)."]
    lines += ["", f"{speed_note}; load average at the end {os.getloadavg()[0]:.2f}. "
              f"Total time {time.perf_counter() - t_start:.0f} s."]
    report = "\n".join(lines)
    print("\n" + report)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.md").write_text(report + "\n")
    summary = {m: {c: {"psnr": mean(m, c), "ssim": mean(m, c, 1), "n": len(res[m].get(c, []))}
                   for c in [*cols, *dev_cols]} for m in methods}
    blob = json.dumps(
        {"summary": summary, "mp_per_s": {m: mps(m) for m in methods}, "cameras": cameras,
         "precision": {m: d.precision for m, d in ours.items()},
         "crops": crop_desc, "oracle_grid": ORACLE_GRID, "speed_source": str(args.speed or "crops"),
         "per_image": per_image}, indent=1, default=str)
    (args.out / "quality.json").write_text(blob)
    written = [args.out / "quality.md", args.out / "quality.json"]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(blob)
        written.append(args.json)
    xlabel = ("throughput on this CPU, MP/s, log scale"
              + (f" ({speed_size} images)" if speed_size else f" ({args.size}-px crops)"))
    written += plot(args.out / "quality_speed.png", methods, conds, cameras, mean, mps, xlabel)
    for fig_name, (cond, outs, clean, rec) in figs.items():
        p = args.out / f"crops_{fig_name}.png"
        comparison(p, cond, outs, clean, rec, main_model,
                   missing="not run (--no-cbm3d)" if args.no_cbm3d else f"not installed: {INSTALL_HINT}")
        written.append(p)
    print("\nwrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def speed_from_json(path: Path, archs: dict[str, tuple[str, str]]) -> dict:
    """MP/s per method from speed.py's JSON, at the largest size where FFDNet was measured, in the
    precision the method ran in here (`archs`: method -> (architecture, precision))."""
    rows = [r for r in json.loads(path.read_text())["rows"] if "mp_s" in r]
    ffd = [r for r in rows if r["arch"].startswith("FFDNet")]
    if not ffd:
        return {}
    size = max(round(r["mp"], 1) for r in ffd)
    at = {(r["arch"], r.get("precision", "fp32")): r["mp_s"] for r in rows if round(r["mp"], 1) == size}
    out = {m: at[key] for m, key in archs.items() if key in at}
    out["FFDNet"] = next(r["mp_s"] for r in ffd if round(r["mp"], 1) == size)
    out["_size"] = f"{size:g} MP"
    return out


# --------------------------------------------------------------------------- pictures
def plot(path: Path, methods, conds, cameras, mean, mps, xlabel: str) -> list[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"note: matplotlib missing, no plot ({INSTALL_HINT})", file=sys.stderr)
        return []
    panels = [("Gaussian σ " + "/".join(f"{c['sigma']:g}" for c in conds) + " (mean)", [c["name"] for c in conds])]
    if cameras:
        panels.append(("camera noise, ISO 6400–25600 (mean)", ["camera"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4), squeeze=False)
    colours = {"FFDNet": "tab:orange", "CBM3D": "tab:red", "seed": "tab:gray"}
    for ax, (title, keys) in zip(axes[0], panels):
        for m in methods:
            if m == "noisy" or not mps(m):
                continue
            vals = [mean(m, k) for k in keys]
            if any(v is None for v in vals):
                continue
            ax.scatter(mps(m), np.mean(vals), s=60, color=colours.get(m, "tab:blue"), zorder=3)
            ax.annotate(m, (mps(m), np.mean(vals)), textcoords="offset points", xytext=(6, 4))
        # the target region: at least 5x FFDNet's throughput and the PSNR bar
        f = [mean("FFDNet", k) for k in keys]
        if mps("FFDNet") and all(v is not None for v in f):
            bar = np.mean(f) + (0.5 if keys == ["camera"] else 0.0)
            b = [mean("CBM3D", k) for k in keys]
            if keys != ["camera"] and all(v is not None for v in b):
                bar = max(bar, np.mean(b) + 0.3)
            ax.axvline(5 * mps("FFDNet"), color="tab:green", ls="--", lw=1)
            ax.axhline(bar, color="tab:green", ls="--", lw=1)
            ax.annotate("target", (5 * mps("FFDNet"), bar), textcoords="offset points", xytext=(4, 4),
                        color="tab:green")
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter, NullFormatter
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.25, y=0.15)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("PSNR, dB")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _font(size: int):
    from PIL import ImageFont
    try:  # DejaVu Sans ships with matplotlib (a bench requirement) and has the Greek sigma
        from matplotlib import font_manager
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size), "σ"
    except Exception:  # noqa: BLE001
        return ImageFont.load_default(), "sigma "


def comparison(path: Path, cond: dict, outs: dict, clean: np.ndarray, rec: dict, ours: str,
               view: int = 192, zoom: int = 2, missing: str = "not run") -> None:
    """noisy | ours | FFDNet | CBM3D | clean, a centre region zoomed `zoom`x (nearest), PSNR in the labels."""
    h, w, _ = clean.shape
    v = min(view, h, w)
    y0, x0 = (h - v) // 2, (w - v) // 2
    panels = [("noisy", outs.get("noisy")), (ours, outs.get(ours)), ("FFDNet", outs.get("FFDNet")),
              ("CBM3D", outs.get("CBM3D")), ("clean", clean)]
    font, sig = _font(14)
    side, pad, top = v * zoom, 4, 20
    canvas = Image.new("RGB", (len(panels) * (side + pad) - pad, side + 2 * top), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, arr) in enumerate(panels):
        x = i * (side + pad)
        if arr is None:
            draw.rectangle([x, top, x + side - 1, top + side - 1], fill=(200, 200, 200))
            draw.text((x + 6, top + side // 2), missing, fill="black", font=font)
        else:
            crop = Image.fromarray(arr[y0:y0 + v, x0:x0 + v]).resize((side, side), Image.Resampling.NEAREST)
            canvas.paste(crop, (x, top))
        key = label if label in rec else f"{label}_picture_only"
        txt = label + (f"  {rec[key][0]:.2f} dB" if key in rec else "")
        if label in ("FFDNet", "CBM3D") and "FFDNet_sigma" in rec:
            txt += f" (oracle {sig}={rec['FFDNet_sigma']:g})"
        draw.text((x + 2, 2), txt, fill="black", font=font)
    desc = {"gaussian": lambda: f"Gaussian noise {sig}={cond['sigma']:g}",
            "camera": lambda: f"{cond['camera']} ISO {cond['iso']:g} +{cond['ev']:g} EV (the simulator's own noise)",
            "develop": lambda: f"{cond['name']}: {cond['development']}",
            "clean": lambda: cond["name"]}[cond["kind"]]()
    draw.text((2, top + side + 3), f"{rec['photo']} (crop {rec['crop']}, {v}x{v} px region shown {zoom}x): {desc}",
              fill="black", font=font)
    canvas.save(path, optimize=True)


if __name__ == "__main__":
    sys.exit(main())
