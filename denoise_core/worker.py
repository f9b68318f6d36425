"""The worker the host plugins start: `python -m denoise_core.worker JOB.json`.

Protocol (the plugins' side is plugins/common/denoise_client.py):
  JOB.json  {"version": 1, "width": W, "height": H, "channels": 1-4, "input": "in.raw",
             "output": "out.raw", "transfer": "srgb" | "linear", "model": "default" | name | path,
             "strength": 0..1, "noise_level": null or 0..4 (optional, see api.py), "device": "auto",
             "tile": 1024, "precision": "auto" (optional),
             "parent_pipe": true (optional)}
  in.raw    float32 little-endian, interleaved H x W x channels; 2 and 4 channels carry alpha last,
            which is copied to the output untouched. "linear" pixels are encoded to sRGB for the
            model (it was trained on sRGB) and decoded back.
  stdout    one JSON object per line: {"event": "start"|"progress"|"done"|"error", ...}
  out.raw   written atomically, same layout as in.raw. Exit code 0 on success, 1 on error.
Cancelling is the client's business: it terminates the process, which leaves no output behind.
With "parent_pipe" the client holds the worker's stdin open and never writes to it; end-of-file
there means the client died (GIMP kills a plug-in whose progress bar is cancelled), and the worker
exits at once, removing the job folder when it is the client's private `denoise-cnn-*` temp dir.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np

PROTOCOL_VERSION = 1


def _emit(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _srgb_encode(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


def _srgb_decode(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4)).astype(np.float32)


def _exit_when_parent_dies(job_dir: Path) -> None:
    def watch() -> None:
        try:  # the raw fd: a buffered sys.stdin would hold its lock into interpreter shutdown
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        if job_dir.name.startswith("denoise-cnn-"):
            shutil.rmtree(job_dir, ignore_errors=True)
        os._exit(3)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_job(job_path: Path) -> None:
    from .api import DEFAULT_TILE, Denoiser
    from .atomic import atomic_write_bytes

    job = json.loads(job_path.read_text())
    if job.get("version") != PROTOCOL_VERSION:
        raise ValueError(f"job protocol version {job.get('version')!r} is not {PROTOCOL_VERSION}; "
                         f"reinstall the plugin with `denoise-plugin install`")
    w, h, c = int(job["width"]), int(job["height"]), int(job["channels"])
    if c not in (1, 2, 3, 4) or w < 1 or h < 1:
        raise ValueError(f"bad image geometry {w}x{h}x{c}")
    base = job_path.parent
    if job.get("parent_pipe"):
        _exit_when_parent_dies(base)
    raw = (base / job["input"]).read_bytes()
    if len(raw) != w * h * c * 4:
        raise ValueError(f"input holds {len(raw)} bytes, expected {w * h * c * 4} for {w}x{h}x{c} float32")
    pix = np.frombuffer(raw, dtype="<f4").reshape(h, w, c)
    colour_c = 1 if c in (1, 2) else 3
    colour = pix[..., :colour_c]
    linear = job.get("transfer", "srgb") == "linear"
    if linear:
        colour = _srgb_encode(colour)
    dn = Denoiser(job.get("model", "default"), device=job.get("device", "auto"),
                  tile=int(job.get("tile", DEFAULT_TILE)), precision=job.get("precision", "auto"))
    _emit(event="start", model=str(dn.path), arch=dn.arch, device=str(dn.device), precision=dn.precision)
    level = job.get("noise_level")
    out = dn.denoise(np.ascontiguousarray(colour, dtype=np.float32), strength=float(job.get("strength", 1.0)),
                     noise_level=None if level is None else float(level),
                     progress=lambda done, total: _emit(event="progress", done=done, total=total))
    if linear:
        out = _srgb_decode(out)
    result = pix.copy()
    # keep values the net did not change bit-identical (strength 0, or untouched pixels)
    result[..., :colour_c] = out
    atomic_write_bytes(base / job["output"], result.astype("<f4").tobytes())
    _emit(event="done", output=job["output"])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        _emit(event="error", message="usage: python -m denoise_core.worker JOB.json")
        return 2
    try:
        run_job(Path(args[0]))
    except Exception as e:  # the plugin shows the message; the worker never dies with a bare traceback
        _emit(event="error", message=str(e) or type(e).__name__, kind=type(e).__name__)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
