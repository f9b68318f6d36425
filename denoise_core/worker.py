"""The worker the host plugins start: `python -m denoise_core.worker --serve` (persistent) or
`python -m denoise_core.worker JOB.json` (one job).

Protocol (the plugins' side is plugins/common/denoise_client.py):
  JOB.json  {"version": 1, "width": W, "height": H, "channels": 1-4, "input": "in.raw",
             "output": "out.raw", "transfer": "srgb" | "linear", "model": "default" | name | path,
             "strength": 0..1, "noise_level": null or 0..4 (optional, see api.py),
             "sigma": null or 0..100 (optional: absolute, 0-255 scale; excludes noise_level), "device": "auto",
             "tile": 1024, "precision": "auto" (optional),
             "parent_pipe": true (optional)}
  in.raw    float32 little-endian, interleaved H x W x channels; 2 and 4 channels carry alpha last,
            which is copied to the output untouched. "linear" pixels are encoded to sRGB for the
            model (it was trained on sRGB) and decoded back.
  stdout    one JSON object per line: {"event": "start"|"progress"|"done"|"error", ...}
  out.raw   written atomically, same layout as in.raw. Exit code 0 on success, 1 on error.
Optional, so that a host Python without numpy does no per-pixel work (Krita's preview and jobs):
  "dtype": "f32" (default) | "u8" | "u16" | "f16", the native-endian sample type of in.raw and
            out.raw (integers scaled to 0..1); "swap_rb": true when 4-channel pixels are B,G,R,A
            (Krita's U8/U16), for both files.
  "crop": [x, y, w, h]  out.raw (and what follows) is only this rectangle of the input.
  "mask": "mask.raw"    w x h bytes (the crop's): out = in + (denoised - in) * mask / 255 on
            colour (pixels with mask 0 stay bit-identical; plugins/krita/denoise_cnn/pixels.py
            apply_mask is the same blend).
  "rgba8": "after.raw", "rgba8_before": "before.raw"   8-bit sRGB-encoded R,G,B,A of the output
            and of the input (crop), for an on-screen preview.
Cancelling is the client's business: it terminates the process, which leaves no output behind.
With "parent_pipe" the client holds the worker's stdin open and never writes to it; end-of-file
there means the client died (GIMP kills a plug-in whose progress bar is cancelled), and the worker
exits at once, removing the job folder when it is the client's private `denoise-cnn-*` temp dir.

Persistent mode, `--serve [--idle SECONDS]`: requests are JSON lines on stdin, events JSON lines on
stdout, each answering the request's "id"; loaded models stay in memory (per model file, device,
precision, tile), so later requests skip torch's import and the model load.
  {"cmd": "info", "id": N, "model", "device", "precision", "noise_level", "sigma"}
        -> {"event": "info", "id": N, "context": px, "multiple": m, "has_levels": bool, "pid": ...}
           context: pixels of input each output pixel depends on (Denoiser.context(noise_level));
           a region read with that much context around it, its origin on the model's `multiple`
           grid relative to the layer, gives exactly what denoising the whole layer gives there.
  {"cmd": "job", "id": N, "job": "/path/JOB.json"}  -> start, progress..., done | error (as above)
  {"cmd": "quit"}
It starts with {"event": "ready", "pid": ...}. End-of-file on stdin (the client exited or died)
ends it at once, deleting a running job's `denoise-cnn-*` folder; so does a quiet stdin for
--idle seconds (default IDLE_S) with {"event": "bye"}. Cancel is the client's: it ends the process.
With `--socket PATH --host-pid PID` (GIMP, whose plug-ins are a new process each run) the same
requests come over a Unix socket, one connection per plug-in run, and the worker outlives them:
it ends when the host program PID ends, after --idle seconds without a request, or when a
client disconnects during a job (see serve_socket).
"""
from __future__ import annotations

import atexit
import gc
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np

PROTOCOL_VERSION = 1
IDLE_S = 600  # a persistent worker with no request for this long exits (and frees its memory)
MAX_CACHED = 2  # loaded models kept by a persistent worker


_OUT: list = [None]  # where events go: stdout, or the connected client's socket (serve_socket)


def _emit(**event) -> None:
    out = _OUT[0] or sys.stdout
    out.write(json.dumps(event) + "\n")
    out.flush()


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


def run_job(job_path: Path, cache: dict | None = None, reply: dict | None = None) -> None:
    """One job file. `cache` keeps loaded models between jobs (persistent mode); `reply` is added
    to every event (the request id)."""
    from .api import DEFAULT_TILE
    from .atomic import atomic_write_bytes

    reply = reply or {}
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
    dtype_name = job.get("dtype", "f32")
    if dtype_name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype_name!r}")
    dtype, peak = _DTYPES[dtype_name]
    size = np.dtype(dtype).itemsize
    if len(raw) != w * h * c * size:
        raise ValueError(f"input holds {len(raw)} bytes, expected {w * h * c * size} for {w}x{h}x{c} {dtype_name}")
    swap = bool(job.get("swap_rb")) and c == 4
    order = [2, 1, 0, 3] if swap else slice(None)
    native = np.frombuffer(raw, dtype=dtype).reshape(h, w, c)
    pix = native.astype(np.float32)[..., order]
    if peak:
        pix /= np.float32(peak)
    colour_c = 1 if c in (1, 2) else 3
    colour = pix[..., :colour_c]
    linear = job.get("transfer", "srgb") == "linear"
    if linear:
        colour = _srgb_encode(colour)
    dn = _denoiser(cache, job.get("model", "default"), job.get("device", "auto"), job.get("precision", "auto"),
                   int(job.get("tile", DEFAULT_TILE)))
    _emit(event="start", model=str(dn.path), arch=dn.arch, device=str(dn.device), precision=dn.precision,
          pid=os.getpid(), **reply)
    level, sigma = job.get("noise_level"), job.get("sigma")
    out = dn.denoise(np.ascontiguousarray(colour, dtype=np.float32), strength=float(job.get("strength", 1.0)),
                     noise_level=None if level is None else float(level),
                     sigma=None if sigma is None else float(sigma),
                     progress=lambda done, total: _emit(event="progress", done=done, total=total, **reply))
    if linear:
        out = _srgb_decode(out)
    result = pix.copy()
    # keep values the net did not change bit-identical (strength 0, or untouched pixels)
    result[..., :colour_c] = out
    crop = job.get("crop")
    if crop is not None:
        x, y, cw, ch = (int(v) for v in crop)
        if x < 0 or y < 0 or cw < 1 or ch < 1 or x + cw > w or y + ch > h:
            raise ValueError(f"crop {crop} leaves the {w}x{h} input")
        pix, result, native = (a[y:y + ch, x:x + cw] for a in (pix, result, native))
    if job.get("mask"):
        m = np.frombuffer((base / job["mask"]).read_bytes(), np.uint8)
        if m.size != result.shape[0] * result.shape[1]:
            raise ValueError(f"mask holds {m.size} bytes, expected one per output pixel")
        m = m.reshape(result.shape[:2])
        blend = pix + (result - pix) * (m.astype(np.float32) / np.float32(255.0))[..., None]
        blend = np.where((m == 255)[..., None], result, blend)
        result = np.where((m == 0)[..., None], pix, blend)
        if c in (2, 4):
            result[..., -1] = pix[..., -1]
    if peak:
        data = np.clip(np.rint(np.nan_to_num(result) * np.float32(peak)), 0, peak).astype(dtype)
        if c in (2, 4):
            data[..., -1] = native[..., order][..., -1]  # alpha: the input's own integers
    else:
        data = result.astype(dtype)
    atomic_write_bytes(base / job["output"], np.ascontiguousarray(data[..., order]).tobytes())
    for key, img in (("rgba8", result), ("rgba8_before", pix)):
        if job.get(key):
            atomic_write_bytes(base / job[key], _rgba8(img, linear))
    _emit(event="done", output=job["output"], pid=os.getpid(), **reply)


_DTYPES = {"f32": ("<f4", 0), "f16": ("=f2", 0), "u8": (np.uint8, 255), "u16": ("=u2", 65535)}


def _rgba8(img: np.ndarray, linear: bool) -> bytes:
    """(H, W, C) float pixels -> 8-bit sRGB-encoded R,G,B,A bytes for display."""
    c = img.shape[2]
    col = img[..., :3] if c >= 3 else np.repeat(img[..., :1], 3, axis=2)
    col = np.clip(np.nan_to_num(col), 0.0, 1.0)
    if linear:
        col = _srgb_encode(col)
    a = img[..., -1:] if c in (2, 4) else np.ones(img.shape[:2] + (1,), np.float32)
    out = np.concatenate([col, np.clip(np.nan_to_num(a), 0.0, 1.0)], axis=2)
    return np.rint(out * 255.0).astype(np.uint8).tobytes()


def _denoiser(cache: dict | None, model, device, precision, tile):
    from .api import Denoiser, resolve_model
    from .device import available_cores

    if cache is None:  # the worker owns its process: every core (a Denoiser alone leaves the count)
        return Denoiser(model, device=device, tile=tile, precision=precision, threads=available_cores())
    path = resolve_model(model)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, str(device), str(precision), int(tile))
    dn = cache.pop(key, None)  # re-inserted last: the dict's order is least recently used first
    if dn is None:
        dn = Denoiser(path, device=device, tile=tile, precision=precision, threads=available_cores())
        while len(cache) >= MAX_CACHED:
            cache.pop(next(iter(cache)))
    cache[key] = dn
    return dn


def _info(req: dict, cache: dict) -> dict:
    from .api import DEFAULT_TILE

    dn = _denoiser(cache, req.get("model", "default"), req.get("device", "auto"), req.get("precision", "auto"),
                   int(req.get("tile", DEFAULT_TILE)))
    level = req.get("noise_level")
    level = None if level is None else float(level)
    sigma = req.get("sigma")
    dn.check_noise_level(level, None if sigma is None else float(sigma))
    return {"context": int(dn.context(level)), "multiple": int(dn.multiple), "has_levels": dn.has_levels,
            "model": str(dn.path), "arch": dn.arch, "device": str(dn.device), "precision": dn.precision}


def _session(read_chunk, cache: dict, idle_s: float) -> str:
    """Answer the requests that `read_chunk()` delivers (b"" at the end) until it ends ("eof"), none
    comes for idle_s ("idle") or "quit". A client that goes away during a job stops it at once: the
    process exits (deleting the job's `denoise-cnn-*` folder)."""
    import queue

    requests: queue.Queue = queue.Queue()
    current: dict[str, Path | None] = {"dir": None}  # the running job's folder

    def reader() -> None:
        buf = b""
        try:
            while True:
                chunk = read_chunk()
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        requests.put(line)
        except OSError:
            pass
        d = current["dir"]
        if d is not None:
            if d.name.startswith("denoise-cnn-"):
                shutil.rmtree(d, ignore_errors=True)
            os._exit(3)
        requests.put(None)

    threading.Thread(target=reader, name="requests", daemon=True).start()
    _emit(event="ready", pid=os.getpid(), version=PROTOCOL_VERSION)
    while True:
        try:
            line = requests.get(timeout=idle_s)
        except queue.Empty:
            _emit(event="bye", reason=f"idle for {idle_s:g} s")
            return "idle"
        if line is None:
            return "eof"
        reply: dict = {}
        try:
            req = json.loads(line)
            reply = {"id": req.get("id")}
            cmd = req.get("cmd")
            if cmd == "quit":
                _emit(event="bye", reason="quit", **reply)
                return "quit"
            if cmd == "info":
                _emit(event="info", pid=os.getpid(), **_info(req, cache), **reply)
            elif cmd == "job":
                path = Path(req["job"])
                current["dir"] = path.parent
                try:
                    run_job(path, cache, reply)
                finally:
                    current["dir"] = None
            else:
                raise ValueError(f"unknown request {cmd!r}")
        except Exception as e:  # reported; the worker stays up for the next request
            _emit(event="error", message=str(e) or type(e).__name__, kind=type(e).__name__, **reply)


def serve(idle_s: float = IDLE_S) -> int:
    """The persistent worker on stdin/stdout (see the module docstring)."""
    _session(lambda: os.read(0, 65536), {}, idle_s)  # the raw fd, as in _exit_when_parent_dies
    return 0


def serve_socket(path: str, host_pid: int | None, idle_s: float = IDLE_S) -> int:
    """The persistent worker of a host whose plug-ins are short-lived processes (GIMP): listens on
    the Unix socket `path`, one client connection (a plug-in run) at a time, keeping loaded models
    between them; exits when process `host_pid` (the host program) has ended, after idle_s with no
    request, or when a client goes away during a job (GIMP's Cancel kills the plug-in). Writes one
    line per start and per connection to `path`.log."""
    import socket
    import time

    log_path = path + ".log"

    def log(msg: str) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%H:%M:%S')} pid {os.getpid()}: {msg}\n")

    def host_alive() -> bool:
        if host_pid is None:
            return True
        try:
            os.kill(host_pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            pass
        return True

    def bye() -> None:
        try:
            os.unlink(path)
        except OSError:
            pass

    if os.path.exists(path):
        os.unlink(path)  # a dead worker's: the client connects only when nobody listens
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        srv.bind(path)
    finally:
        os.umask(old)
    srv.listen(4)
    srv.settimeout(idle_s)
    log(f"started for host pid {host_pid}")

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if host_pid and not host_alive():
                log("host ended")
                bye()
                os._exit(0)

    threading.Thread(target=watch, name="host-watch", daemon=True).start()
    cache: dict = {}
    while True:
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            log(f"idle for {idle_s:g} s")
            bye()
            return 0
        conn.settimeout(None)
        out = conn.makefile("w", encoding="utf-8", newline="\n")
        _OUT[0] = out
        log("serving a client")
        try:
            ended = _session(lambda: conn.recv(65536), cache, idle_s)
        except OSError:  # the client went away while we wrote
            ended = "eof"
        finally:
            _OUT[0] = None
            for c in (out, conn):
                try:
                    c.close()
                except OSError:
                    pass
        if ended in ("idle", "quit"):
            log(ended)
            bye()
            return 0


def main(argv: list[str] | None = None) -> int:
    atexit.register(gc.freeze)  # the last collection at exit skips torch's objects (cli/batch.py)
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--serve"]:
        opts = dict(zip(args[1::2], args[2::2]))
        if len(args) % 2 == 1 and set(opts) <= {"--idle", "--socket", "--host-pid"}:
            idle = float(opts.get("--idle", IDLE_S))
            if "--socket" in opts:
                host = int(opts["--host-pid"]) if "--host-pid" in opts else None
                return serve_socket(opts["--socket"], host, idle)
            return serve(idle)
    if len(args) != 1 or args[0].startswith("--"):
        _emit(event="error", message="usage: python -m denoise_core.worker JOB.json | "
                                     "--serve [--idle SECONDS] [--socket PATH [--host-pid PID]]")
        return 2
    try:
        run_job(Path(args[0]))
    except Exception as e:  # the plugin shows the message; the worker never dies with a bare traceback
        _emit(event="error", message=str(e) or type(e).__name__, kind=type(e).__name__)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
