"""Host-side client of the denoise worker, shared by the Krita and GIMP plugins (stdlib only).

The host's Python has no torch, so the plugins run the core in the user's own Python (recorded
at install time in denoise_worker.json beside this file: {"python": ..., "pythonpath": ...}) as a
persistent `python -m denoise_core.worker --serve` process (one per host process, see Worker),
passing pixels through a private temporary folder. See denoise_core/worker.py for the protocol.

Also the helpers both plugins use for the same pixels everywhere: `job_settings` (what a run
asks for), `context_region` (the rectangle to read around a selection: the worker's context,
on the model's grid) and `crop_rows` (the selection's part of the result).
"""
from __future__ import annotations

import atexit
import collections
import itertools
import json
import os
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time

try:  # in a package: Krita's plug-in (the installer copies denoise_protocol.py beside this file), or
    # denoise_plugins.common
    from .denoise_protocol import (CONFIG_NAME, DEFAULT_TILE, JOB_DIR_PREFIX, MAX_NOISE_LEVEL, MAX_SIGMA,
                                   PROTOCOL_VERSION, SAMPLE_BYTES)
except ImportError:  # a top-level module: GIMP's plug-in folder (beside this file, on sys.path)
    from denoise_protocol import (CONFIG_NAME, DEFAULT_TILE, JOB_DIR_PREFIX, MAX_NOISE_LEVEL, MAX_SIGMA,
                                  PROTOCOL_VERSION, SAMPLE_BYTES)


class WorkerError(RuntimeError):
    """Something the user should read: the worker's own message, or why it could not start."""


class Cancelled(Exception):
    pass


def load_config(plugin_dir: str) -> dict:
    path = os.path.join(plugin_dir, CONFIG_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise WorkerError(f"{path} is missing: reinstall with `denoise-plugin install`") from None
    except ValueError as e:
        raise WorkerError(f"{path} is not valid JSON ({e}): reinstall with `denoise-plugin install`") from None
    if not cfg.get("python"):
        raise WorkerError(f"{path} names no Python interpreter: reinstall with `denoise-plugin install`")
    return cfg


def job_settings(settings: dict | None = None, **overrides) -> dict:
    """What a run asks the worker for, checked and with defaults: model, strength (0..1), noise_level
    (None = automatic, or 0..MAX_NOISE_LEVEL, relative), sigma (None = automatic, or 0..MAX_SIGMA on
    the 0-255 scale, absolute; excludes noise_level), device, tile, precision. Both plugins build
    their jobs with it, so a setting means the same in both hosts."""
    s = dict(settings or {}, **overrides)
    model = str(s.get("model") or "").strip() or "default"
    strength = float(s.get("strength", 1.0))
    if not 0.0 <= strength <= 1.0:
        raise WorkerError(f"strength must be within 0..1, got {strength:g}")
    level = s.get("noise_level")
    if level is not None:
        level = float(level)
        if not 0.0 <= level <= MAX_NOISE_LEVEL:
            raise WorkerError(f"noise level must be within 0..{MAX_NOISE_LEVEL:g}, got {level:g}")
    sigma = s.get("sigma")
    if sigma is not None:
        sigma = float(sigma)
        if not 0.0 <= sigma <= MAX_SIGMA:
            raise WorkerError(f"sigma must be within 0..{MAX_SIGMA:g}, got {sigma:g}")
        if level is not None:
            raise WorkerError("give a relative noise level or an absolute sigma, not both")
    return {"model": model, "strength": strength, "noise_level": level, "sigma": sigma,
            "device": str(s.get("device") or "auto"), "tile": int(s.get("tile") or DEFAULT_TILE),
            "precision": str(s.get("precision") or "auto")}


def context_region(x: int, y: int, w: int, h: int, width: int, height: int, context: int,
                   multiple: int = 1) -> tuple:
    """The rectangle (x, y, w, h) to send to the worker for region (x, y, w, h) of a width x height
    layer: grown by `context` pixels on every side (the worker's "info" answer), its origin moved
    down onto the model's `multiple` grid (a model that downsamples is not shift-invariant), clipped
    to the layer. Denoising it gives, inside the region, exactly what denoising the whole layer gives."""
    if w <= 0 or h <= 0:
        raise ValueError("empty region")
    m = max(1, int(multiple))
    x0, y0 = max(0, x - context) // m * m, max(0, y - context) // m * m
    x1, y1 = min(width, x + w + context), min(height, y + h + context)
    return x0, y0, x1 - x0, y1 - y0


def crop_rows(data, width: int, height: int, channels: int, x: int, y: int, w: int, h: int,
              sample_bytes: int = 4) -> bytes:
    """Rectangle (x, y, w, h) out of an interleaved width x height x channels pixel buffer."""
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"crop {w}x{h}+{x}+{y} leaves the {width}x{height} buffer")
    px = channels * sample_bytes
    stride = width * px
    if len(data) != stride * height:
        raise ValueError(f"{len(data)} bytes is not {width}x{height}x{channels}")
    if x == 0 and w == width:
        return bytes(data[y * stride:(y + h) * stride])
    view = memoryview(data)
    return b"".join(view[(y + r) * stride + x * px:(y + r) * stride + (x + w) * px] for r in range(h))


class Worker:
    """One persistent denoiser process (`python -m denoise_core.worker --serve`), started on the
    first request and again, transparently, on a request after it ended (idle timeout, crash,
    cancel). It keeps loaded models between requests. It ends when this process ends (its stdin
    closes), after `idle_s` without a request, on `close()`, and on cancel (`is_cancelled`), which
    kills it at once; the client then deletes the job's temp folder. One request at a time.

    With `socket_path` (a host whose plug-ins are short-lived processes: GIMP) the worker is a
    daemon that outlives this process: found at that Unix socket, started there if nobody listens,
    and it ends with process `host_pid` (the host program) or after its idle time; this client's
    end, or close(), only ends the connection. Cancel closes the connection mid-job, which ends
    that worker at once (the next run starts another)."""

    def __init__(self, python: str, pythonpath: str | None = None, env: dict | None = None,
                 idle_s: float | None = None, socket_path: str | None = None, host_pid: int | None = None):
        self.python, self.pythonpath, self.env, self.idle_s = python, pythonpath, env, idle_s
        self.socket_path, self.host_pid = socket_path, host_pid
        self.sock = None
        self._ready_pid = None
        self._ended = threading.Event()
        self.proc = None
        self.starts = 0  # processes started so far (tests and the status line read it)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._events: queue.Queue = queue.Queue()
        self._stderr: collections.deque = collections.deque(maxlen=40)

    @property
    def pid(self):
        if self.socket_path:
            return self._ready_pid if self.alive() else None
        return self.proc.pid if self.alive() else None

    def alive(self) -> bool:
        if self.socket_path:
            return self.sock is not None and not self._ended.is_set()
        return self.proc is not None and self.proc.poll() is None

    def _env(self) -> dict:
        run_env = dict(os.environ if self.env is None else self.env)
        # a host program's own Python settings must not leak into the user's interpreter
        for k in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE"):
            run_env.pop(k, None)
        if self.pythonpath:  # where the installing interpreter found denoise_core (a source checkout)
            run_env["PYTHONPATH"] = self.pythonpath
        run_env["PYTHONUNBUFFERED"] = "1"
        return run_env

    def _connect(self) -> None:
        """Connect to the daemon at socket_path, starting it when nobody listens there."""
        path = self.socket_path
        assert path is not None  # only a socket worker connects

        def attempt():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return s
            except OSError:
                s.close()
                return None

        sock = attempt()
        if sock is None:
            cmd = [self.python, "-m", "denoise_core.worker", "--serve", "--socket", self.socket_path]
            if self.host_pid:
                cmd += ["--host-pid", str(self.host_pid)]
            if self.idle_s is not None:
                cmd += ["--idle", str(self.idle_s)]
            try:
                with open(self.socket_path + ".err", "wb") as err:
                    daemon = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                              stderr=err, env=self._env(), start_new_session=True)
            except OSError as e:
                raise WorkerError(f"cannot start the denoiser's Python {self.python}: {e}") from None
            deadline = time.monotonic() + 120
            while sock is None:
                if daemon.poll() is not None:
                    self._stderr.clear()
                    try:
                        with open(self.socket_path + ".err", encoding="utf-8", errors="replace") as f:
                            self._stderr.extend(f.read().splitlines())
                    except OSError:
                        pass
                    raise self._ended_error(daemon.returncode)
                if time.monotonic() > deadline:
                    daemon.kill()
                    raise WorkerError("the denoiser did not start within 120 s")
                time.sleep(0.05)
                sock = attempt()
            self.starts += 1
        events: queue.Queue = queue.Queue()
        ended = threading.Event()
        rfile = sock.makefile("rb")

        def read_socket():
            try:
                for line in rfile:
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    if ev.get("event") == "ready":
                        self._ready_pid = ev.get("pid")
                    events.put(ev)
            except OSError:
                pass
            ended.set()
            events.put(None)

        threading.Thread(target=read_socket, name="denoise-cnn-worker-io", daemon=True).start()
        self.sock, self._events, self._ended = sock, events, ended
        self._send_file = sock.makefile("wb")

    def _send(self, data: bytes) -> None:
        f = self._send_file if self.socket_path else self.proc.stdin
        f.write(data)
        f.flush()

    def _start(self) -> None:
        if not os.path.exists(self.python):
            raise WorkerError(f"the denoiser's Python {self.python} no longer exists: reinstall with "
                              f"`denoise-plugin install`")
        if self.socket_path:
            return self._connect()
        run_env = self._env()
        cmd = [self.python, "-m", "denoise_core.worker", "--serve"]
        if self.idle_s is not None:
            cmd += ["--idle", str(self.idle_s)]
        try:
            # stdin carries requests; its end-of-file (this process exited or died: GIMP kills a
            # plug-in whose progress bar is cancelled) makes the worker stop and clean up
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=run_env, bufsize=0)
        except OSError as e:
            raise WorkerError(f"cannot start the denoiser's Python {self.python}: {e}") from None
        events: queue.Queue = queue.Queue()
        self._stderr.clear()

        def read_stdout():
            for line in proc.stdout:
                try:
                    events.put(json.loads(line))
                except ValueError:
                    continue
            events.put(None)  # the process has ended

        def read_stderr():
            for line in proc.stderr:
                self._stderr.append(line.decode("utf-8", "replace").rstrip())

        for fn in (read_stdout, read_stderr):
            threading.Thread(target=fn, name="denoise-cnn-worker-io", daemon=True).start()
        self.proc, self._events = proc, events
        self.starts += 1

    def _ended_error(self, rc=None) -> WorkerError:
        if rc is None and self.proc is not None:
            rc = self.proc.wait()
        if self.socket_path and not self._stderr:
            try:
                with open(self.socket_path + ".err", encoding="utf-8", errors="replace") as f:
                    self._stderr.extend(f.read().splitlines()[-40:])
            except OSError:
                pass
        tail = list(self._stderr)[-5:]
        if any("No module named denoise_core" in ln for ln in tail):
            return WorkerError(f"{self.python} cannot import denoise_core: reinstall with `denoise-plugin "
                               f"install` from the Python environment where the denoiser is installed")
        return WorkerError(f"the denoiser exited with code {rc}: " + (" | ".join(tail) or "no message"))

    def request(self, req: dict, on_event=None, is_cancelled=None, poll_s: float = 0.05) -> dict:
        """Send one request; returns its final event ("info" or "done"); an "error" event raises
        WorkerError with the worker's message. `on_event(ev)` sees the others (progress)."""
        with self._lock:
            for attempt in (0, 1):
                if not self.alive():
                    self._start()
                rid = next(self._ids)
                started = False
                try:
                    self._send((json.dumps(dict(req, id=rid)) + "\n").encode())
                except OSError:  # it ended before reading this (idle timeout): start another
                    self.kill()
                    if attempt == 0:
                        continue
                    raise self._ended_error() from None
                while True:
                    if is_cancelled is not None and is_cancelled():
                        self.kill()
                        raise Cancelled("denoising cancelled")
                    try:
                        ev = self._events.get(timeout=poll_s)
                    except queue.Empty:
                        continue
                    if ev is None:
                        if not started and attempt == 0:  # ended before taking it up: start another
                            self.kill()
                            break
                        err = self._ended_error()
                        self.kill()
                        raise err
                    if ev.get("id") != rid:
                        continue  # ready, bye
                    started = True
                    kind = ev.get("event")
                    if kind == "error":
                        raise WorkerError(ev.get("message") or "the denoiser failed")
                    if kind in ("info", "done"):
                        return ev
                    if on_event is not None:
                        on_event(ev)
            raise WorkerError("the denoiser stopped twice before answering")

    def info(self, settings: dict, is_cancelled=None) -> dict:
        """The worker's "info" for these settings: context (px), multiple, has_levels, model."""
        s = job_settings(settings)
        return self.request({"cmd": "info", "model": s["model"], "device": s["device"],
                             "precision": s["precision"], "tile": s["tile"], "noise_level": s["noise_level"],
                             "sigma": s["sigma"]},
                            is_cancelled=is_cancelled)

    def kill(self) -> None:
        """End the process now (cancel): work stops at once. A daemon (socket_path) is ended by
        closing the connection during a job; between jobs that only ends the connection."""
        if self.socket_path:
            sock, self.sock = self.sock, None
            if sock is not None:
                try:
                    self._send_file.close()
                except OSError:
                    pass
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            return
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """Let the process end by itself (end-of-file on its stdin), then make sure it did; a daemon
        (socket_path) only loses this connection and stays up for the next client."""
        if self.socket_path:
            return self.kill()
        proc = self.proc
        if proc is None:
            return
        try:
            proc.stdin.close()
            proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


_WORKERS: dict = {}
_WORKERS_LOCK = threading.Lock()


def shared_worker(python: str, pythonpath: str | None = None, env: dict | None = None) -> Worker:
    """The one Worker of this host process for this interpreter (created on first use)."""
    key = (python, pythonpath, None if env is None else tuple(sorted(env.items())))
    with _WORKERS_LOCK:
        w = _WORKERS.get(key)
        if w is None:
            w = _WORKERS[key] = Worker(python, pythonpath, env)
        return w


def host_worker(host: str, host_pid: int, python: str, pythonpath: str | None = None) -> Worker:
    """The worker that serves every plug-in run of one running host program (pid `host_pid`),
    through a Unix socket in a private per-user folder; where Unix sockets are missing, this
    process's own worker."""
    if not hasattr(socket, "AF_UNIX") or not hasattr(os, "getuid"):  # Windows
        return shared_worker(python, pythonpath)
    folder = os.path.join(tempfile.gettempdir(), f"denoise-workers-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    st = os.stat(folder)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise WorkerError(f"{folder} is not private to this user: remove it and try again")
    key = ("socket", host, host_pid, python, pythonpath)
    with _WORKERS_LOCK:
        w = _WORKERS.get(key)
        if w is None:
            w = _WORKERS[key] = Worker(python, pythonpath, socket_path=os.path.join(folder, f"{host}-{host_pid}.sock"),
                                       host_pid=host_pid)
        return w


@atexit.register
def close_workers() -> None:
    with _WORKERS_LOCK:
        workers = list(_WORKERS.values())
    for w in workers:
        w.close()


def run_denoise(
    pixels: bytes,
    width: int,
    height: int,
    channels: int,
    *,
    python: str,
    pythonpath: str | None = None,
    transfer: str = "srgb",
    model: str = "default",
    strength: float = 1.0,
    noise_level: float | None = None,
    sigma: float | None = None,
    device: str = "auto",
    tile: int = DEFAULT_TILE,
    precision: str = "auto",
    on_progress=None,
    is_cancelled=None,
    env: dict | None = None,
    poll_s: float = 0.05,
    worker: Worker | None = None,
    dtype: str = "f32",
    swap_rb: bool = False,
    crop=None,
    mask: bytes | None = None,
    rgba8: bool = False,
):
    """Denoise float32 little-endian interleaved pixels; returns bytes of the same layout.

    Or other layouts, converted by the worker so the host does no per-pixel work (see
    denoise_core/worker.py): `dtype` "u8"/"u16"/"f16" native samples, `swap_rb` for B,G,R,A; the
    result only for `crop` (x, y, w, h), blended through `mask` (one byte a pixel of the crop);
    with `rgba8` the return value is a dict: "pixels", and 8-bit R,G,B,A for display, "rgba8"
    (result) and "rgba8_before" (input).

    Runs on `worker`, by default this process's shared one for `python`. `on_progress(fraction)`
    is called from this thread; `is_cancelled()` is polled and, when true, the worker is killed
    (the next call starts another) and Cancelled raised. Errors raise WorkerError with a readable
    message. `noise_level` None is automatic (one blind pass); a number 0..4 is passed on to the
    model (see denoise_core/inference/levels.py); `sigma` instead is the noise's standard deviation on the
    0-255 scale; a model without a noise-level input makes the worker say so.
    """
    size = SAMPLE_BYTES[dtype]
    if len(pixels) != width * height * channels * size:
        raise WorkerError(f"internal error: {len(pixels)} bytes for {width}x{height}x{channels} {dtype}")
    cw, ch = (width, height) if crop is None else (int(crop[2]), int(crop[3]))
    expected = cw * ch * channels * size
    if mask is not None and len(mask) != cw * ch:
        raise WorkerError(f"internal error: {len(mask)} mask bytes for {cw}x{ch}")
    s = job_settings(model=model, strength=strength, noise_level=noise_level, sigma=sigma, device=device,
                     tile=tile, precision=precision)
    if worker is None:
        if not os.path.exists(python):
            raise WorkerError(f"the denoiser's Python {python} no longer exists: reinstall with "
                              f"`denoise-plugin install`")
        worker = shared_worker(python, pythonpath, env)
    tmp = tempfile.mkdtemp(prefix=JOB_DIR_PREFIX)  # mode 0700: private to the user
    try:
        with open(os.path.join(tmp, "in.raw"), "wb") as f:
            f.write(pixels)
        job = {"version": PROTOCOL_VERSION, "width": width, "height": height, "channels": channels,
               "input": "in.raw", "output": "out.raw", "transfer": transfer, **s}
        if dtype != "f32" or swap_rb:
            job.update(dtype=dtype, swap_rb=bool(swap_rb))
        if crop is not None:
            job["crop"] = [int(v) for v in crop]
        if mask is not None:
            with open(os.path.join(tmp, "mask.raw"), "wb") as f:
                f.write(mask)
            job["mask"] = "mask.raw"
        if rgba8:
            job.update(rgba8="after8.raw", rgba8_before="before8.raw")
        job_path = os.path.join(tmp, "job.json")
        with open(job_path, "w", encoding="utf-8") as f:
            json.dump(job, f)

        def on_event(ev):
            if ev.get("event") == "progress" and on_progress and ev.get("total"):
                on_progress(ev["done"] / ev["total"])

        worker.request({"cmd": "job", "job": job_path}, on_event, is_cancelled, poll_s)
        with open(os.path.join(tmp, "out.raw"), "rb") as f:
            out = f.read()
        if len(out) != expected:
            raise WorkerError("the denoiser returned an image of the wrong size")
        if on_progress:
            on_progress(1.0)
        if rgba8:
            res = {"pixels": out}
            for key, name in (("rgba8", "after8.raw"), ("rgba8_before", "before8.raw")):
                with open(os.path.join(tmp, name), "rb") as f:
                    res[key] = f.read()
                if len(res[key]) != cw * ch * 4:
                    raise WorkerError("the denoiser returned a preview of the wrong size")
            return res
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
