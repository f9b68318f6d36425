"""Host-side client of the denoise worker, shared by the Krita and GIMP plugins (stdlib only).

The host's Python has no torch, so the plugins start the core in the user's own Python (recorded
at install time in denoise_worker.json beside this file: {"python": ..., "pythonpath": ...}) as `python -m denoise_core.worker JOB`,
passing pixels through a private temporary folder. See denoise_core/worker.py for the protocol.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

CONFIG_NAME = "denoise_worker.json"
PROTOCOL_VERSION = 1


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
    device: str = "auto",
    tile: int = 1024,
    on_progress=None,
    is_cancelled=None,
    env: dict | None = None,
    poll_s: float = 0.05,
) -> bytes:
    """Denoise float32 little-endian interleaved pixels; returns bytes of the same layout.

    `on_progress(fraction)` is called from this thread; `is_cancelled()` is polled and, when true,
    the worker is terminated and Cancelled raised. Errors raise WorkerError with a readable message.
    `noise_level` None is automatic (one blind pass); a number 0..4 is passed on to the model (see
    denoise_core/levels.py); a model without a noise-level input makes the worker say so.
    """
    expected = width * height * channels * 4
    if len(pixels) != expected:
        raise WorkerError(f"internal error: {len(pixels)} bytes for {width}x{height}x{channels} float32")
    if not os.path.exists(python):
        raise WorkerError(f"the denoiser's Python {python} no longer exists: reinstall with "
                          f"`denoise-plugin install`")
    tmp = tempfile.mkdtemp(prefix="denoise-cnn-")  # mode 0700: private to the user
    try:
        with open(os.path.join(tmp, "in.raw"), "wb") as f:
            f.write(pixels)
        job = {"version": PROTOCOL_VERSION, "width": width, "height": height, "channels": channels,
               "input": "in.raw", "output": "out.raw", "transfer": transfer, "model": model,
               "strength": float(strength), "noise_level": None if noise_level is None else float(noise_level),
               "device": device, "tile": int(tile), "parent_pipe": True}
        job_path = os.path.join(tmp, "job.json")
        with open(job_path, "w", encoding="utf-8") as f:
            json.dump(job, f)
        events = _run_worker(python, pythonpath, job_path, on_progress, is_cancelled, env, poll_s)
        done = [e for e in events if e.get("event") == "done"]
        if not done:
            errors = [e.get("message", "") for e in events if e.get("event") == "error"]
            raise WorkerError(errors[-1] if errors else "the denoiser stopped without a result")
        with open(os.path.join(tmp, "out.raw"), "rb") as f:
            out = f.read()
        if len(out) != expected:
            raise WorkerError("the denoiser returned an image of the wrong size")
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_worker(python, pythonpath, job_path, on_progress, is_cancelled, env, poll_s) -> list:
    run_env = dict(os.environ if env is None else env)
    # a host program's own Python settings must not leak into the user's interpreter
    for k in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE"):
        run_env.pop(k, None)
    if pythonpath:  # where the installing interpreter found denoise_core (a source checkout, say)
        run_env["PYTHONPATH"] = pythonpath
    run_env["PYTHONUNBUFFERED"] = "1"
    try:
        proc = subprocess.Popen([python, "-m", "denoise_core.worker", job_path], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.PIPE, env=run_env)
        # nothing is ever written to stdin: it reaches end-of-file when this process dies (GIMP kills a
        # plug-in whose progress bar is cancelled), which tells the worker to stop and clean up
    except OSError as e:
        raise WorkerError(f"cannot start the denoiser's Python {python}: {e}") from None
    events: list = []
    stderr_chunks: list = []
    lock = threading.Lock()

    def read_stdout():
        for line in proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with lock:
                events.append(ev)

    def read_stderr():
        stderr_chunks.append(proc.stderr.read())

    readers = [threading.Thread(target=read_stdout, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for t in readers:
        t.start()
    seen = 0
    try:
        while True:
            rc = proc.poll()
            with lock:
                new, seen = events[seen:], len(events)
            for ev in new:
                if ev.get("event") == "progress" and on_progress and ev.get("total"):
                    on_progress(ev["done"] / ev["total"])
            if rc is not None:
                break
            if is_cancelled and is_cancelled():
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                raise Cancelled("denoising cancelled")
            time.sleep(poll_s)
    finally:
        proc.stdin.close()
    for t in readers:
        t.join(5)
    if rc != 0 and not any(e.get("event") == "error" for e in events):
        tail = b"".join(c or b"" for c in stderr_chunks).decode("utf-8", "replace").strip().splitlines()[-5:]
        if any("No module named denoise_core" in ln for ln in tail):
            raise WorkerError(f"{python} cannot import denoise_core: reinstall with `denoise-plugin install` "
                              f"from the Python environment where the denoiser is installed")
        raise WorkerError(f"the denoiser exited with code {rc}: " + (" | ".join(tail) or "no message"))
    return events
