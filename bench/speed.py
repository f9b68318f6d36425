"""Throughput (megapixels per second) and peak memory of every registered architecture on this machine.

Each case (architecture x image size) runs in a fresh subprocess, so its peak memory (VmHWM, the
peak resident set size, read in the child at the end) is that case alone: the Python interpreter,
torch, the model, the uint8 input image, the uint8 output image and the tiler's working set. The
image goes through the real `Denoiser.denoise` path (uint8 in, uint8 out, default tile size,
tiling and blending included) in `--precision` (default auto: bf16 on a CPU with native bfloat16,
else fp32), plus fp32 rows at `--fp32-sizes` to show what the precision buys. Speed does not depend
on the weights, so an architecture without shipped weights runs with random-initialised ones
(`--random-init` forces that for all). FFDNet always runs in fp32, as published.

    .venv/bin/python bench/speed.py                       # 2, 24 and 100 MP, every architecture
    .venv/bin/python bench/speed.py --sizes 2 --archs seed,fast --repeat 1   # quick look
    .venv/bin/python bench/speed.py --archs unet --models variant.safetensors  # a trained variant

FFDNet (the comparison baseline, `pip install -r bench/requirements.txt`) runs on the same machine
in the same way at the sizes in `--ffdnet-sizes` (default 2 MP), with the same tile size as ours
(`--tile`, default the Denoiser's) and 32 px overlap (its receptive radius is 26 px).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MIN_FFDNET_RATIO = 2.0  # throughput of our models against FFDNet's, same image and tiles
MAX_24MP_SECONDS = 20.0
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)


# --------------------------------------------------------------------------- child side
def _status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (VmHWM: peak resident, VmRSS: now), in MB; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


def _rss_mb() -> float:
    now = _status_mb("VmRSS")
    return float("nan") if now is None else now


def image_shape(mp: float) -> tuple[int, int]:
    """3:2 landscape, sides multiples of 2, about `mp` megapixels."""
    h = int(round(math.sqrt(mp * 1e6 / 1.5) / 2)) * 2
    w = int(round(h * 1.5 / 2)) * 2
    return max(h, 2), max(w, 2)


def make_image(h: int, w: int, seed: int = 0):
    """A uint8 test image built in bands (no full-size float temporaries): smooth gradients plus noise."""
    import numpy as np
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    xs = (np.arange(w, dtype=np.float32) / max(w - 1, 1))[None, :, None]
    base = np.array([60.0, 120.0, 180.0], np.float32)[None, None, :]
    step = 64  # small bands: the temporaries stay far below the denoiser's own memory
    for y0 in range(0, h, step):
        y1 = min(y0 + step, h)
        ys = (np.arange(y0, y1, dtype=np.float32) / max(h - 1, 1))[:, None, None]
        band = rng.standard_normal((y1 - y0, w, 3), dtype=np.float32)
        band *= 20.0
        band += base + 60.0 * np.sin(6.0 * xs + 4.0 * ys)
        np.clip(band, 0, 255, out=band)
        img[y0:y1] = band
    return img


def child(spec: dict) -> dict:
    import numpy as np
    import torch

    from denoise_core.inference.device import use_all_cores

    use_all_cores()  # as denoise-batch does
    h, w = spec["h"], spec["w"]
    kind = spec["kind"]
    if kind == "ffdnet":
        from baselines import FFDNet
        model = FFDNet()

        def run(img):
            return model.tiled(img, 25.0, tile=spec["tile"])
        params = model.params
        precision = "fp32"
        # warm-up (oneDNN primitive creation) on a small image
        run(make_image(256, 256, 1))
    else:
        from denoise_core.inference.api import Denoiser
        dn = Denoiser(spec["model"], device="cpu", precision=spec.get("precision", "auto"),
                      **({"tile": spec["tile"]} if spec.get("tile") else {}))
        params = sum(p.numel() for p in dn.model.parameters())
        precision = dn.precision

        level = spec.get("noise_level")

        def run(img):
            return dn.denoise(img, noise_level=level)
        run(make_image(256, 256, 1))
    base = _rss_mb()
    img = make_image(h, w)
    times = []
    for _ in range(spec["repeat"]):
        t0 = time.perf_counter()
        out = run(img)
        times.append(time.perf_counter() - t0)
        assert out.shape == img.shape and out.dtype == np.uint8, (out.shape, out.dtype)
        del out
    return {"params": params, "precision": precision, "times": times, "base_mb": base, "peak_mb": _peak_rss_mb(),
            "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- parent side
def _random_checkpoint(arch: str, folder: Path) -> Path:
    import torch

    from denoise_core.inference.checkpoint import save_checkpoint
    from denoise_core.models import create_model
    torch.manual_seed(0)
    net = create_model(arch)
    # nonzero weights everywhere (some architectures zero-initialise their last layer)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0.0, 1e-3)
    path = folder / f"{arch}-random.safetensors"
    save_checkpoint(path, net, {"note": "random initialisation, for speed measurements only"})
    return path


def run_case(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {res.returncode}: {' | '.join(tail)}"}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2,24,100", help="image sizes in megapixels, comma-separated (default 2,24,100)")
    ap.add_argument("--archs", default="all", help="registered architectures, comma-separated (default: all)")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per case; the best is reported (default 2)")
    ap.add_argument("--tile", type=int, default=0, help="tile size (default: the Denoiser's default)")
    ap.add_argument("--models", default="", help="also these checkpoint files (comma-separated), e.g. trained "
                    "variants; each row is named by its file stem")
    ap.add_argument("--random-init", action="store_true", help="random weights even where shipped weights exist")
    ap.add_argument("--precision", default="auto", help="our models' precision (default auto: bf16 on CPUs "
                    "with native bfloat16, else fp32)")
    ap.add_argument("--fp32-sizes", default="2,24", help="sizes that also get fp32 rows of our models when "
                    "--precision is not fp32 ('' to skip; default 2,24)")
    ap.add_argument("--ffdnet-sizes", default="2", help="sizes for the FFDNet baseline ('' to skip; default 2)")
    ap.add_argument("--noise-levels", default="",
                    help="also time these noise levels (two passes) for models with a level input, e.g. 2")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per case before giving up")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    import torch

    from denoise_core.inference.api import DEFAULT_TILE, shipped_models
    from denoise_core.inference.device import pick_precision, precision_name
    from denoise_core.models import list_models

    archs = list_models() if args.archs == "all" else [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in archs if a not in list_models()]
    if unknown:
        ap.error(f"unknown architecture(s) {', '.join(unknown)}; valid: {', '.join(list_models())}")
    from denoise_core.inference.checkpoint import CheckpointError, load_checkpoint
    extra = [Path(m.strip()) for m in args.models.split(",") if m.strip()]
    for m in extra:
        try:
            load_checkpoint(m)
        except (CheckpointError, OSError) as e:
            ap.error(f"--models: {e}")
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    ffd_sizes = [float(s) for s in args.ffdnet_sizes.split(",") if s.strip()]

    ffdnet_ok = False
    if ffd_sizes:
        try:
            from baselines import FFDNet
            FFDNet()
            ffdnet_ok = True
        except Exception as e:  # noqa: BLE001  (BaselineMissing or a broken install)
            print(f"note: {e}; the FFDNet row is left out", file=sys.stderr)

    shipped = shipped_models()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = []
        for arch in archs:
            if arch in shipped and not args.random_init:
                ck = load_checkpoint(shipped[arch])
                if ck.arch == arch:
                    cases.append((arch, "shipped", str(shipped[arch])))
                    continue
            cases.append((arch, "random", str(_random_checkpoint(arch, Path(tmp)))))
        cases += [(m.stem, str(m), str(m)) for m in extra]
        main_prec = precision_name(pick_precision(torch.device("cpu"), args.precision))
        wanted = [float(v) for v in args.noise_levels.split(",") if v.strip()]
        levels = {m: wanted for _, _, m in cases if load_checkpoint(m).arch_args.get("level_input")}
        fp32_sizes = [float(s) for s in args.fp32_sizes.split(",") if s.strip()] if main_prec != "fp32" else []
        for mp in sizes:
            h, w = image_shape(mp)
            for prec in [args.precision] + (["fp32"] if mp in fp32_sizes else []):
                for arch, weights, model in cases:
                    for level in [None, *levels.get(model, [])] if prec == args.precision else [None]:
                        spec = {"kind": "model", "model": model, "h": h, "w": w, "repeat": args.repeat,
                                "tile": args.tile or None, "precision": prec, "noise_level": level}
                        name = arch if level is None else f"{arch} @ level {level:g}"
                        print(f"... {name} {h}x{w} {prec}", file=sys.stderr, flush=True)
                        rows.append({"arch": name, "weights": weights, "h": h, "w": w, **run_case(spec, args.timeout)})
            if ffdnet_ok and mp in ffd_sizes:
                spec = {"kind": "ffdnet", "h": h, "w": w, "repeat": args.repeat, "tile": args.tile or DEFAULT_TILE}
                print(f"... FFDNet {h}x{w}", file=sys.stderr, flush=True)
                rows.append({"arch": "FFDNet (baseline)", "weights": "KAIR colour", "h": h, "w": w,
                             **run_case(spec, args.timeout)})

    tile = args.tile or DEFAULT_TILE
    print(f"\nCPU: {cpu_name()}, {os.cpu_count()} logical cores; torch {torch.__version__}; "
          f"tile {tile}; uint8 RGB in and out; best of {args.repeat}; load average {os.getloadavg()[0]:.2f}\n")
    print("| arch | weights | params | precision | image | MP | seconds | MP/s | peak MB | in+out images MB |")
    print("| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        mp = r["h"] * r["w"] / 1e6
        if "error" in r:
            print(f"| {r['arch']} | {r['weights']} | | | {r['w']}x{r['h']} | {mp:.1f} | — | — | {r['error']} | |")
            continue
        best = min(r["times"])
        r["seconds"], r["mp_s"], r["mp"] = best, mp / best, mp
        r["images_mb"] = 2 * r["h"] * r["w"] * 3 / 2**20  # the uint8 input and output arrays
        print(f"| {r['arch']} | {r['weights']} | {r['params']:,} | {r['precision']} | {r['w']}x{r['h']} | {mp:.1f} "
              f"| {best:.2f} | {mp / best:.2f} | {r['peak_mb']:.0f} | {r['images_mb']:.0f} |")
    print("\npeak MB: peak resident memory (VmHWM) of the whole case's process, as measured: interpreter, "
          "torch, model, tiler and the uint8 input and output images. in+out images MB: the size of those "
          "two arrays alone (6 MB per MP), which any caller holds anyway; the rest should not grow with the image.")

    # the speed targets: the default's throughput at least 2x FFDNet's, 24 MP in 20 s, 2 GB peak
    ok = [r for r in rows if "error" not in r]
    ffd = {round(r["mp"], 1): r for r in ok if r["arch"].startswith("FFDNet")}
    lines = []
    for r in ok:
        if r["arch"].startswith("FFDNet"):
            continue
        key = round(r["mp"], 1)
        if key in ffd:
            ratio = r["mp_s"] / ffd[key]["mp_s"]
            lines.append(f"| {r['arch']} ({r['precision']}) | {key:g} MP | throughput ≥ {MIN_FFDNET_RATIO:g}× FFDNet "
                         f"| {ratio:.2f}× | {'met' if ratio >= MIN_FFDNET_RATIO else 'missed'} "
                         f"({ratio - MIN_FFDNET_RATIO:+.2f}×) |")
        if abs(r["mp"] - 24) < 1:
            secs, met = r["seconds"], "met" if r["seconds"] <= MAX_24MP_SECONDS else "missed"
            lines.append(f"| {r['arch']} ({r['precision']}) | 24 MP | ≤ {MAX_24MP_SECONDS:g} s | {secs:.1f} s | "
                         f"{met} ({secs - MAX_24MP_SECONDS:+.1f} s) |")
        if r["mp"] >= 23:
            lines.append(f"| {r['arch']} ({r['precision']}) | {key:g} MP | peak ≤ 2048 MB | {r['peak_mb']:.0f} MB | "
                         f"{'met' if r['peak_mb'] <= 2048 else 'missed'} ({r['peak_mb'] - 2048:+.0f} MB) |")
        if r["arch"] == "fast":
            lines.append(f"| fast ({r['precision']}) | {key:g} MP | ≥ 3 MP/s | {r['mp_s']:.2f} MP/s | "
                         f"{'met' if r['mp_s'] >= 3 else 'missed'} ({r['mp_s'] - 3:+.2f} MP/s) |")
    if lines:
        print("\nTargets:\n\n| arch | size | target | measured | result |\n| --- | --- | --- | --- | --- |")
        print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "torch": torch.__version__, "tile": tile,
                                         "rows": rows}, indent=1))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
