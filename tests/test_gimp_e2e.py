"""The GIMP 3 plug-in, end to end in real GIMP 3 (gimp-console-3.0 in the Debian trixie chroot of
.ci/setup_gimp.sh), plus the installer (the module's GIMP-free logic and its declared arguments are
tested with stub `gi` modules in test_gimp_plugin.py).

The e2e fixture installs the plug-in with the real `denoise-plugin install gimp` command into a
fresh GIMP profile inside the chroot, recording this test's own interpreter as the worker. GIMP runs
in a private mount namespace in which the host paths that interpreter needs (this checkout, its
venv, its base Python) are bind-mounted at the same paths inside the chroot, so the recorded paths
are valid there and nothing stays mounted afterwards. One GIMP start runs every case through the
PDB (non-interactive) and reports back in JSON; the tests then check the exported files. The
dialog runs in GUI GIMP under Xvfb, driven by a test-only plug-in (tests/host_plugins/).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from denoise_core.imaging.imageio import Photo, read_image, write_image
from denoise_core.inference.api import RAW_ARCHS, Denoiser
from denoise_core.noise.synth import apply_noise
from denoise_core.training.metrics import psnr

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SRC = ROOT / "denoise_plugins" / "gimp" / "denoise-cnn" / "denoise-cnn.py"
# the test-only plug-in that drives the real dialog (installed beside the real one, never for users)
DRIVER_SRC = ROOT / "tests" / "host_plugins" / "gimp_preview_driver.py"
DRIVER = "denoise-cnn-preview-test"
DRIVER_PROC = "test-denoise-cnn-preview"
CHROOT = Path(os.environ.get("GIMP_CHROOT", "/work/gimp-chroot"))
GIMP = "/usr/bin/gimp-console-3.0"
GIMP_GUI = "/usr/bin/gimp-3.0"
PROC = "plug-in-denoise-cnn"
MODEL = "seed"
SIGMA = 25  # gaussian noise, 0-255 scale
MIN_GAIN_DB = 3.0
LEVEL = 2.0  # the noise level the level case sets
ABS_SIGMA = 9.0  # the absolute noise sigma (0-255) the sigma case sets


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`denoise-plugin ARGS`: the real click command, from this checkout."""
    code = "import sys; from denoise_cli.plugin import main; sys.argv[0] = 'denoise-plugin'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


# ------------------------------------------------------------------ the installer, no GIMP needed
def test_install_and_uninstall_layout(tmp_path):
    profile = tmp_path / "GIMP" / "3.0"
    for _ in range(2):  # idempotent
        r = run_cli("install", "gimp", "--dest", str(profile), "--python", sys.executable)
        assert r.returncode == 0, r.stderr
    d = profile / "plug-ins" / "denoise-cnn"
    assert sorted(p.name for p in d.iterdir()) == ["denoise-cnn.py", "denoise_client.py", "denoise_protocol.py",
                                                    "denoise_worker.json"]
    script = d / "denoise-cnn.py"
    assert script.stat().st_mode & stat.S_IXUSR
    assert script.read_bytes() == PLUGIN_SRC.read_bytes()
    common = ROOT / "denoise_plugins" / "common"
    for name in ("denoise_client.py", "denoise_protocol.py"):
        assert (d / name).read_bytes() == (common / name).read_bytes(), name
    cfg = json.loads((d / "denoise_worker.json").read_text())
    assert cfg["python"] == sys.executable and MODEL in cfg["models"] and cfg["default_model"]
    assert "pythonpath" in cfg
    r = run_cli("uninstall", "gimp", "--dest", str(profile))
    assert r.returncode == 0 and not d.exists()
    assert run_cli("uninstall", "gimp", "--dest", str(profile)).returncode == 0
    bad = run_cli("install", "gimp", "--dest", str(profile), "--python", str(tmp_path / "nopython"))
    assert bad.returncode != 0 and "nopython" in bad.stderr and not d.exists()


# ------------------------------------------------------------------ end to end in GIMP 3
BATCH = r'''
import json, traceback
import gi
gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gimp, Gio, Gegl

P = json.load(open(__JOB__))
out = {"cases": {}}
pdb = Gimp.get_pdb()
proc = pdb.lookup_procedure(P["proc"])
out["found"] = proc is not None
if proc is not None:
    out["menu_label"] = proc.get_menu_label()
    out["menu_paths"] = list(proc.get_menu_paths())
    out["image_types"] = proc.get_image_types()
    out["arguments"] = [a.get_name() for a in proc.get_arguments()]
    cfg = proc.create_config()
    out["defaults"] = {k: cfg.get_property(k) for k in ("strength", "model", "set-noise-level", "noise-level",
                                                        "set-sigma", "sigma", "new-layer", "device", "tile")}
    ckpt = cfg.get_property("checkpoint")
    out["defaults"]["checkpoint"] = ckpt.get_path() if ckpt is not None else None
    out["choices"] = {k: list(Gimp.param_spec_choice_get_choice(proc.find_argument(k)).list_nicks())
                      for k in ("model", "device")}

def dump(drawable, fmt, path):
    buf = drawable.get_buffer()
    rect = Gegl.Rectangle.new(0, 0, drawable.get_width(), drawable.get_height())
    with open(path, "wb") as f:
        f.write(bytes(buf.get(rect, 1.0, fmt, Gegl.AbyssPolicy.CLAMP)))

for case in P["cases"] if proc is not None else []:
    r = out["cases"][case["name"]] = {}
    try:
        if case.get("last_values"):  # what GIMP stores after an interactive run, in its own format
            d = Gio.File.new_for_path(Gimp.directory()).get_child("plug-in-settings")
            d.make_directory_with_parents(None) if not d.query_exists(None) else None
            # GIMP 3.0.4 names the file after the run config's type, GimpProcedureConfigRun-PROC
            for name in ("GimpProcedureConfigRun-" + P["proc"], proc.create_config().__gtype__.name):
                with open(d.get_child(name + ".last").get_path(), "w") as f:
                    f.write(case["last_values"])
        image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(case["input"]))
        layer = image.get_layers()[0]
        if case.get("precision"):
            image.convert_precision(getattr(Gimp.Precision, case["precision"]))
        if case.get("group"):  # run on a layer group holding a copy of the layer
            group = Gimp.GroupLayer.new(image, "group")
            image.insert_layer(group, None, 0)
            image.insert_layer(layer.copy(), group, 0)
            layer = group
        if case.get("select"):
            image.select_rectangle(Gimp.ChannelOps.REPLACE, *case["select"])
        r["precision"] = image.get_precision().value_nick
        r["base_type"] = image.get_base_type().value_nick
        if case.get("raw"):
            dump(layer, case["raw_format"], case["raw"] + ".before")
        config = proc.create_config()
        config.set_property("run-mode", getattr(Gimp.RunMode, case.get("run_mode", "NONINTERACTIVE")))
        config.set_property("image", image)
        config.set_core_object_array("drawables", [layer])
        config.set_property("strength", case["strength"])
        config.set_property("model", case["model"])
        if case.get("checkpoint"):
            config.set_property("checkpoint", Gio.File.new_for_path(case["checkpoint"]))
        if case.get("device"):
            config.set_property("device", case["device"])
        if case.get("new_layer"):
            config.set_property("new-layer", True)
        if "noise_level" in case:
            config.set_property("set-noise-level", True)
            config.set_property("noise-level", case["noise_level"])
        if "sigma" in case:
            config.set_property("set-sigma", True)
            config.set_property("sigma", case["sigma"])
        result = proc.run(config)
        status = result.index(0)
        r["status"] = status.value_nick
        r["message"] = result.index(1) if status != Gimp.PDBStatusType.SUCCESS and result.length() > 1 else None
        if case.get("raw"):
            dump(layer, case["raw_format"], case["raw"] + ".after")
        r["layers"] = [l.get_name() for l in image.get_layers()]
        if case.get("raw_top"):
            dump(image.get_layers()[0], case["raw_format"], case["raw_top"])
        if case.get("output"):
            Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, image, Gio.File.new_for_path(case["output"]), None)
        image.delete()
    except Exception:
        r["exception"] = traceback.format_exc()

with open(P["results"], "w") as f:
    json.dump(out, f, indent=1)
'''


def _worker_binds(tmp: Path) -> list[tuple[str, str]]:
    """(host path, path in the chroot) to bind so that sys.executable runs inside the chroot with
    the same paths: this checkout, the venv, and the interpreter the venv is made from."""
    binds = [(str(ROOT), str(ROOT))]
    prefix, base = Path(sys.prefix), Path(sys.base_prefix)
    if prefix != base and not prefix.resolve().is_relative_to(ROOT.resolve()):
        binds.append((str(prefix), str(prefix)))
    if not base.resolve().is_relative_to("/usr"):  # pyenv, /opt/python, ...: own tree
        binds.append((str(base), str(base)))
        return binds
    # Debian's /usr/bin/python3.X: the chroot's /usr is trixie's (another Python), so bring in just
    # this version's interpreter and stdlib, which trixie does not have, ...
    exe = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    stdlib = sysconfig.get_paths()["stdlib"]
    for p in (exe, stdlib, f"/usr/local/lib/python{sys.version_info[0]}.{sys.version_info[1]}"):
        if os.path.exists(p) and not os.path.lexists(CHROOT / p.lstrip("/")):
            binds.append((p, p))
    if prefix != base:
        # ... and point the venv's python links (-> /usr/bin/python3, which is trixie's there) at it
        vbin = tmp / "venv-bin"
        vbin.mkdir()
        for entry in (prefix / "bin").iterdir():
            if entry.name.startswith("python"):
                (vbin / entry.name).symlink_to(exe)
            elif not entry.is_symlink():
                (vbin / entry.name).symlink_to(entry)
        binds.append((str(vbin), str(prefix / "bin")))
    return binds


def _inner(p: Path) -> str:
    """The path GIMP sees (inside the chroot) for a path under it."""
    return "/" + str(p.relative_to(CHROOT))


def _run_gimp(work: Path, home: Path, batch: Path, display: str | None = None, env: dict | None = None,
              timeout: int = 900) -> subprocess.CompletedProcess:
    """GIMP in the chroot, running `batch` (python-fu) then quitting: gimp-console, or with
    `display` the GUI GIMP on that X display (its socket bound into the chroot)."""
    binds = _worker_binds(work)
    if display:
        binds.append(("/tmp/.X11-unix", "/tmp/.X11-unix"))
    # Mount points go into the shared chroot and are removed after the run. Removing one that a
    # concurrent run (another checkout's tests) has mounted on would unmount it there, so runs
    # on the same chroot take turns.
    lock = open(CHROOT / "tmp" / ".denoise-gimp-test.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    created: list[Path] = []
    for _src, dst in binds:  # mount points, removed again below
        target = CHROOT / dst.lstrip("/")
        missing = []
        p = target
        while not os.path.lexists(p):
            missing.append(p)
            p = p.parent
        created.extend(reversed(missing))
    script = ['set -e', 'C="$1"; shift']
    for src, dst in binds:
        t = f'"$C"{dst}'
        make = f'mkdir -p "$(dirname {t})"; [ -e {t} ] || touch {t}' if os.path.isfile(src) else f"mkdir -p {t}"
        script.append(f'{make}; mount --bind "{src}" {t}')
    # /proc and /sys as on any system: torch reads the CPU's features there (without them its
    # fp32 pixel shuffle fails with "Your CPU does not support FBGEMM")
    script.append('mount -t proc proc "$C/proc"; mount --rbind /sys "$C/sys"')
    extra = " ".join(f"{k}={v}" for k, v in (env or {}).items())
    program = f"{GIMP} -i" if not display else f"DISPLAY={display} {GIMP_GUI} --no-splash"
    script.append(f'exec chroot "$C" /usr/bin/env -i PATH=/usr/bin:/bin HOME={_inner(home)} LANG=C.UTF-8 '
                  f'TMPDIR={_inner(work / "tmp")} {extra} '
                  f'{program} --batch-interpreter=python-fu-eval -b - --quit < "{batch}"')
    try:
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", "\n".join(script),
                               "sh", str(CHROOT)], capture_output=True, text=True, timeout=timeout)
    finally:
        for p in reversed(created):  # deepest first; only our own, now empty, mount points
            try:
                p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
            except OSError:
                pass
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _gimp_skip_reason() -> str | None:
    if not (CHROOT / GIMP.lstrip("/")).exists():
        return f"no GIMP 3 chroot at {CHROOT} (set GIMP_CHROOT, or build it with `bash .ci/setup_gimp.sh`)"
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("chroot"):
        return "running GIMP in its chroot needs root with unshare and chroot"
    return None


def _make_inputs(work: Path, clean: np.ndarray) -> dict:
    gen = torch.Generator().manual_seed(6)
    x = torch.from_numpy(clean.astype(np.float32) / 255).permute(2, 0, 1)[None]
    noisy = apply_noise(x, f"gaussian:{SIGMA}", gen)[0].permute(1, 2, 0).numpy()
    n8 = np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8)
    n16 = np.clip(np.rint(noisy * 65535), 0, 65535).astype(np.uint16)
    write_image(work / "noisy8.png", Photo(n8))
    write_image(work / "noisy16.png", Photo(n16))
    gray = clean.astype(np.float32).mean(axis=2, keepdims=True) / 255
    gnoisy = apply_noise(torch.from_numpy(gray).permute(2, 0, 1)[None], f"gaussian:{SIGMA}", gen)[0]
    g8 = np.clip(np.rint(gnoisy.permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8)
    h, w = g8.shape[:2]
    alpha = np.clip(np.add.outer(np.arange(h), np.arange(w)) * 255 // (h + w - 2) + 1, 1, 255).astype(np.uint8)
    write_image(work / "noisy-graya.png", Photo(g8, alpha=alpha))
    return {"clean": clean, "n8": n8, "n16": n16, "gray_clean": gray[..., 0], "g8": g8[..., 0], "alpha": alpha}


@pytest.fixture(scope="module")
def gimp(photo_rgb):
    reason = _gimp_skip_reason()
    if reason:
        pytest.skip(reason)
    (CHROOT / "tmp").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="denoise-gimp-test-", dir=CHROOT / "tmp"))
    os.chmod(work, 0o755)

    def inner(p: Path) -> str:  # the path GIMP sees
        return "/" + str(p.relative_to(CHROOT))

    try:
        data = _make_inputs(work, photo_rgb)
        home = work / "home"
        profile = home / ".config" / "GIMP" / "3.0"
        r = run_cli("install", "gimp", "--dest", str(profile), "--python", sys.executable)
        assert r.returncode == 0, f"denoise-plugin install gimp failed:\n{r.stdout}\n{r.stderr}"
        h, w = data["n8"].shape[:2]
        # not on the model's 8 px grid; the default's 178 px of context reach the layer's top-left
        # corner (the off-grid context arithmetic has its own tests in test_worker.py)
        sel = [150, 140, 64, 72]
        from plugin_models import level_model
        levels = level_model(work)
        broken = work / "broken.safetensors"
        broken.write_text("not a checkpoint")
        mine = work / "mine.safetensors"  # a checkpoint of the user's own: here the shipped seed weights
        shutil.copyfile(ROOT / "denoise_core" / "weights" / f"{MODEL}.safetensors", mine)
        # the model arguments for it: a shipped model by name, or a checkpoint file
        level_args = ({"model": "default"} if levels == "default"
                      else {"model": "checkpoint", "checkpoint": inner(Path(levels))})
        cases = [
            {"name": "u8", "input": "noisy8.png", "output": "out-u8.png", "strength": 1.0, "model": "default"},
            {"name": "u16", "input": "noisy16.png", "output": "out-u16.png", "strength": 1.0, "model": MODEL},
            {"name": "selection", "input": "noisy8.png", "output": "out-sel.png", "strength": 1.0,
             "model": "default", "select": sel},
            {"name": "gray-alpha", "input": "noisy-graya.png", "output": "out-graya.png", "strength": 1.0,
             "model": MODEL},
            {"name": "float-linear", "input": "noisy16.png", "precision": "FLOAT_LINEAR", "raw": "fl.raw",
             "raw_format": "R'G'B' float", "strength": 1.0, "model": MODEL},
            {"name": "half", "input": "noisy16.png", "precision": "HALF_NON_LINEAR", "raw": "half.raw",
             "raw_format": "R'G'B' float", "strength": 1.0, "model": MODEL},
            # last values (saved by GIMP after an interactive run) are what WITH_LAST_VALS uses,
            # whatever the call passes: the same declared arguments, stored and restored by GIMP
            {"name": "last-values", "input": "noisy8.png", "output": "out-last.png", "strength": 0.0,
             "model": "checkpoint", "run_mode": "WITH_LAST_VALS",
             "last_values": '(strength 0.5)\n(model "default")\n'},
            {"name": "group", "input": "noisy8.png", "group": True, "strength": 1.0, "model": MODEL},
            {"name": "new-layer", "input": "noisy8.png", "strength": 1.0, "model": MODEL, "new_layer": True,
             "raw": "nl.raw", "raw_top": "nl.raw.top", "raw_format": "R'G'B' u8"},
            {"name": "level", "input": "noisy8.png", "output": "out-level.png", "strength": 1.0,
             **level_args, "noise_level": LEVEL},
            {"name": "sigma", "input": "noisy8.png", "output": "out-sigma.png", "strength": 1.0,
             **level_args, "sigma": ABS_SIGMA},
            {"name": "level-blind-model", "input": "noisy8.png", "output": "out-level-blind.png",
             "strength": 1.0, "model": MODEL, "noise_level": 1.0},
            {"name": "checkpoint", "input": "noisy8.png", "output": "out-ckpt.png", "strength": 1.0,
             "model": "checkpoint", "checkpoint": inner(mine)},
            # a checkpoint file GIMP accepts (it exists) that the worker refuses
            {"name": "broken-checkpoint", "input": "noisy8.png", "output": "out-err.png", "strength": 1.0,
             "model": "checkpoint", "checkpoint": inner(broken)},
            # GIMP itself refuses a file argument of an "open" kind that names no file
            {"name": "missing-checkpoint", "input": "noisy8.png", "output": "out-missing.png", "strength": 1.0,
             "model": "checkpoint", "checkpoint": "/nonexistent/missing.safetensors"},
            {"name": "no-checkpoint", "input": "noisy8.png", "output": "out-nockpt.png", "strength": 1.0,
             "model": "checkpoint"},
            {"name": "device", "input": "noisy8.png", "output": "out-device.png", "strength": 1.0,
             "model": MODEL, "device": "cpu" if torch.cuda.is_available() else "cuda"},
        ]
        for c in cases:
            for k in ("input", "output", "raw", "raw_top"):
                if k in c:
                    c[k] = inner(work / c[k])
        (work / "job.json").write_text(json.dumps({"proc": PROC, "cases": cases,
                                                   "results": inner(work / "results.json")}))
        (work / "batch.py").write_text(BATCH.replace("__JOB__", repr(inner(work / "job.json"))))

        (work / "tmp").mkdir()
        proc = _run_gimp(work, home, work / "batch.py")
        log = f"gimp exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        # the worker of this GIMP: its log (one line per start, per plug-in run served, and its end)
        worker_logs = sorted((work / "tmp").glob("denoise-workers-*/gimp-*.sock.log"))
        deadline = time.time() + 15
        while worker_logs and "host ended" not in worker_logs[0].read_text() and time.time() < deadline:
            time.sleep(0.2)
        worker_log = "\n".join(p.read_text() for p in worker_logs)
        results_path = work / "results.json"
        assert proc.returncode == 0 and results_path.exists(), log
        results = json.loads(results_path.read_text())
        yield {"results": results, "work": work, "data": data, "sel": sel, "log": log, "level_model": levels,
               "worker_log": worker_log,
               "config": json.loads((profile / "plug-ins" / "denoise-cnn" / "denoise_worker.json").read_text())}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _case(gimp, name: str) -> dict:
    r = gimp["results"]["cases"].get(name)
    assert r is not None, gimp["log"]
    assert "exception" not in r, r["exception"]
    return r


def _ok(gimp, name: str) -> dict:
    r = _case(gimp, name)
    assert r["status"] == "success", f"{name}: {r}\n{gimp['log']}"
    return r


def test_registered_in_filters_enhance(gimp):
    res = gimp["results"]
    assert res["found"], gimp["log"]
    assert res["menu_label"] == "Denoise (CNN)…"
    assert "<Image>/Filters/Enhance" in res["menu_paths"]
    assert res["image_types"] == "RGB*, GRAY*"
    assert {"strength", "model", "checkpoint", "set-noise-level", "noise-level", "set-sigma", "sigma",
            "new-layer", "device", "tile"} <= set(res["arguments"])
    assert res["defaults"] == {"strength": 1.0, "model": "default", "checkpoint": None, "set-noise-level": False,
                               "noise-level": 1.0, "set-sigma": False, "sigma": 6.0, "new-layer": False,
                               "device": "auto", "tile": 1024}
    cfg = gimp["config"]
    assert cfg["python"] == sys.executable and MODEL in cfg["models"]
    # the model choice: default, every shipped sRGB model (the weights files), then a checkpoint file
    weights = ROOT / "denoise_core" / "weights"
    shipped = sorted(p.stem for p in weights.glob("*.safetensors") if p.stem not in RAW_ARCHS)
    assert res["choices"]["model"] == ["default", *shipped, "checkpoint"], res["choices"]
    assert res["choices"]["device"] == ["auto", "cpu", "cuda", "mps"], res["choices"]


def test_u8_psnr_rises(gimp):
    r = _ok(gimp, "u8")
    assert r["precision"] == "u8-non-linear"
    d = gimp["data"]
    out = read_image(gimp["work"] / "out-u8.png").pixels
    assert out.dtype == np.uint8 and out.shape == d["clean"].shape
    before, after = psnr(d["n8"] / 255, d["clean"] / 255), psnr(out / 255, d["clean"] / 255)
    print(f"u8: PSNR {before:.2f} -> {after:.2f} dB")
    assert after > before + MIN_GAIN_DB
    # exactly the core's result with the default model: channel order and transfer are right
    want = Denoiser("default").denoise(d["n8"]).astype(int)
    assert np.abs(out.astype(int) - want).max() <= 1


def test_u16_psnr_rises(gimp):
    r = _ok(gimp, "u16")
    assert r["precision"] == "u16-non-linear"
    d = gimp["data"]
    out = read_image(gimp["work"] / "out-u16.png").pixels
    assert out.dtype == np.uint16
    clean = d["clean"] / 255
    before, after = psnr(d["n16"] / 65535, clean), psnr(out / 65535, clean)
    print(f"u16: PSNR {before:.2f} -> {after:.2f} dB")
    assert after > before + MIN_GAIN_DB
    # really 16-bit: the result is not stuck on the 8-bit grid
    assert np.mean(out % 257 != 0) > 0.5


def test_only_the_selection_changes(gimp):
    _ok(gimp, "selection")
    d = gimp["data"]
    out = read_image(gimp["work"] / "out-sel.png").pixels.astype(np.float64)
    x, y, w, h = gimp["sel"]
    inside = np.zeros(out.shape[:2], bool)
    inside[y:y + h, x:x + w] = True
    assert np.array_equal(out[~inside], d["n8"][~inside])
    clean, noisy = d["clean"] / 255, d["n8"] / 255
    before, after = psnr(noisy[inside], clean[inside]), psnr(out[inside] / 255, clean[inside])
    print(f"selection: PSNR inside {before:.2f} -> {after:.2f} dB")
    assert after > before + MIN_GAIN_DB
    # the model's full context around the selection, on its grid: exactly the whole layer's pixels
    full = read_image(gimp["work"] / "out-u8.png").pixels.astype(np.float64)
    np.testing.assert_array_equal(out[inside], full[inside])


def test_gray_alpha_untouched_alpha(gimp):
    r = _ok(gimp, "gray-alpha")
    assert r["base_type"] == "gray"
    d = gimp["data"]
    photo = read_image(gimp["work"] / "out-graya.png")
    assert photo.alpha is not None and np.array_equal(photo.alpha, d["alpha"])
    out = photo.pixels[..., 0] / 255
    before, after = psnr(d["g8"] / 255, d["gray_clean"]), psnr(out, d["gray_clean"])
    print(f"gray+alpha: PSNR {before:.2f} -> {after:.2f} dB")
    assert after > before + MIN_GAIN_DB


@pytest.mark.parametrize("name,precision", [("float-linear", "float-linear"), ("half", "half-non-linear")])
def test_float_precisions(gimp, name, precision):
    r = _ok(gimp, name)
    assert r["precision"] == precision
    d = gimp["data"]
    h, w = d["clean"].shape[:2]
    base = gimp["work"] / ("fl.raw" if name == "float-linear" else "half.raw")
    before = np.fromfile(str(base) + ".before", "<f4").reshape(h, w, 3)
    after = np.fromfile(str(base) + ".after", "<f4").reshape(h, w, 3)
    assert np.abs(before - d["n16"] / 65535).max() < 2e-3  # read back as sRGB-encoded values
    clean = d["clean"] / 255
    p0, p1 = psnr(before, clean), psnr(after, clean)
    print(f"{name}: PSNR {p0:.2f} -> {p1:.2f} dB")
    assert p1 > p0 + MIN_GAIN_DB


def test_with_last_values(gimp):
    _ok(gimp, "last-values")
    d = gimp["data"]
    out = read_image(gimp["work"] / "out-last.png").pixels.astype(np.float64)
    full = read_image(gimp["work"] / "out-u8.png").pixels.astype(np.float64)
    half = (d["n8"] + full) / 2  # strength 0.5 of the same model
    assert np.abs(out - half).mean() < 1.0, np.abs(out - half).mean()
    assert np.abs(out - full).mean() > 5 and np.abs(out - d["n8"]).mean() > 5


def test_checkpoint_file_is_the_model(gimp):
    """Model "checkpoint" runs the file given as `checkpoint`: the core's result with that file."""
    _ok(gimp, "checkpoint")
    n8 = gimp["data"]["n8"]
    got = read_image(gimp["work"] / "out-ckpt.png").pixels.astype(int)
    want = Denoiser(gimp["work"] / "mine.safetensors").denoise(n8).astype(int)
    assert np.abs(got - want).max() <= 1, np.abs(got - want).max()
    # not the default model's result: the file, not the choice's default, was used
    assert np.abs(got - read_image(gimp["work"] / "out-u8.png").pixels.astype(int)).mean() > 0.5


def test_broken_checkpoint_is_an_error_and_changes_nothing(gimp):
    r = _case(gimp, "broken-checkpoint")
    assert r["status"] == "execution-error", r
    assert "broken.safetensors" in (r["message"] or "") and "not a safetensors checkpoint" in r["message"], r
    out = read_image(gimp["work"] / "out-err.png").pixels
    assert np.array_equal(out, gimp["data"]["n8"])


def test_missing_checkpoint_file_is_refused_by_gimp(gimp):
    r = _case(gimp, "missing-checkpoint")
    assert r["status"] == "calling-error" and "checkpoint" in (r["message"] or ""), r
    assert np.array_equal(read_image(gimp["work"] / "out-missing.png").pixels, gimp["data"]["n8"])


def test_checkpoint_choice_without_a_file_is_an_error(gimp):
    r = _case(gimp, "no-checkpoint")
    assert r["status"] == "execution-error" and "choose the checkpoint file" in (r["message"] or ""), r
    assert np.array_equal(read_image(gimp["work"] / "out-nockpt.png").pixels, gimp["data"]["n8"])


def test_device_reaches_the_worker(gimp):
    """`device` is the worker's device: CUDA where there is none is the worker's own refusal."""
    r = _case(gimp, "device")
    if torch.cuda.is_available():  # asked for the CPU: the core's CPU result
        assert r["status"] == "success", r
        want = Denoiser(MODEL, device="cpu").denoise(gimp["data"]["n8"]).astype(int)
        assert np.abs(read_image(gimp["work"] / "out-device.png").pixels.astype(int) - want).max() <= 1
    else:
        assert r["status"] == "execution-error" and "CUDA is not available" in (r["message"] or ""), r
        assert np.array_equal(read_image(gimp["work"] / "out-device.png").pixels, gimp["data"]["n8"])


def test_layer_group_is_refused_with_a_message(gimp):
    r = _case(gimp, "group")
    assert r["status"] == "execution-error" and "layer groups" in (r["message"] or ""), r


def test_noise_level_gives_the_cores_result(gimp):
    """`set-noise-level` + `noise-level` reach the model: GIMP's result is the core's own
    `Denoiser.denoise(same pixels, noise_level=LEVEL)` (to 1 level at 8 bit), not the automatic one."""
    _ok(gimp, "level")
    n8 = gimp["data"]["n8"]
    got = read_image(gimp["work"] / "out-level.png").pixels.astype(int)
    dn = Denoiser(gimp["level_model"])
    want = dn.denoise(n8, noise_level=LEVEL).astype(int)
    auto = dn.denoise(n8).astype(int)
    assert np.abs(got - want).max() <= 1, np.abs(got - want).max()
    assert np.abs(got - auto).mean() > 0.5, np.abs(got - auto).mean()  # an ignored level gives 0


def test_absolute_sigma_gives_the_cores_result(gimp):
    """`set-sigma` + `sigma` reach the model: GIMP's result is the core's
    `Denoiser.denoise(same pixels, sigma=ABS_SIGMA)` (to 1 level at 8 bit), not the automatic one."""
    _ok(gimp, "sigma")
    n8 = gimp["data"]["n8"]
    got = read_image(gimp["work"] / "out-sigma.png").pixels.astype(int)
    dn = Denoiser(gimp["level_model"])
    want = dn.denoise(n8, sigma=ABS_SIGMA).astype(int)
    assert np.abs(got - want).max() <= 1, np.abs(got - want).max()
    assert np.abs(got - dn.denoise(n8).astype(int)).mean() > 0.5  # an ignored sigma gives 0


def test_noise_level_with_a_blind_model_is_an_error(gimp):
    r = _case(gimp, "level-blind-model")
    assert r["status"] == "execution-error", r
    assert MODEL in (r["message"] or "") and "no noise-level input" in r["message"], r
    assert np.array_equal(read_image(gimp["work"] / "out-level-blind.png").pixels, gimp["data"]["n8"])


def test_new_layer_keeps_the_original(gimp):
    """`new-layer`: the result goes on a copy above the layer; the original stays as it was."""
    r = _ok(gimp, "new-layer")
    assert len(r["layers"]) == 2 and r["layers"][0] == r["layers"][1] + " (denoised)", r
    n8 = gimp["data"]["n8"]
    h, w = n8.shape[:2]
    base = gimp["work"] / "nl.raw"
    orig = np.fromfile(str(base) + ".after", np.uint8).reshape(h, w, 3)
    top = np.fromfile(str(base) + ".top", np.uint8).reshape(h, w, 3)
    assert np.array_equal(np.fromfile(str(base) + ".before", np.uint8).reshape(h, w, 3), n8)
    assert np.array_equal(orig, n8)
    want = Denoiser(MODEL).denoise(n8).astype(int)
    assert np.abs(top.astype(int) - want).max() <= 1


def test_one_worker_serves_every_run_and_ends_with_gimp(gimp):
    """Each procedure run is a new plug-in process; one worker (model loaded once) served them all,
    and it ended when GIMP quit."""
    log = gimp["worker_log"]
    refused_first = ("group", "no-checkpoint", "missing-checkpoint")  # refused before the worker is asked
    runs = sum(1 for name, r in gimp["results"]["cases"].items()
               if r.get("status") in ("success", "execution-error") and name not in refused_first)
    assert log.count("started") == 1, log
    assert log.count("serving a client") >= runs >= 8, (runs, log)
    assert "host ended" in log, log


# ------------------------------------------------------------------ the dialog's live preview
GUI_BATCH = r'''
import json
import gi
gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, Gio
P = json.load(open(__JOB__))
image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(P["input"]))
proc = Gimp.get_pdb().lookup_procedure(P["proc"])
config = proc.create_config()
config.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
config.set_property("image", image)
config.set_core_object_array("drawables", image.get_layers())
config.set_property("record-to", P["record"])
result = proc.run(config)
Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, image, Gio.File.new_for_path(P["output"]), None)
with open(P["results"], "w") as f:
    json.dump({"status": result.index(0).value_nick}, f)
'''


@pytest.fixture(scope="module")
def gimp_gui(photo_rgb):
    """The real dialog in GUI GIMP under Xvfb, through the test-only plug-in
    tests/host_plugins/gimp_preview_driver.py installed beside the real one: the real procedure's
    dialog, preview and run, whose preview records each picture, sets the strength to 0.7 after
    the first, and presses OK after the second."""
    reason = _gimp_skip_reason() or (None if shutil.which("Xvfb") else "Xvfb not installed (.ci/setup_krita.sh)")
    if reason:
        pytest.skip(reason)
    work = Path(tempfile.mkdtemp(prefix="denoise-gimp-gui-", dir=CHROOT / "tmp"))
    os.chmod(work, 0o755)
    xvfb = None
    try:
        data = _make_inputs(work, photo_rgb)
        home = work / "home"
        profile = home / ".config" / "GIMP" / "3.0"
        r = run_cli("install", "gimp", "--dest", str(profile), "--python", sys.executable)
        assert r.returncode == 0, r.stderr
        driver = profile / "plug-ins" / DRIVER / f"{DRIVER}.py"
        driver.parent.mkdir()
        shutil.copyfile(DRIVER_SRC, driver)
        driver.chmod(0o755)
        (work / "tmp").mkdir()
        (work / "job.json").write_text(json.dumps({"input": _inner(work / "noisy8.png"),
                                                   "output": _inner(work / "out.png"),
                                                   "results": _inner(work / "results.json"),
                                                   "proc": DRIVER_PROC, "record": _inner(work / "preview.log")}))
        (work / "batch.py").write_text(GUI_BATCH.replace("__JOB__", repr(_inner(work / "job.json"))))
        rfd, wfd = os.pipe()
        xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(wfd), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                                pass_fds=(wfd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(wfd)
        with os.fdopen(rfd) as f:
            display = ":" + f.readline().strip()
        proc = _run_gimp(work, home, work / "batch.py", display=display, timeout=600)
        log = f"gimp exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"
        assert proc.returncode == 0 and (work / "results.json").exists(), log
        previews = [json.loads(line) for line in (work / "preview.log").read_text().splitlines()]
        shots = os.environ.get("DENOISE_GIMP_SHOTS")  # DIR: keep the dialog's picture as DIR/gimp-dialog.png
        if shots and (work / "preview.log.dialog.png").exists():
            from PIL import Image
            im = Image.open(work / "preview.log.dialog.png").convert("RGB")
            im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
                Path(shots, "gimp-dialog.png"), optimize=True)
        pictures = [(work / f"preview.log.{i + 1}.rgba8").read_bytes() for i in range(len(previews))]
        yield {"work": work, "data": data, "log": log, "previews": previews, "pictures": pictures,
               "results": json.loads((work / "results.json").read_text())}
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait()
        shutil.rmtree(work, ignore_errors=True)


def test_dialog_preview_is_the_result_on_one_worker(gimp_gui):
    """The dialog's preview shows at 1:1 what the run gives in the part in view, updates by itself
    when a setting changes, and the previews and the run share one worker."""
    assert gimp_gui["results"]["status"] == "success", gimp_gui["log"]
    previews = gimp_gui["previews"]
    assert len(previews) == 2 and [p["strength"] for p in previews] == [1.0, 0.7], previews
    assert previews[0]["pid"] == previews[1]["pid"] and previews[0]["view"] == previews[1]["view"]
    # the switched-off values and the checkpoint file are greyed out until their switch or choice
    assert previews[0]["sensitive"] == {"checkpoint": False, "noise-level": False, "sigma": False}, previews
    assert previews[0]["checkpoint_chosen_sensitive"] is True, previews
    x, y, w, h = previews[1]["view"]
    assert w >= 64 and h >= 64, previews
    n8 = gimp_gui["data"]["n8"]
    out = read_image(gimp_gui["work"] / "out.png").pixels.astype(int)
    dn = Denoiser("default")
    assert np.abs(out - dn.denoise(n8, strength=0.7).astype(int)).max() <= 1  # OK ran with the new strength
    for _p, pic, strength in zip(previews, gimp_gui["pictures"], (1.0, 0.7)):
        shown = np.frombuffer(pic, np.uint8).reshape(h, w, 4)[..., :3].astype(int)
        want = dn.denoise(n8, strength=strength)[y:y + h, x:x + w].astype(int)
        assert np.abs(shown - want).max() <= 1, strength
    print(f"\nGIMP preview {w}x{h}: first {previews[0]['seconds']:.2f} s, "
          f"after a change {previews[1]['seconds']:.2f} s")
