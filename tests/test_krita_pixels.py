"""Krita plugin pieces that run without Krita: pixel conversions (numpy and stdlib paths), the
installer's file layout and kritarc editing."""
from __future__ import annotations

import importlib.util
import json
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
PIXELS = REPO / "denoise_plugins/krita/denoise_cnn/pixels.py"


def _load_pixels(numpy_ok: bool):
    spec = importlib.util.spec_from_file_location(f"krita_pixels_{numpy_ok}", PIXELS)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not numpy_ok:
        setattr(mod, "_np", None)  # as in a Krita without numpy
    return mod


@pytest.fixture(params=[True, False], ids=["numpy", "stdlib"])
def px(request):
    return _load_pixels(request.param)


def _f32(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<f4")


def test_u8_bgra_to_rgba_float_and_back(px):
    raw = bytes([10, 20, 30, 255, 0, 128, 255, 7])  # B,G,R,A x2
    f = _f32(px.to_float(raw, "RGBA", "U8"))
    np.testing.assert_allclose(f, np.array([30, 20, 10, 255, 255, 128, 0, 7]) / 255.0, rtol=1e-6)
    assert px.from_float(f.tobytes(), "RGBA", "U8") == raw


def test_u16_bgra_roundtrip_exact(px):
    vals = [0, 1, 32768, 65535, 65534, 12345, 54321, 40000]
    raw = struct.pack("=8H", *vals)
    f = _f32(px.to_float(raw, "RGBA", "U16"))
    np.testing.assert_allclose(f[:4], np.array([32768, 1, 0, 65535]) / 65535.0, rtol=1e-6)
    assert px.from_float(f.tobytes(), "RGBA", "U16") == raw


def test_every_u8_and_u16_value_roundtrips():
    p = _load_pixels(True)
    raw8 = bytes(range(256)) * 4
    assert p.from_float(p.to_float(raw8, "RGBA", "U8"), "RGBA", "U8") == raw8
    raw16 = np.arange(65536, dtype=np.uint16).tobytes()
    assert p.from_float(p.to_float(raw16, "RGBA", "U16"), "RGBA", "U16") == raw16


@pytest.mark.parametrize("depth,code", [("F16", "e"), ("F32", "f")])
def test_float_depths_are_rgba_unchanged(px, depth, code):
    vals = [0.25, 0.5, 0.75, 1.0, 1.5, -0.0, 0.125, 0.5]  # R,G,B,A: no swap, no clipping
    raw = struct.pack(f"=8{code}", *vals)
    f = _f32(px.to_float(raw, "RGBA", depth))
    np.testing.assert_array_equal(f, np.array(vals, np.float32))
    assert px.from_float(f.tobytes(), "RGBA", depth) == raw


def test_integer_output_is_rounded_and_clipped(px):
    f = np.array([-0.2, 0.5, 1.3, 0.999], np.float32)  # R,G,B,A
    assert px.from_float(f.tobytes(), "RGBA", "U8") == bytes([255, 128, 0, 255])


@pytest.mark.parametrize("depth", ["U8", "U16", "F16", "F32"])
def test_graya_two_channels(px, depth):
    size = {"U8": 1, "U16": 2, "F16": 2, "F32": 4}[depth]
    n = 5
    raw = bytes(range(n * 2 * size)) if depth in ("U8", "U16") else \
        struct.pack(f"={2 * n}{'e' if depth == 'F16' else 'f'}", *[i / 16 for i in range(2 * n)])
    f = px.to_float(raw, "GRAYA", depth)
    assert len(f) == n * 2 * 4
    assert px.from_float(f, "GRAYA", depth) == raw
    assert px.bytes_per_pixel("GRAYA", depth) == 2 * size


@pytest.mark.parametrize("model", ["CMYKA", "LABA", "XYZA", "YCbCrA"])
def test_unsupported_colour_models_have_clear_message(px, model):
    with pytest.raises(px.UnsupportedFormat, match="RGB and grayscale"):
        px.to_float(b"\0" * 10, model, "U8")


def test_linear_profiles():
    p = _load_pixels(True)
    assert p.is_linear_profile("sRGB-elle-V2-g10.icc")
    assert p.is_linear_profile("Gray-D50-elle-V2-g10.icc")
    assert p.is_linear_profile("scRGB (linear)")
    assert not p.is_linear_profile("sRGB-elle-V2-srgbtrc.icc")
    assert not p.is_linear_profile("Gray-D50-elle-V2-srgbtrc.icc")
    assert not p.is_linear_profile("")


def test_apply_mask_blends_colour_keeps_alpha(px):
    o = np.array([0.2, 0.2, 0.2, 0.5] * 3, np.float32)
    d = np.array([0.6, 0.6, 0.6, 0.9] * 3, np.float32)
    out = _f32(px.apply_mask(o.tobytes(), d.tobytes(), bytes([0, 255, 51]), 4)).reshape(3, 4)
    np.testing.assert_array_equal(out[0], o[:4])  # unselected: bit-identical original
    np.testing.assert_allclose(out[1], [0.6, 0.6, 0.6, 0.5], rtol=1e-6)
    np.testing.assert_allclose(out[2], [0.28, 0.28, 0.28, 0.5], rtol=1e-5)
    everything = _f32(px.apply_mask(o.tobytes(), d.tobytes(), None, 4)).reshape(3, 4)
    np.testing.assert_allclose(everything[:, :3], 0.6, rtol=1e-6)
    np.testing.assert_array_equal(everything[:, 3], 0.5)


def test_apply_mask_gray_and_size_check(px):
    o = np.array([0.1, 1.0, 0.3, 0.4], np.float32)
    d = np.array([0.9, 0.0, 0.7, 0.0], np.float32)
    out = _f32(px.apply_mask(o.tobytes(), d.tobytes(), None, 2))
    np.testing.assert_allclose(out, [0.9, 1.0, 0.7, 0.4], rtol=1e-6)
    with pytest.raises(ValueError):
        px.apply_mask(o.tobytes(), d.tobytes(), b"\xff", 2)


def test_numpy_and_stdlib_agree():
    rng = np.random.default_rng(0)
    a, b = _load_pixels(True), _load_pixels(False)
    for depth, dt in (("U8", np.uint8), ("U16", np.uint16)):
        raw = rng.integers(0, np.iinfo(dt).max, 64 * 4, dtype=dt).tobytes()
        assert a.to_float(raw, "RGBA", depth) == b.to_float(raw, "RGBA", depth)
        noisy = (rng.random(64 * 4, dtype=np.float32) * 1.2 - 0.1).tobytes()
        assert a.from_float(noisy, "RGBA", depth) == b.from_float(noisy, "RGBA", depth)
    f = rng.random(16 * 4, dtype=np.float32).tobytes()
    assert a.to_rgba8(f, 4, linear=True) == b.to_rgba8(f, 4, linear=True)
    mask = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    g = rng.random(16 * 4, dtype=np.float32).tobytes()
    np.testing.assert_allclose(_f32(a.apply_mask(f, g, mask, 4)), _f32(b.apply_mask(f, g, mask, 4)), rtol=1e-6)


def test_preview_rgba8_and_crop(px):
    gray = np.array([0.0, 1.0, 1.0, 0.5], np.float32)  # G,A x2
    assert px.to_rgba8(gray.tobytes(), 2) == bytes([0, 0, 0, 255, 255, 255, 255, 128])
    lin = np.array([0.214, 0.214, 0.214, 1.0], np.float32)  # linear 0.214 ~ sRGB 0.5
    assert abs(px.to_rgba8(lin.tobytes(), 4, linear=True)[0] - 128) <= 1
    img = bytes(range(4 * 3 * 2))  # 4x3 pixels, 2 bytes a pixel
    assert px.crop(img, 4, 3, 2, 1, 1, 2, 2) == bytes([10, 11, 12, 13, 18, 19, 20, 21])
    with pytest.raises(ValueError):
        px.crop(img, 4, 3, 2, 3, 0, 2, 1)


def stub_krita(monkeypatch) -> list:
    """A stand-in `krita` module (Krita.instance(), Extension) in sys.modules, as Krita provides it
    to plugins; returns the list the extensions registered with it land in."""
    registered: list = []

    class Extension:
        def __init__(self, parent):
            self.parent = parent

    app = types.SimpleNamespace(addExtension=registered.append)
    krita = types.ModuleType("krita")
    krita.Krita = types.SimpleNamespace(instance=lambda: app)  # type: ignore[attr-defined]
    krita.Extension = Extension  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "krita", krita)
    return registered


def test_plugin_package_registers_its_action(monkeypatch):
    """Imported as Krita imports it, the package registers one extension, whose action goes into
    Filter › Enhance and runs the job's interactive entry point."""
    registered = stub_krita(monkeypatch)
    monkeypatch.syspath_prepend(str(REPO / "denoise_plugins/krita"))
    try:
        import denoise_cnn  # noqa: F401
        from denoise_cnn import job

        assert len(registered) == 1
        created, connected = [], []

        class Action:
            def __init__(self):
                self.triggered = types.SimpleNamespace(connect=connected.append)

            def setToolTip(self, text):
                pass

        class Window:
            def createAction(self, *args):
                created.append(args)
                return Action()

        registered[0].createActions(Window())
        assert created == [("denoise_cnn", "Denoise (CNN)…", "filter/enhance_filters")]
        ran = []
        monkeypatch.setattr(job, "run_interactive", lambda: ran.append(True))
        connected[0]()  # the menu entry, clicked
        assert ran == [True]
        assert job.client().CONFIG_NAME == "denoise_worker.json"
    finally:
        for m in [m for m in sys.modules if m == "denoise_cnn" or m.startswith("denoise_cnn.")]:
            del sys.modules[m]


# ----------------------------------------------------------------------------- installer
@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for k in ("XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(k, raising=False)
    return tmp_path


def test_plugin_files_point_at_repo():
    from denoise_cli.plugin_files import common_client, plugin_source
    assert (plugin_source("krita") / "denoise_cnn.desktop").is_file()
    assert common_client().name == "denoise_client.py" and common_client().is_file()


def test_install_layout_kritarc_and_uninstall(home):
    from denoise_cli import install_krita as ik

    rc = home / ".config/kritarc"
    rc.parent.mkdir(parents=True)
    rc.write_text("[General]\nfoo=1\n\n[python]\nenable_other=true\n\n[MainWindow]\nState=abc==\n")
    lines = ik.install(python=sys.executable)
    assert any("Enabled" in ln for ln in lines)
    pyk = home / ".local/share/krita/pykrita"
    desktop = (pyk / "denoise_cnn.desktop").read_text()
    assert "X-KDE-Library=denoise_cnn" in desktop and "ServiceTypes=Krita/PythonPlugin" in desktop
    for f in ("__init__.py", "extension.py", "job.py", "dialog.py", "pixels.py", "denoise_client.py",
              "denoise_protocol.py"):
        assert (pyk / "denoise_cnn" / f).is_file(), f
    assert not (pyk / "denoise_cnn/__pycache__").exists()
    cfg = json.loads((pyk / "denoise_cnn/denoise_worker.json").read_text())
    assert cfg["python"] == str(Path(sys.executable).absolute())
    assert cfg["pythonpath"] == str(REPO)  # this checkout's denoise_core
    assert "seed" in cfg["models"] and cfg["default_model"] == "default"
    text = rc.read_text()
    assert text == ("[General]\nfoo=1\n\n[python]\nenable_other=true\nenable_denoise_cnn=true\n\n"
                    "[MainWindow]\nState=abc==\n")
    assert ik.kritarc_flag(rc, "enable_denoise_cnn") == "true"

    # idempotent: same files, kritarc untouched, stale files replaced
    (pyk / "denoise_cnn/stale.py").write_text("")
    lines = ik.install(python=sys.executable)
    assert any("Already enabled" in ln for ln in lines)
    assert rc.read_text() == text and not (pyk / "denoise_cnn/stale.py").exists()

    lines = ik.uninstall()
    assert not (pyk / "denoise_cnn").exists() and not (pyk / "denoise_cnn.desktop").exists()
    assert rc.read_text() == "[General]\nfoo=1\n\n[python]\nenable_other=true\n\n[MainWindow]\nState=abc==\n"
    assert ik.uninstall() == [f"The Krita plugin is not installed in {pyk}; nothing to do"]


def test_install_with_dest_and_fresh_kritarc(home, tmp_path):
    from denoise_cli import install_krita as ik

    dest = tmp_path / "profile"
    ik.install(dest=dest, python=sys.executable)
    assert (dest / "pykrita/denoise_cnn/denoise_client.py").is_file()
    assert (home / ".config/kritarc").read_text() == "[python]\nenable_denoise_cnn=true\n"
    ik.uninstall(dest=dest)
    assert not (dest / "pykrita/denoise_cnn").exists()


@pytest.mark.parametrize("platform,resources,kritarc", [
    ("win32", "AppData/Roaming/krita", "AppData/Local/kritarc"),
    ("darwin", "Library/Application Support/krita", "Library/Preferences/kritarc"),
    ("linux", ".local/share/krita", ".config/kritarc"),
])
def test_install_finds_krita_folders_on_each_platform(home, monkeypatch, platform, resources, kritarc):
    """Where Krita keeps its resources and kritarc for a user, per platform (Krita's manual), in a
    fake home: Windows from APPDATA / LOCALAPPDATA, macOS under ~/Library."""
    from denoise_cli import install_krita as ik

    monkeypatch.setattr(sys, "platform", platform)
    if platform == "win32":
        monkeypatch.setenv("APPDATA", str(home / "AppData/Roaming"))
        monkeypatch.setenv("LOCALAPPDATA", str(home / "AppData/Local"))
    assert ik.default_resources() == home / resources and ik.default_kritarc() == home / kritarc
    ik.install(python=sys.executable)
    assert (home / resources / "pykrita/denoise_cnn/denoise_client.py").is_file()
    assert (home / resources / "pykrita/denoise_cnn.desktop").is_file()
    assert (home / kritarc).read_text() == "[python]\nenable_denoise_cnn=true\n"
    ik.uninstall()
    assert not (home / resources / "pykrita/denoise_cnn").exists()
    assert "enable_denoise_cnn" not in (home / kritarc).read_text()


def test_kritarc_edits(tmp_path):
    from denoise_cli.install_krita import kritarc_flag, set_kritarc_flag

    rc = tmp_path / "kritarc"
    assert set_kritarc_flag(rc, "enable_x", "true")
    assert set_kritarc_flag(rc, "enable_x", "true") is False
    rc.write_text("[python]\nenable_x=false\nenable_y=true\n")
    assert set_kritarc_flag(rc, "enable_x", "true")
    assert rc.read_text() == "[python]\nenable_x=true\nenable_y=true\n"
    assert kritarc_flag(rc, "enable_y") == "true" and kritarc_flag(rc, "nope") is None
    assert set_kritarc_flag(rc, "enable_x", None)
    assert rc.read_text() == "[python]\nenable_y=true\n"


def test_install_rejects_python_without_core(home):
    import click

    from denoise_cli import install_krita as ik

    with pytest.raises(click.ClickException, match="cannot"):
        ik.install(python="/bin/false")
    assert not (home / ".local/share/krita/pykrita/denoise_cnn").exists()


def test_subsample_takes_every_step_th_pixel(px):
    a = np.arange(7 * 5 * 4, dtype=np.uint8).reshape(7, 5, 4)
    for step in (1, 2, 3, 9):
        data, w, h = px.subsample(a.tobytes(), 5, 7, 4, step)
        want = a[::step, ::step]
        assert (h, w) == want.shape[:2] and data == want.tobytes()
