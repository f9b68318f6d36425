"""The plugins' worker protocol, through the shared stdlib client, as a real subprocess.

No test here depends on how fast the machine is: waits are on events (a process's exit through a
pidfd, a progress event, a pipe), with caps of minutes that only a hung process reaches."""
import contextlib
import os
import select
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "denoise_plugins" / "common"))
import denoise_client as dc  # noqa: E402


def call(img, **kw):
    h, w, c = img.shape
    out = dc.run_denoise(img.astype("<f4").tobytes(), w, h, c, python=sys.executable, pythonpath=str(ROOT), **kw)
    assert isinstance(out, bytes)
    return np.frombuffer(out, "<f4").reshape(h, w, c)


@pytest.mark.parametrize("channels,transfer", [(4, "srgb"), (4, "linear"), (2, "srgb"), (3, "srgb")])
def test_alpha_untouched_and_pixels_denoised(photo_rgb, channels, transfer):
    rng = np.random.default_rng(0)
    clean = photo_rgb[:96, :128].astype(np.float32) / 255
    if channels in (1, 2):
        clean = clean[..., 1:2]
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    if transfer == "linear":
        noisy_in = np.where(noisy <= 0.04045, noisy / 12.92, ((noisy + 0.055) / 1.055) ** 2.4).astype(np.float32)
    else:
        noisy_in = noisy
    alpha = rng.random((96, 128, 1)).astype(np.float32)
    img = np.concatenate([noisy_in, alpha], axis=2) if channels in (2, 4) else noisy_in
    seen = []
    out = call(img, model="seed", transfer=transfer, on_progress=seen.append, tile=32)
    if channels in (2, 4):
        assert np.array_equal(out[..., -1], img[..., -1])
    colour = out[..., : (1 if channels <= 2 else 3)]
    if transfer == "linear":
        colour = np.where(colour <= 0.0031308, colour * 12.92, 1.055 * np.clip(colour, 0, None) ** (1 / 2.4) - 0.055)
    err_in = np.mean((noisy - clean) ** 2)
    err_out = np.mean((colour - clean) ** 2)
    assert err_out < err_in / 2
    # the worker reports every tile (done/total, in order, through the last one); the client adds
    # its own 1.0 once the result is read, so that last value alone proves nothing
    from_worker, n = seen[:-1], len(seen) - 1
    assert n >= 4 and from_worker == [k / n for k in range(1, n + 1)], seen
    assert seen[-1] == 1.0


def test_missing_model_is_a_readable_error():
    with pytest.raises(dc.WorkerError) as e:
        call(np.zeros((8, 8, 4), np.float32), model="/nowhere/model.safetensors")
    assert "/nowhere/model.safetensors" in str(e.value) and "not found" in str(e.value)


def test_missing_interpreter_and_config(tmp_path):
    with pytest.raises(dc.WorkerError, match="no longer exists"):
        dc.run_denoise(b"\0" * 16, 1, 1, 4, python=str(tmp_path / "python9"))
    with pytest.raises(dc.WorkerError, match="missing"):
        dc.load_config(str(tmp_path))


def test_cancel_terminates_the_worker(tmp_path, monkeypatch):
    """Cancel kills the worker mid-job and leaves no temp folder; the next call starts another
    transparently. The job is about a minute of work (the default model on a thousand 64 px tiles),
    cancelled at its first progress event: the worker must have ended, before it finished, by the
    time Cancelled is raised (no clock involved)."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    w = dc.Worker(sys.executable, str(ROOT))
    size = 2048
    img = np.random.default_rng(0).random((size, size, 3), dtype=np.float32)
    seen = []
    procs = []

    def cancel():  # once the job is running (first progress event)
        if not procs:
            procs.append(w.proc)
        return bool(seen)
    with pytest.raises(dc.Cancelled):
        dc.run_denoise(img.tobytes(), size, size, 3, python=sys.executable, model="default", tile=64,
                       on_progress=seen.append, is_cancelled=cancel, worker=w)
    assert seen and seen[-1] < 1.0, seen  # cancelled mid-job
    proc = procs[0]
    # ended already, and not by finishing: 3 is the worker's exit when its client leaves mid-job
    # (denoise_core.worker._serve_connection), a negative code the client's terminate/kill
    assert proc.returncode is not None and proc.returncode != 0, proc.returncode
    assert not w.alive()
    assert list(tmp_path.iterdir()) == []
    small = img[:32, :32]
    out = dc.run_denoise(small.tobytes(), 32, 32, 3, python=sys.executable, model="seed", worker=w)
    assert len(out) == small.nbytes and w.starts == 2
    w.close()


def test_persistent_worker_serves_requests_and_restarts(tmp_path):
    """One process answers info and several jobs (the model stays loaded); a worker that died is
    replaced on the next request."""
    w = dc.Worker(sys.executable, str(ROOT))  # the default idle time (minutes): no clock in this test
    info = w.info({"model": "seed"})
    assert info["pid"] == w.pid and info["context"] >= 1 and info["multiple"] >= 1
    img = np.random.default_rng(1).random((40, 48, 4), dtype=np.float32)
    outs = [dc.run_denoise(img.tobytes(), 48, 40, 4, python=sys.executable, model="seed", worker=w)
            for _ in range(2)]
    assert outs[0] == outs[1] and w.starts == 1 and w.pid == info["pid"]
    w.proc.kill()  # dies between requests (crash, OOM killer)
    w.proc.wait()
    assert w.info({"model": "seed"})["pid"] != info["pid"] and w.starts == 2
    w.close()
    assert not w.alive()


def test_idle_worker_exits_by_itself_and_the_next_request_starts_another(tmp_path):
    w = dc.Worker(sys.executable, str(ROOT), idle_s=0.5)
    pid = w.info({"model": "seed"})["pid"]
    proc = w.proc
    assert proc.wait(timeout=120) == 0, "the idle worker did not exit by itself"  # waits for the event
    assert not w.alive()
    img = np.random.default_rng(1).random((8, 8, 3), dtype=np.float32)
    assert len(dc.run_denoise(img.tobytes(), 8, 8, 3, python=sys.executable, model="seed", worker=w)) == img.nbytes
    assert w.starts == 2 and w.pid != pid
    w.close()


def test_context_region_and_settings():
    # grown by the context, origin on the model's grid, clipped to the layer
    assert dc.context_region(100, 50, 20, 10, 400, 300, 64, 1) == (36, 0, 148, 124)
    assert dc.context_region(100, 50, 20, 10, 400, 300, 64, 8) == (32, 0, 152, 124)
    assert dc.context_region(0, 0, 400, 300, 400, 300, 98, 8) == (0, 0, 400, 300)
    assert dc.context_region(390, 290, 10, 10, 400, 300, 8, 1) == (382, 282, 18, 18)
    with pytest.raises(ValueError):
        dc.context_region(0, 0, 0, 5, 10, 10, 4)
    for channels in (1, 2, 3, 4):
        a = np.arange(7 * 9 * channels, dtype="<f4").reshape(7, 9, channels)
        for x, y, w, h in [(2, 1, 4, 5), (0, 3, 9, 2), (8, 6, 1, 1), (0, 0, 9, 7)]:
            assert dc.crop_rows(a.tobytes(), 9, 7, channels, x, y, w, h) == np.ascontiguousarray(
                a[y:y + h, x:x + w]).tobytes()
    with pytest.raises(ValueError):
        dc.crop_rows(bytes(9 * 7 * 4), 9, 7, 1, 5, 0, 5, 1)
    s = dc.job_settings({"model": " seed ", "strength": 0.5, "noise_level": 2})
    assert s == {"model": "seed", "strength": 0.5, "noise_level": 2.0, "sigma": None, "device": "auto", "tile": 1024,
                 "precision": "auto"}
    assert dc.job_settings({"model": ""})["model"] == "default" and dc.job_settings()["noise_level"] is None
    for bad in ({"strength": 1.5}, {"noise_level": 4.5}, {"noise_level": -1}):
        with pytest.raises(dc.WorkerError):
            dc.job_settings(bad)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker through /proc")
def test_worker_stops_and_cleans_up_when_the_plugin_dies(tmp_path):
    """GIMP's progress-bar Cancel kills the plug-in process outright (no cleanup runs there): its
    worker must not go on burning the CPU, and the job folder with the pixels must not be left."""
    import signal
    import subprocess
    tmp = tmp_path / "t"
    tmp.mkdir()
    plugin = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, numpy as np\n"
            f"sys.path.insert(0, {str(ROOT / 'denoise_plugins' / 'common')!r})\n"
            "import denoise_client as dc\n"
            "img = np.random.default_rng(0).random((2048, 2048, 3), dtype=np.float32)\n"
            f"dc.run_denoise(img.tobytes(), 2048, 2048, 3, python=sys.executable, pythonpath={str(ROOT)!r},\n"
            "                model='default', tile=128, on_progress=lambda f: print('progress', flush=True))\n")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp)})
    try:
        assert plugin.stdout.readline().strip() == "progress"
        (job_dir,) = tmp.iterdir()
        workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == plugin.pid
                   and b"denoise_core.worker" in _cmdline(p)]
        assert len(workers) == 1
        with _exit_event(workers[0]) as ended:
            os.kill(plugin.pid, signal.SIGKILL)
            plugin.wait()
            assert ended(), "the worker runs on"
        assert not job_dir.exists(), "the job folder was left behind"  # removed before the worker exits
    finally:
        plugin.kill()


@contextlib.contextmanager
def _exit_event(pid: int, timeout: float = 300.0):
    """Yields `ended()`: blocks until process `pid` has ended (a zombie counts), True, or gives up
    after `timeout` (a hung process), False. A pidfd makes it an event, not a polling deadline a
    loaded machine can miss; opened at entry, so the pid cannot be reused meanwhile."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        yield lambda: True
        return
    try:
        yield lambda: bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _cmdline(p: Path) -> bytes:
    try:
        return (p / "cmdline").read_bytes()
    except OSError:
        return b""


def _ppid(p: Path) -> int:
    try:
        return int((p / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_noise_level_reaches_the_model(photo_rgb, tmp_path):
    from denoise_core.inference.api import Denoiser
    from plugin_models import level_model
    model = level_model(tmp_path)
    rng = np.random.default_rng(4)
    img = np.clip(photo_rgb[:64, :96] / 255 + rng.normal(0, 25 / 255, (64, 96, 3)), 0, 1).astype(np.float32)
    out = call(img, model=model, noise_level=2.0)
    want = Denoiser(model).denoise(img, noise_level=2.0)
    assert np.abs(out - want).max() < 1.5 / 255
    assert np.abs(out - call(img, model=model)).mean() > 0.5 / 255  # not the automatic result (that gives 0)
    with pytest.raises(dc.WorkerError, match="seed.*no noise-level input"):
        call(img, model="seed", noise_level=1.0)


@pytest.mark.parametrize("depth", ["U8", "U16", "F16", "F32"])
@pytest.mark.parametrize("linear", [False, True])
def test_native_pixels_crop_mask_and_preview_match_the_krita_conversions(photo_rgb, depth, linear):
    """The worker-side conversions (Krita's native bytes in and out, crop, selection blend, 8-bit
    preview) give exactly what the plugin's own pixels.py gives from the float path."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("kpx", ROOT / "denoise_plugins/krita/denoise_cnn/pixels.py")
    assert spec is not None and spec.loader is not None
    px = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(px)
    rng = np.random.default_rng(3)
    h, w = 40, 56
    f = np.concatenate([photo_rgb[:h, :w] / 255, rng.random((h, w, 1))], axis=2).astype("<f4")
    native = px.from_float(f.tobytes(), "RGBA", depth)
    floats = px.to_float(native, "RGBA", depth)
    transfer = "linear" if linear else "srgb"
    crop = (5, 7, 30, 20)
    mask = bytes(rng.choice([0, 0, 255, 255, 128, 7], size=30 * 20).astype(np.uint8))
    out = dc.run_denoise(floats, w, h, 4, python=sys.executable, pythonpath=str(ROOT), model="seed",
                         transfer=transfer, strength=0.8)
    assert isinstance(out, bytes)
    dn = np.frombuffer(out, "<f4").reshape(h, w, 4)
    x, y, cw, ch = crop
    orig = np.frombuffer(floats, "<f4").reshape(h, w, 4)[y:y + ch, x:x + cw]
    merged = px.apply_mask(np.ascontiguousarray(orig).tobytes(), np.ascontiguousarray(dn[y:y + ch, x:x + cw]).tobytes(),
                           mask, 4)
    res = dc.run_denoise(native, w, h, 4, python=sys.executable, pythonpath=str(ROOT), model="seed", transfer=transfer,
                         strength=0.8, dtype={"U8": "u8", "U16": "u16", "F16": "f16", "F32": "f32"}[depth],
                         swap_rb=depth in ("U8", "U16"), crop=crop, mask=mask, rgba8=True)
    assert isinstance(res, dict)
    assert res["pixels"] == px.from_float(merged, "RGBA", depth)
    assert res["rgba8"] == px.to_rgba8(merged, 4, linear)
    assert res["rgba8_before"] == px.to_rgba8(np.ascontiguousarray(orig).tobytes(), 4, linear)


@pytest.mark.skipif(not hasattr(__import__("socket"), "AF_UNIX"), reason="Unix sockets")
def test_socket_worker_outlives_its_clients_and_ends_with_the_host(tmp_path, monkeypatch):
    """GIMP's plug-ins are one process per run: their worker is a daemon on a Unix socket that the
    next run finds (model still loaded), and that ends when the host program ends."""
    import subprocess
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        img = np.random.default_rng(2).random((24, 32, 3), dtype=np.float32)
        outs, pids = [], []
        for run in range(2):  # two plug-in runs, each with its own client
            dc._WORKERS.clear()
            w = dc.host_worker("gimp", host.pid, sys.executable, str(ROOT))
            outs.append(dc.run_denoise(img.tobytes(), 32, 24, 3, python=sys.executable, model="seed", worker=w))
            pids.append(w.pid)
            assert w.starts == (1 if run == 0 else 0)  # the second run started nothing
            w.close()
        assert outs[0] == outs[1] and pids[0] == pids[1] and Path(f"/proc/{pids[0]}").exists()
        assert w.socket_path is not None
        sock = Path(w.socket_path)
        assert sock.exists() and oct(sock.parent.stat().st_mode & 0o777) == "0o700"
        log = Path(str(sock) + ".log").read_text()
        assert log.count("started") == 1 and log.count("serving a client") == 2, log
        with _exit_event(pids[0]) as ended:
            host.kill()
            host.wait()
            assert ended(), "the worker outlived its host"
        assert not sock.exists()
    finally:
        host.kill()
        dc._WORKERS.clear()


def test_socket_worker_cancel_stops_at_once_and_cleans_up(tmp_path, monkeypatch):
    import subprocess
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        dc._WORKERS.clear()
        w = dc.host_worker("gimp", host.pid, sys.executable, str(ROOT))
        # the default model on about a thousand 64 px tiles, each read with its 98 px of context: a
        # minute of work, so the job is still running when the first progress event cancels it even
        # on a starved CI machine (a job that has already finished leaves the daemon up, as it should;
        # with the seed model it sometimes finished before the client saw its first progress event)
        size = 2048
        img = np.random.default_rng(0).random((size, size, 3), dtype=np.float32)
        seen = []
        with pytest.raises(dc.Cancelled):
            dc.run_denoise(img.tobytes(), size, size, 3, python=sys.executable, model="default", tile=64,
                           worker=w, on_progress=seen.append, is_cancelled=lambda: bool(seen))
        assert seen and seen[0] < 1.0, seen  # cancelled mid-job
        pid = w._ready_pid
        assert pid is not None
        with _exit_event(pid) as ended:
            assert ended(), "the job went on"
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"denoise-workers-{os.getuid()}"]
        # the next run starts another, transparently
        small = img[:16, :16]
        again = dc.run_denoise(small.tobytes(), 16, 16, 3, python=sys.executable, model="seed", worker=w)
        assert len(again) == small.nbytes
        assert w.starts == 2 and w.pid != pid
        w.close()
    finally:
        host.kill()
        dc._WORKERS.clear()
