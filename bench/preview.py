"""Plug-in preview latency: what a live 1:1 preview of a box costs on the persistent worker.

Drives the worker exactly as the Krita dialog does (`denoise_plugins/common/denoise_client.py`: an info
request for the model's context, then a job on the box read with that context around it, as
Krita's native 8-bit B,G,R,A bytes, cropped back to the box and rendered as 8-bit before/after
pictures), on random photo-like pixels. "first" is a fresh worker: Python, torch, the model, then
the preview; "next" the best and median of `--repeat` previews of other boxes once it is up. The
dialog adds its own pause after a change (PREVIEW_DELAY_MS, 250 ms) and Qt's drawing; the real-host
test `tests/test_krita_e2e.py -k preview -s` prints the whole time from a change to the picture.

    .venv/bin/python bench/preview.py                       # default and fast, 256 and 512 px
    .venv/bin/python bench/preview.py --models default --boxes 512 --precisions auto,fp32
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from denoise_plugins.common import denoise_client as dc  # noqa: E402

TARGET_BOX, TARGET_SECONDS = 512, 1.0


def region_bytes(rng: np.random.Generator, w: int, h: int) -> bytes:
    """Smooth colour plus grain, as B,G,R,A u8 (the content does not change the time)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 60 * np.sin(xx / (37 + 9 * c) + yy / 53 + rng.uniform(0, 6)) for c in range(3)], -1)
    img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return np.concatenate([img, np.full((h, w, 1), 255, np.uint8)], -1).tobytes()


def measure(model: str, precision: str, box: int, repeat: int) -> dict:
    rng = np.random.default_rng(0)
    w = dc.Worker(sys.executable, pythonpath=str(ROOT))
    s = dc.job_settings(model=model, precision=precision)
    times = []
    try:
        for _ in range(repeat + 1):
            t0 = time.perf_counter()
            info = w.info(s)
            ctx = info["context"]
            side = box + 2 * ctx
            raw = region_bytes(rng, side, side)  # read after the info, as the dialog does
            dc.run_denoise(raw, side, side, 4, python=sys.executable, worker=w, dtype="u8", swap_rb=True,
                           crop=(ctx, ctx, box, box), rgba8=True, **s)
            times.append(time.perf_counter() - t0)
        return {"model": model, "precision": info["precision"], "box": box, "read": side,
                "first": times[0], "best": min(times[1:]), "median": statistics.median(times[1:])}
    finally:
        w.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="default,fast")
    ap.add_argument("--boxes", default="256,512", help="preview box sides in px (default 256,512)")
    ap.add_argument("--precisions", default="auto,fp32")
    ap.add_argument("--repeat", type=int, default=5, help="previews after the first (default 5)")
    args = ap.parse_args(argv)
    rows = []
    for model in args.models.split(","):
        for precision in args.precisions.split(","):
            for box in (int(b) for b in args.boxes.split(",")):
                r = measure(model, precision, box, args.repeat)
                rows.append(r)
                print(f"{model} {r['precision']} {box}: first {r['first']:.2f} s, next {r['median']:.2f} s",
                      file=sys.stderr, flush=True)
    print("| model | precision | box | pixels read | first preview (worker start) s | next, best s | next, median s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    seen = set()
    for r in rows:
        key = (r["model"], r["precision"], r["box"])
        if key in seen:  # "auto" resolved to fp32 on this machine
            continue
        seen.add(key)
        print(f"| {r['model']} | {r['precision']} | {r['box']}² | {r['read']}² | {r['first']:.2f} | "
              f"{r['best']:.2f} | {r['median']:.2f} |")
    for r in rows:
        if r["model"] == "default" and r["box"] == TARGET_BOX:
            verdict = "met" if r["median"] <= TARGET_SECONDS else "missed"
            print(f"\nTarget, a {TARGET_BOX}² preview within {TARGET_SECONDS:g} s once the worker is up "
                  f"(default, {r['precision']}, median): {r['median']:.2f} s, {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
