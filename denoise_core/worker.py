"""The worker the host plugins start: `python -m denoise_core.worker --serve` (persistent) or
`python -m denoise_core.worker JOB.json` (one job).

Protocol (the plugins' side is denoise_plugins/common/denoise_client.py; the constants both sides use,
PROTOCOL_VERSION, MAX_NOISE_LEVEL, MAX_SIGMA, IDLE_S and the rest, are denoise_plugins/common/denoise_protocol.py):
  JOB.json  {"version": 1, "width": W, "height": H, "channels": 1-4, "input": "in.raw",
             "output": "out.raw", "transfer": "srgb" | "linear", "model": "default" | name | path,
             "strength": 0..1, "noise_level": null or 0..4 (optional, see inference/api.py),
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
            colour (pixels with mask 0 stay bit-identical; denoise_plugins/krita/denoise_cnn/pixels.py
            apply_mask is the same blend).
  "rgba8": "after.raw", "rgba8_before": "before.raw"   8-bit sRGB-encoded R,G,B,A of the output
            and of the input (crop), for an on-screen preview.
Every file a job names is a name inside the job file's own folder (absolute paths, `..` and links
out of it are refused: whoever can reach the worker can make it read and write only there) and
must be a regular file (a FIFO is refused, never opened); NaN or infinite float samples are
refused. A malformed request or job is answered with an error event naming the field.
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
A request line is at most MAX_REQUEST_BYTES; a longer one is answered with an error and skipped
up to its newline. It starts with {"event": "ready", "pid": ...}. End-of-file on stdin (the client exited or died)
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
import math
import os
import shutil
import stat
import sys
import threading
from typing import Any
from pathlib import Path

import numpy as np

from denoise_plugins.common.denoise_protocol import (DEFAULT_TILE, IDLE_S, JOB_DIR_PREFIX, MAX_REQUEST_BYTES,
                                                     PROTOCOL_VERSION, SAMPLE_BYTES)

from .imaging.files import file_problem

MAX_CACHED = 2  # loaded models kept by a persistent worker
MAX_JOB_BYTES = 1 << 20  # a job file
_TOO_LONG = object()  # what the reader queues for a request over MAX_REQUEST_BYTES


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
        if job_dir.name.startswith(JOB_DIR_PREFIX):
            shutil.rmtree(job_dir, ignore_errors=True)
        os._exit(3)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class _FieldError(ValueError):
    """A request or job field that is missing or of the wrong kind (the message names the field)."""


_REQUIRED = object()


def _get(obj: dict, key: str, kind: str, default: Any = _REQUIRED) -> Any:
    """obj[key] checked to be of `kind` ("int", "number", "number|null", "str"); absent or null
    gives `default` (for "number|null", null stays null), or _FieldError when there is none."""
    value: Any = obj.get(key)
    if value is None and not (kind == "number|null" and key in obj):
        if default is _REQUIRED:
            raise _FieldError(f'"{key}" is missing')
        return default
    if kind == "number|null" and value is None:
        return None
    ok = {"int": type(value) is int,
          "str": isinstance(value, str),
          "number": type(value) in (int, float) and math.isfinite(float(value or 0)),
          "number|null": type(value) in (int, float) and math.isfinite(float(value or 0))}[kind]
    if not ok:
        want = {"int": "an integer", "str": "a string", "number": "a finite number",
                "number|null": "a number or null"}[kind]
        raise _FieldError(f'"{key}" must be {want}, not {_shown(value)}')
    return value


def _shown(value, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _json_kind(value) -> str:
    return ("null" if value is None else "an array" if isinstance(value, list) else "a string" if isinstance(value, str)
            else "a boolean" if isinstance(value, bool) else "a number")


def _read_regular(path: Path, *, limit: int | None = None, size: int | None = None, what: str = "a file") -> bytes:
    """The bytes of `path`, which must be a regular file (a FIFO would block the worker until the
    client left; a device never ends), of at most `limit` bytes or of exactly `size` bytes."""
    problem = file_problem(path, what)
    if problem:
        raise ValueError(f"{path}: {problem}")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)    # never blocks, even if a FIFO took its place since
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: not a regular file")
        if limit is not None and st.st_size > limit:
            raise ValueError(f"{path}: larger than {limit} bytes, not {what}")
        if size is not None and st.st_size != size:
            return f.read(size + 1)        # the caller says what the size should have been
        return f.read()


def _job_path(base: Path, job: dict, key: str, *, required: bool = True) -> Path | None:
    """The one resolver of the paths a job names ("input", "output", "mask", "rgba8",
    "rgba8_before"): a name inside the job's own folder `base`, symbolic links followed. Anything
    else -- an absolute path, `..`, a link out of the folder -- is refused: whoever can send the
    worker a job can only make it read and write in the folder that job lives in."""
    value = job.get(key)
    if value is None:
        if required:
            raise _FieldError(f'"{key}" is missing')
        return None
    folder = os.path.realpath(base)
    target = (os.path.realpath(os.path.join(folder, value)) if isinstance(value, str) and value and "\0" not in value
              else None)
    if (target is None or os.path.isabs(value) or target == folder
            or os.path.commonpath([folder, target]) != folder):
        raise ValueError(f'job "{key}": {_shown(value)} is not a file inside the job folder {base}')
    return Path(target)


def _settings(req: dict, default_tile: int) -> tuple[str, str, str, int, float | None]:
    """model, device, precision, tile and noise_level of an info request or a job, checked."""
    tile = _get(req, "tile", "int", default_tile)
    if tile < 16:
        raise _FieldError(f'"tile" must be at least 16, not {tile}')
    return (_get(req, "model", "str", "default"), _get(req, "device", "str", "auto"),
            _get(req, "precision", "str", "auto"), tile, _get(req, "noise_level", "number|null", None))


def run_job(job_path: Path, cache: dict | None = None, reply: dict | None = None) -> None:
    """One job file. `cache` keeps loaded models between jobs (persistent mode); `reply` is added
    to every event (the request id). Everything the job names is checked (its fields, and its
    files: inside its folder, regular, of the right size) before any work."""
    from .inference.api import check_finite
    from .imaging.atomic import atomic_write_bytes

    reply = reply or {}
    job_path = Path(job_path)
    text = _read_regular(job_path, limit=MAX_JOB_BYTES, what="a job file")
    try:
        job = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{job_path}: not a JSON job file ({e})") from None
    base = job_path.parent
    try:
        if not isinstance(job, dict):
            raise _FieldError(f"a job is a JSON object, not {_json_kind(job)}")
        if job.get("version") != PROTOCOL_VERSION:
            raise ValueError(f"job protocol version {_shown(job.get('version'))} is not {PROTOCOL_VERSION}; "
                             f"reinstall the plugin with `denoise-plugin install`")
        w, h, c = (_get(job, k, "int") for k in ("width", "height", "channels"))
        if c not in (1, 2, 3, 4) or w < 1 or h < 1:
            raise ValueError(f"bad image geometry {w}x{h}x{c}")
        model, device, precision, tile, level = _settings(job, DEFAULT_TILE)
        strength = _get(job, "strength", "number", 1.0)
        sigma = _get(job, "sigma", "number|null", None)
        if not 0.0 <= strength <= 1.0:
            raise _FieldError(f'"strength" must be within 0..1, not {_shown(strength)}')
        dtype_name = _get(job, "dtype", "str", "f32")
        if dtype_name not in SAMPLE_BYTES:
            raise ValueError(f"unknown dtype {_shown(dtype_name)}")
        crop = job.get("crop")
        if crop is not None and (not isinstance(crop, list) or len(crop) != 4
                                 or not all(type(v) is int for v in crop)):
            raise _FieldError(f'"crop" must be [x, y, w, h], not {_shown(crop)}')
        paths = {key: _job_path(base, job, key, required=key in ("input", "output"))
                 for key in ("input", "output", "mask", "rgba8", "rgba8_before")}
    except _FieldError as e:
        raise ValueError(f"{job_path}: {e}") from None
    if crop is not None:
        x, y, cw, ch = crop
        if x < 0 or y < 0 or cw < 1 or ch < 1 or x + cw > w or y + ch > h:
            raise ValueError(f"crop {crop} leaves the {w}x{h} input")
    if job.get("parent_pipe"):
        _exit_when_parent_dies(base)
    dtype, peak = SAMPLE_TYPES[dtype_name]
    size = np.dtype(dtype).itemsize
    in_path, out_path = paths["input"], paths["output"]
    assert in_path is not None and out_path is not None  # required above
    raw = _read_regular(in_path, size=w * h * c * size, what="an input file")
    if len(raw) != w * h * c * size:
        raise ValueError(f"input holds {len(raw)} bytes, expected {w * h * c * size} for {w}x{h}x{c} {dtype_name}")
    mask = None
    if paths["mask"] is not None:
        n = (crop[2] * crop[3]) if crop is not None else w * h
        mask = np.frombuffer(_read_regular(paths["mask"], size=n, what="a mask file"), np.uint8)
        if mask.size != n:
            raise ValueError(f"mask holds {mask.size} bytes, expected one per output pixel")
    swap = bool(job.get("swap_rb")) and c == 4
    order = [2, 1, 0, 3] if swap else slice(None)
    native = np.frombuffer(raw, dtype=dtype).reshape(h, w, c)
    pix = native.astype(np.float32)[..., order]
    if peak:
        pix /= np.float32(peak)
    colour_c = 1 if c in (1, 2) else 3
    colour = pix[..., :colour_c]
    if not peak:
        check_finite(colour)     # NaN or infinity: refused, never spread over the tile
    linear = _get(job, "transfer", "str", "srgb") == "linear"
    if linear:
        colour = _srgb_encode(colour)
    dn = _denoiser(cache, model, device, precision, tile)
    _emit(event="start", model=str(dn.path), arch=dn.arch, device=str(dn.device), precision=dn.precision,
          pid=os.getpid(), **reply)
    out = dn.denoise(np.ascontiguousarray(colour, dtype=np.float32), strength=float(strength),
                     noise_level=None if level is None else float(level),
                     sigma=None if sigma is None else float(sigma),
                     progress=lambda done, total: _emit(event="progress", done=done, total=total, **reply))
    if linear:
        out = _srgb_decode(out)
    result = pix.copy()
    # keep values the net did not change bit-identical (strength 0, or untouched pixels)
    result[..., :colour_c] = out
    if crop is not None:
        x, y, cw, ch = crop
        pix, result, native = (a[y:y + ch, x:x + cw] for a in (pix, result, native))
    if mask is not None:
        m = mask.reshape(result.shape[:2])
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
    atomic_write_bytes(out_path, np.ascontiguousarray(data[..., order]).tobytes())
    for key, img in (("rgba8", result), ("rgba8_before", pix)):
        extra = paths[key]
        if extra is not None:
            atomic_write_bytes(extra, _rgba8(img, linear))
    _emit(event="done", output=job["output"], pid=os.getpid(), **reply)


# the protocol's sample types (SAMPLE_BYTES) as numpy types, and their integer scale (0: float)
SAMPLE_TYPES = {"f32": ("<f4", 0), "f16": ("=f2", 0), "u8": (np.uint8, 255), "u16": ("=u2", 65535)}


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
    from .inference.api import Denoiser, resolve_model
    from .inference.device import available_cores

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

    model, device, precision, tile, level = _settings(req, DEFAULT_TILE)
    dn = _denoiser(cache, model, device, precision, tile)
    level = None if level is None else float(level)
    sigma = _get(req, "sigma", "number|null", None)
    dn.check_noise_level(level, None if sigma is None else float(sigma))
    return {"context": int(dn.context(level)), "multiple": int(dn.multiple), "has_levels": dn.has_levels,
            "model": str(dn.path), "arch": dn.arch, "device": str(dn.device), "precision": dn.precision}


def _serve_connection(read_chunk, cache: dict, idle_s: float) -> str:
    """Answer the requests that `read_chunk()` delivers (b"" at the end) until it ends ("eof"), none
    comes for idle_s ("idle") or "quit". A client that goes away during a job stops it at once: the
    process exits (deleting the job's `denoise-cnn-*` folder)."""
    import queue

    requests: queue.Queue = queue.Queue()
    current: dict[str, Path | None] = {"dir": None}  # the running job's folder

    def reader() -> None:
        parts: list[bytes] = []  # the line so far, in pieces: each byte is looked at once
        size, skipping = 0, False  # skipping: the rest of a line longer than MAX_REQUEST_BYTES
        try:
            while True:
                chunk = read_chunk()
                if not chunk:
                    break
                start = 0
                while True:
                    nl = chunk.find(b"\n", start)
                    piece = chunk[start:] if nl < 0 else chunk[start:nl]
                    if not skipping:
                        size += len(piece)
                        if size > MAX_REQUEST_BYTES:  # answered now; the line is dropped up to its newline
                            requests.put(_TOO_LONG)
                            parts, skipping = [], True
                        else:
                            parts.append(piece)
                    if nl < 0:
                        break
                    line = b"".join(parts)
                    if not skipping and line.strip():
                        requests.put(line)
                    parts, size, skipping, start = [], 0, False, nl + 1
        except OSError:
            pass
        d = current["dir"]
        if d is not None:
            if d.name.startswith(JOB_DIR_PREFIX):
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
        if line is _TOO_LONG:
            _emit(event="error", message=f"request longer than {MAX_REQUEST_BYTES} bytes without a newline; ignored",
                  kind="ValueError")
            continue
        reply: dict = {}
        try:
            try:
                req = json.loads(line)
            except (ValueError, RecursionError) as e:
                raise ValueError(f"a request is one line of JSON ({e})") from None
            if not isinstance(req, dict):
                raise ValueError(f"a request is a JSON object, not {_json_kind(req)}")
            reply = {"id": req.get("id")}
            cmd = req.get("cmd")
            if cmd == "quit":
                _emit(event="bye", reason="quit", **reply)
                return "quit"
            if cmd == "info":
                _emit(event="info", pid=os.getpid(), **_info(req, cache), **reply)
            elif cmd == "job":
                job = req.get("job")
                if not isinstance(job, str) or not job:
                    raise ValueError('a "job" request needs "job": the path of a job file')
                path = Path(job)
                current["dir"] = path.parent
                try:
                    run_job(path, cache, reply)
                finally:
                    current["dir"] = None
            elif cmd is None:
                raise ValueError('a request needs "cmd": info, job or quit')
            else:
                raise ValueError(f"unknown request {_shown(cmd)} (known: info, job, quit)")
        except Exception as e:  # reported; the worker stays up for the next request
            _emit(event="error", message=str(e) or type(e).__name__, kind=type(e).__name__, **reply)


def serve(idle_s: float = IDLE_S) -> int:
    """The persistent worker on stdin/stdout (see the module docstring)."""
    _serve_connection(lambda: os.read(0, 65536), {}, idle_s)  # the raw fd, as in _exit_when_parent_dies
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
            ended = _serve_connection(lambda: conn.recv(65536), cache, idle_s)
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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--idle {text!r} is not a positive number of seconds")
    return value


def _pid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"--host-pid {text!r} is not a process id")
    return value


def main(argv: list[str] | None = None) -> int:
    atexit.register(gc.freeze)  # the last collection at exit skips torch's objects (denoise_cli/batch.py)
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--serve"]:
        opts = dict(zip(args[1::2], args[2::2]))
        if len(args) % 2 == 1 and set(opts) <= {"--idle", "--socket", "--host-pid"}:
            try:
                idle = _seconds(opts.get("--idle", str(IDLE_S)))
                host = _pid(opts["--host-pid"]) if "--host-pid" in opts else None
            except ValueError as e:
                _emit(event="error", message=str(e))
                return 2
            if "--socket" in opts:
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
