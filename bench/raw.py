"""Raw benchmark: synthetic DNGs of the held-out BENCHMARK photos at ISO 3200-25600 for several
profiled cameras; raw-domain denoising against developing first and denoising the sRGB result, and
against darktable's own *denoise (profiled)*.

Each photo (a crop of the prepared 2x-downscaled PNG) is unprocessed into a mosaic under a random
camera-like development (`pipeline.draw_development`: inverse tone curve, colour matrix, white
balance; exposure as shot), written twice as a 14-bit Bayer DNG: once clean and once with the
camera's darktable-profile noise per photosite (the DNG's ColorMatrix1 and AsShotNeutral are those
of the simulated camera, so raw converters develop it as that camera). Every method is scored
against the *same developer's* noise-free development of the clean DNG (PSNR/SSIM on 16-bit sRGB,
an 8 px border left out):

- LibRaw development (rawpy, camera white balance, AHD, sRGB, no auto-brightening):
  noisy | `raw` model on the mosaic, then developed | developed, then `Denoiser("default")` on the
  16-bit sRGB result.
- darktable 4.2 development (`darktable-cli`, its default scene-referred pipeline):
  noisy | darktable's denoise (profiled) switched on by an XMP sidecar (default wavelet mode, given
  the camera's own profile) | our denoised DNG developed by darktable without its denoise.

Time per 24 MP: the `raw` model on a 6000x4000 mosaic (bf16 where the CPU has it), whole-file time
of `process_raw` minus nothing: reading, noise planes, the net, the DNG write.

    nice -n 5 python bench/raw.py --size 512 --out docs/bench/raw.md
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from denoise_core.inference.api import Denoiser  # noqa: E402
from denoise_core.inference.device import use_all_cores  # noqa: E402
from denoise_core.training.metrics import psnr, ssim  # noqa: E402
from denoise_core.noise.camera import find_camera  # noqa: E402
from denoise_core.training.photos import BENCHMARK, load_photos, require_prepared  # noqa: E402
from denoise_core.noise.pipeline import draw_development, unprocess  # noqa: E402
from denoise_core.raw.rawfile import read_raw, write_bayer_dng  # noqa: E402
from denoise_core.raw.denoise import RawDenoiser, develop, write_dng  # noqa: E402

# (camera, ISO) per photo: training makers and makers training never saw (pipeline.HELDOUT_MAKERS)
CASES = (("Nikon D750", 3200), ("Canon EOS 5D Mark III", 6400), ("Sony ILCE-7M3", 12800),
         ("Fujifilm X-T3", 25600), ("Olympus E-M1", 6400), ("Panasonic DC-G9", 12800))
BLACK, WHITE = 512, 16383
XYZ_TO_SRGB = np.array([[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560],
                        [0.0556434, -0.2040259, 1.0572252]])
BORDER = 8


# ----------------------------------------------------------------------------------- DNGs
def make_pair(photo: np.ndarray, camera: str, iso: float, size: int, folder: Path, seed: int):
    """Write clean.dng and noisy.dng for one photo crop; returns the development drawn."""
    h, w = photo.shape[:2]
    y0, x0 = (h - size) // 2 // 2 * 2, (w - size) // 2 // 2 * 2
    x = torch.from_numpy(photo[y0:y0 + size, x0:x0 + size]).permute(2, 0, 1)[None].float() / 255
    gen = torch.Generator().manual_seed(seed)
    prof = find_camera(camera, iso)
    d = dataclasses.replace(draw_development(gen, camera=prof), ev_push=0.0)
    clean = unprocess(x, d).clamp(0, 1)[0, 0].double().numpy()
    # per-photosite noise, variance 4(a x + b) (as pipeline.add_sensor_noise, in float64 here)
    rng = np.random.default_rng(seed)
    col = np.zeros(clean.shape, int)
    col[0::2, 1::2] = col[1::2, 0::2] = 1
    col[1::2, 1::2] = 2
    a, b = np.clip(prof.a, 0, None)[col], np.clip(prof.b, 0, None)[col]
    noisy = np.clip(clean + np.sqrt(4 * (a * clean + b)) * rng.standard_normal(clean.shape), None, 1)
    wb = np.array(d.wb)
    cm = np.diag(1 / wb) @ np.linalg.inv(np.array(d.ccm)) @ XYZ_TO_SRGB  # XYZ -> camera native
    maker, model = prof.maker, prof.model
    for name, m in (("clean", clean), ("noisy", noisy)):
        raw = np.clip(np.rint(m * (WHITE - BLACK) + BLACK), 0, 65535).astype(np.uint16)
        write_bayer_dng(folder / f"{name}.dng", raw, make=maker, model=model, iso=iso, black=BLACK, white=WHITE,
                        as_shot_neutral=tuple(1 / wb), color_matrix=cm)
    return d, prof


def to_float(img: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(img.astype(np.float32) / 65535.0).permute(2, 0, 1)[None]
    return t[..., BORDER:-BORDER, BORDER:-BORDER]


def score(img: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    a, b = to_float(img), to_float(ref)
    return psnr(a, b), ssim(a, b)


# ----------------------------------------------------------------------------------- darktable
def _dt_params(a, b) -> str:
    """denoiseprofile v11 parameters (darktable 4.2): the module's defaults (wavelets, Y0U0V0,
    strength 1, preserve shadows 1, all band curves 0.5) with the camera's own profile a, b."""
    vals = [1.0, 7.0, 1.0, 1.0, 0.0, 0.0, 0.1, 1.0, *a, *b]
    blob = struct.pack("<14f", *vals) + struct.pack("<i", 1)  # mode: MODE_WAVELETS
    blob += struct.pack("<42f", *([k / 6 for k in range(7)] * 6)) + struct.pack("<42f", *([0.5] * 42))
    blob += struct.pack("<4i", 1, 1, 1, 1)  # wb-adaptive anscombe, bug fixes, new VST, Y0U0V0
    return blob.hex()


def dt_xmp(path: Path, enabled: bool, a, b) -> None:
    path.write_text(f'''<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:darktable="http://darktable.sf.net/" darktable:xmp_version="4"
    darktable:history_end="1">
   <darktable:history><rdf:Seq>
    <rdf:li darktable:num="0" darktable:operation="denoiseprofile" darktable:enabled="{int(enabled)}"
     darktable:modversion="11" darktable:params="{_dt_params(a, b)}" darktable:multi_name=""
     darktable:multi_priority="0"/>
   </rdf:Seq></darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
''')


def darktable(dng: Path, xmp: Path, out: Path, cfg: Path) -> tuple[np.ndarray, float]:
    import tifffile
    t0 = time.perf_counter()
    r = subprocess.run(["darktable-cli", str(dng), str(xmp), str(out), "--core", "--configdir", str(cfg),
                        "--library", ":memory:", "--conf", "plugins/imageio/format/tiff/bpp=16"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or not out.exists():
        raise RuntimeError(f"darktable-cli failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}")
    img = tifffile.imread(out)
    out.unlink()
    return img, time.perf_counter() - t0


# ----------------------------------------------------------------------------------- run
def time_24mp(rd: RawDenoiser, folder: Path) -> float:
    """Seconds for the `raw` model on a 6000x4000 mosaic (reading, noise planes, net, DNG write)."""
    rng = np.random.default_rng(0)
    m = np.clip(rng.random((4000, 6000)) * 0.05 + 0.1, 0, 1)
    raw = np.rint(m * (WHITE - BLACK) + BLACK).astype(np.uint16)
    write_bayer_dng(folder / "big.dng", raw, make="Nikon", model="D750", iso=6400, black=BLACK, white=WHITE)
    t0 = time.perf_counter()
    img = read_raw(folder / "big.dng")
    den = rd.denoise(img)
    write_dng(folder / "big.dng", folder / "big_out.dng", den, img)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default=None,
                    help="folder of the prepared photos (<name>.png; default $DENOISE_PHOTOS, else "
                         "~/.cache/denoise-cnn/photos)")
    ap.add_argument("--size", type=int, default=512, help="crop side in pixels (= photosites)")
    ap.add_argument("--model", default="raw", help="raw-domain weights (shipped name or file)")
    ap.add_argument("--no-darktable", action="store_true")
    ap.add_argument("--no-24mp", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the Markdown table here too")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    else:
        use_all_cores()  # what denoise-batch does (a Denoiser leaves torch's thread count alone)
    rd = RawDenoiser(a.model)
    srgb = Denoiser("default")
    have_dt = not a.no_darktable and shutil.which("darktable-cli") is not None
    dt_reason = ("skipped (--no-darktable)" if a.no_darktable else
                 "darktable-cli not found (apt-get install -y --no-install-recommends darktable)")
    photos = load_photos(require_prepared(a.photos, BENCHMARK), BENCHMARK)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = tmp / "dtconfig"
        for i, (name, photo) in enumerate(zip(BENCHMARK, photos)):
            camera, iso = CASES[i % len(CASES)]
            d, prof = make_pair(photo, camera, iso, a.size, tmp, seed=1000 + i)
            img = read_raw(tmp / "noisy.dng")
            t0 = time.perf_counter()
            den = rd.denoise(img)
            t_raw = time.perf_counter() - t0
            ref = develop(tmp / "clean.dng", None, read_raw(tmp / "clean.dng"))
            noisy_dev = develop(tmp / "noisy.dng", None, img)
            ours = develop(tmp / "noisy.dng", den, img)
            t0 = time.perf_counter()
            after = srgb.denoise(noisy_dev)
            t_srgb = time.perf_counter() - t0
            row = {"photo": name, "camera": f"{prof.maker} {prof.model}", "iso": iso, "noise": img.noise_source,
                   "libraw": {"noisy": score(noisy_dev, ref), "raw": score(ours, ref), "srgb": score(after, ref)},
                   "t_raw": t_raw, "t_srgb": t_srgb}
            if have_dt:
                try:
                    dt_xmp(tmp / "off.xmp", False, prof.a, prof.b)
                    dt_xmp(tmp / "on.xmp", True, prof.a, prof.b)
                    dref, _ = darktable(tmp / "clean.dng", tmp / "off.xmp", tmp / "o.tif", cfg)
                    dnoisy, _ = darktable(tmp / "noisy.dng", tmp / "off.xmp", tmp / "o.tif", cfg)
                    dden, t_dt = darktable(tmp / "noisy.dng", tmp / "on.xmp", tmp / "o.tif", cfg)
                    write_dng(tmp / "noisy.dng", tmp / "ours.dng", den, img)
                    dours, _ = darktable(tmp / "ours.dng", tmp / "off.xmp", tmp / "o.tif", cfg)
                    row["darktable"] = {"noisy": score(dnoisy, dref), "dt": score(dden, dref),
                                        "raw": score(dours, dref)}
                    row["t_dt"] = t_dt
                except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                    have_dt, dt_reason = False, f"darktable-cli failed: {e}"
            rows.append(row)
            print(f"{name}: {row['camera']}@{iso}: " + ", ".join(
                f"{k} {v[0]:.2f}" for k, v in row["libraw"].items())
                + ("" if "darktable" not in row else " | darktable: " + ", ".join(
                    f"{k} {v[0]:.2f}" for k, v in row["darktable"].items())), file=sys.stderr, flush=True)
        t24 = None if a.no_24mp else time_24mp(rd, tmp)
    md = table(rows, a, t24, have_dt, dt_reason, rd)
    print(md)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(md)


def _f(v) -> str:
    return f"{v[0]:.2f} / {v[1]:.4f}"


def table(rows, a, t24, have_dt, dt_reason, rd) -> str:
    out = [f"# Raw benchmark (`bench/raw.py --size {a.size}`)", "",
           f"Synthetic 14-bit Bayer DNGs of the {len(rows)} held-out BENCHMARK photos ({a.size}x{a.size} "
           "centre crops of the prepared PNGs), one profiled camera and ISO each, darktable-profile noise per "
           f"photosite. Model: `{rd.path.name}` ({rd.precision}). PSNR (dB) / SSIM on 16-bit sRGB against the same "
           "developer's development of the noise-free DNG.", "",
           "## LibRaw development (what `denoise-batch` writes)", "",
           "| photo | camera @ ISO | noisy | raw model, then develop | develop, then sRGB default |",
           "| --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        lv = r["libraw"]
        out.append(f"| {r['photo']} | {r['camera']} @ {r['iso']} | {_f(lv['noisy'])} | {_f(lv['raw'])} "
                   f"| {_f(lv['srgb'])} |")
    mean = lambda key, sub, k=0: float(np.mean([r[key][sub][k] for r in rows]))  # noqa: E731
    out.append(f"| **mean** | | {mean('libraw', 'noisy'):.2f} / {mean('libraw', 'noisy', 1):.4f} | "
               f"**{mean('libraw', 'raw'):.2f}** / {mean('libraw', 'raw', 1):.4f} | "
               f"{mean('libraw', 'srgb'):.2f} / {mean('libraw', 'srgb', 1):.4f} |")
    out += ["", "## darktable 4.2 development (`darktable-cli`, default pipeline)", ""]
    if have_dt and all("darktable" in r for r in rows):
        out += ["| photo | camera @ ISO | noisy | darktable denoise (profiled) | raw model, then darktable |",
                "| --- | --- | ---: | ---: | ---: |"]
        for r in rows:
            dv = r["darktable"]
            out.append(f"| {r['photo']} | {r['camera']} @ {r['iso']} | {_f(dv['noisy'])} | {_f(dv['dt'])} "
                       f"| {_f(dv['raw'])} |")
        out.append(f"| **mean** | | {mean('darktable', 'noisy'):.2f} / {mean('darktable', 'noisy', 1):.4f} | "
                   f"{mean('darktable', 'dt'):.2f} / {mean('darktable', 'dt', 1):.4f} | "
                   f"**{mean('darktable', 'raw'):.2f}** / {mean('darktable', 'raw', 1):.4f} |")
        out.append("")
        out.append("darktable's denoise (profiled): module defaults (wavelets, Y0U0V0, strength 1) with the "
                   "camera's own darktable profile written into the XMP sidecar.")
    else:
        out.append(f"Not run: {dt_reason}.")
    mp = a.size * a.size / 1e6
    out += ["", "## Time", "",
            f"- `raw` model, per crop ({mp:.2f} MP): {np.mean([r['t_raw'] for r in rows]):.2f} s; "
            f"sRGB default on the developed crop: {np.mean([r['t_srgb'] for r in rows]):.2f} s"
            + (f"; darktable-cli whole development with its denoise: {np.mean([r['t_dt'] for r in rows]):.1f} s"
               if have_dt and all("t_dt" in r for r in rows) else "")]
    if t24 is not None:
        out.append(f"- `raw` model on a 24 MP raw (6000x4000 DNG: read, noise planes, net, DNG write): "
                   f"{t24:.1f} s with {torch.get_num_threads()} thread(s)")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
