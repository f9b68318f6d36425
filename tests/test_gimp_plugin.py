"""The GIMP 3 plug-in module without GIMP: imported with stub `gi` modules that record what it asks
of GIMP, so its declared arguments (the PDB signature, the dialog and the saved values all come from
them) and its GIMP-free helpers are checked in any Python. The real GIMP runs it in test_gimp_e2e.py.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SRC = ROOT / "denoise_plugins" / "gimp" / "denoise-cnn" / "denoise-cnn.py"
CLIENT_SRC = ROOT / "denoise_plugins" / "common" / "denoise_client.py"


class Recorder:
    """Any GIMP object: every method call is recorded as (name, args) and returns None."""

    def __init__(self, kind: str = "", *args):
        self.kind, self.args, self.calls = kind, args, []

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, args))


class Choice:
    def __init__(self):
        self.entries: list[tuple] = []

    @classmethod
    def new(cls) -> Choice:
        return cls()

    def add(self, nick, id_, label, help_text):
        self.entries.append((nick, id_, label, help_text))


class Flag(int):
    def __or__(self, other):
        return Flag(int(self) | int(other))


def _namespace(name: str, **attrs) -> types.SimpleNamespace:
    """A stub GI namespace: attributes given here, and flags/enums as named placeholders."""
    class Namespace(types.SimpleNamespace):
        def __getattr__(self, attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return Recorder(f"{name}.{attr}")
    return Namespace(**attrs)


def stub_gi(monkeypatch) -> dict:
    """Stub `gi` and `gi.repository` in sys.modules; returns what the plug-in module asked for."""
    seen: dict = {"versions": {}, "main": []}

    class PlugIn:
        pass

    class ImageProcedure:
        @staticmethod
        def new(plug_in, name, proc_type, run, data):
            proc = Recorder("ImageProcedure", plug_in, name, proc_type, run, data)
            seen.setdefault("procedures", []).append(proc)
            return proc

    gimp = _namespace("Gimp", PlugIn=PlugIn, ImageProcedure=ImageProcedure, Choice=Choice,
                      main=lambda *a: seen["main"].append(a),
                      ProcedureSensitivityMask=types.SimpleNamespace(DRAWABLE=Flag(1), DRAWABLES=Flag(2)),
                      FileChooserAction=types.SimpleNamespace(OPEN="OPEN"))
    gobject = _namespace("GObject", ParamFlags=types.SimpleNamespace(READWRITE="READWRITE"))
    repository = types.ModuleType("gi.repository")
    for name, ns in {"Gimp": gimp, "GObject": gobject, "GimpUi": _namespace("GimpUi"),
                     "Gegl": _namespace("Gegl"), "GLib": _namespace("GLib"), "Gio": _namespace("Gio"),
                     "Gtk": _namespace("Gtk")}.items():
        setattr(repository, name, ns)
    gi = types.ModuleType("gi")
    gi.require_version = lambda name, version: seen["versions"].__setitem__(name, version)  # type: ignore[attr-defined]
    gi.repository = repository  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gi", gi)
    monkeypatch.setitem(sys.modules, "gi.repository", repository)
    return seen


def load_plugin(monkeypatch, path: Path = PLUGIN_SRC, client_dir: Path = CLIENT_SRC.parent):
    """Import the plug-in script at `path` as a module, with stub gi; (module, what it asked for)."""
    seen = stub_gi(monkeypatch)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the module puts its folder on sys.path: undone after
    monkeypatch.syspath_prepend(str(client_dir))  # the installer puts the client and the protocol beside it
    monkeypatch.delitem(sys.modules, "denoise_client", raising=False)
    monkeypatch.delitem(sys.modules, "denoise_protocol", raising=False)
    spec = importlib.util.spec_from_file_location("denoise_cnn_gimp_plugin", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, seen


def declared(proc: Recorder) -> dict:
    """name -> (kind, args after the name) of every add_*_argument call."""
    out = {}
    for method, args in proc.calls:
        if method.startswith("add_") and method.endswith("_argument"):
            assert args[0] not in out, f"{args[0]} declared twice"
            out[args[0]] = (method[len("add_"):-len("_argument")], args[1:])
    return out


ARGUMENTS = {"strength": "double", "model": "choice", "checkpoint": "file", "set-noise-level": "boolean",
             "noise-level": "double", "set-sigma": "boolean", "sigma": "double", "new-layer": "boolean",
             "device": "choice", "tile": "int"}


def test_import_asks_for_gimp_3_and_registers_nothing(monkeypatch):
    mod, seen = load_plugin(monkeypatch)
    assert seen["versions"]["Gimp"] == "3.0" and seen["versions"]["GimpUi"] == "3.0"
    assert seen["main"] == []  # Gimp.main only when GIMP runs the file as a script
    assert mod.PROC_NAME == "plug-in-denoise-cnn"


def test_declared_arguments_from_the_installed_config(monkeypatch, tmp_path):
    """Installed next to a denoise_worker.json, the procedure declares every argument once, and the
    model choice is default, the config's models, then the checkpoint file."""
    (tmp_path / "denoise-cnn.py").write_bytes(PLUGIN_SRC.read_bytes())
    (tmp_path / "denoise_worker.json").write_text(json.dumps(
        {"python": "/x/python", "models": ["fast", "seed", "unet"], "default_model": "default"}))
    mod, seen = load_plugin(monkeypatch, tmp_path / "denoise-cnn.py")
    plugin = mod.DenoiseCNN()
    assert plugin.do_query_procedures() == ["plug-in-denoise-cnn"]
    proc = plugin.do_create_procedure("plug-in-denoise-cnn")
    assert proc.args[1] == "plug-in-denoise-cnn" and proc.args[3] is mod.run
    args = declared(proc)
    assert {k: v[0] for k, v in args.items()} == ARGUMENTS
    # model: (nick, blurb, choice, default, flags)
    _, blurb, choice, default, flags = args["model"][1]
    assert [e[0] for e in choice.entries] == ["default", "fast", "seed", "unet", "checkpoint"]
    assert [e[1] for e in choice.entries] == [0, 1, 2, 3, 4]  # distinct ids
    assert default == "default" and flags == "READWRITE"
    # checkpoint: (nick, blurb, action, none_ok, default_file, flags): optional, opened, no default
    assert args["checkpoint"][1][2:5] == ("OPEN", True, None)
    _, _, dchoice, ddefault, _ = args["device"][1]
    assert [e[0] for e in dchoice.entries] == ["auto", "cpu", "cuda", "mps"] and ddefault == "auto"
    # (nick, blurb, min, max, default, flags)
    assert args["strength"][1][2:5] == (0.0, 1.0, 1.0)
    assert args["noise-level"][1][2:5] == (0.0, 4.0, 1.0)
    assert args["sigma"][1][2:5] == (0.0, 100.0, 6.0)
    assert args["tile"][1][2:5] == (64, 4096, 1024)
    assert ("add_menu_path", ("<Image>/Filters/Enhance",)) in proc.calls
    assert ("set_image_types", ("RGB*, GRAY*",)) in proc.calls
    # the dialog shows every argument, the advanced ones in their fold-out
    assert set(mod.DIALOG) - {"advanced"} | set(mod.ADVANCED) == set(ARGUMENTS)


def test_model_choice_is_the_installed_shipped_models(monkeypatch, tmp_path):
    """Installed by the real `denoise-plugin install gimp`: the model choice lists exactly the
    shipped sRGB models, i.e. the weight files in denoise_core/weights/ other than the raw one."""
    profile = tmp_path / "GIMP" / "3.0"
    code = "import sys; from denoise_cli.plugin import main; sys.argv[0] = 'denoise-plugin'; main()"
    r = subprocess.run([sys.executable, "-c", code, "install", "gimp", "--dest", str(profile),
                        "--python", sys.executable], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    installed = profile / "plug-ins" / "denoise-cnn"
    mod, _ = load_plugin(monkeypatch, installed / "denoise-cnn.py", client_dir=installed)
    proc = mod.DenoiseCNN().do_create_procedure(mod.PROC_NAME)
    choice = declared(proc)["model"][1][2]
    shipped = sorted(p.stem for p in (ROOT / "denoise_core" / "weights").glob("*.safetensors") if p.stem != "raw")
    assert shipped and [e[0] for e in choice.entries] == ["default", *shipped, "checkpoint"]


def test_missing_or_broken_config_still_registers(monkeypatch, tmp_path):
    """GIMP must still be able to register the procedure (the run reports the problem)."""
    mod, _ = load_plugin(monkeypatch)
    assert mod.read_settings(str(tmp_path)) == {"models": [], "default_model": "default"}
    (tmp_path / "denoise_worker.json").write_text("{not json")
    assert mod.read_settings(str(tmp_path)) == {"models": [], "default_model": "default"}
    assert [e[0] for e in mod.model_entries([], "default")] == ["default", "checkpoint"]
    entries = mod.model_entries(["seed", "unet"], "unet")
    assert entries[0][:2] == ("default", "default (unet)") and [e[0] for e in entries][1:] == ["seed", "unet",
                                                                                                "checkpoint"]


def test_helpers(monkeypatch):
    m, _ = load_plugin(monkeypatch)
    assert m.pixel_format(False, True) == ("R'G'B'A float", 4)
    assert m.pixel_format(False, False) == ("R'G'B' float", 3)
    assert m.pixel_format(True, True) == ("Y'A float", 2)
    assert m.pixel_format(True, False) == ("Y' float", 1)
    assert m.noise_levels(False, 2.5, False, 6) == (None, None)
    assert m.noise_levels(True, 2.5, False, 6) == (2.5, None) and m.noise_levels(True, 0, False, 6) == (0.0, None)
    assert m.noise_levels(True, 2.5, True, 6) == (None, 6.0)  # an absolute sigma takes the level's place
    assert m.model_name("seed", "/ignored.safetensors") == "seed"
    assert m.model_name("checkpoint", "/w/mine.safetensors") == "/w/mine.safetensors"
    with pytest.raises(m.denoise_client.WorkerError, match="choose the checkpoint file"):
        m.model_name("checkpoint", None)


class Config:
    """A procedure config: get_property by name."""

    def __init__(self, **props):
        self.props = props

    def get_property(self, name):
        return self.props[name]


def test_job_settings_from_the_config(monkeypatch):
    m, _ = load_plugin(monkeypatch)
    base = {"model": "seed", "checkpoint": None, "strength": 0.5, "set-noise-level": True, "noise-level": 2.0,
            "set-sigma": False, "sigma": 6.0, "device": "cpu", "tile": 256}
    assert m.job_settings(Config(**base)) == {"model": "seed", "strength": 0.5, "noise_level": 2.0, "sigma": None,
                                              "device": "cpu", "tile": 256, "precision": "auto"}
    ckpt = types.SimpleNamespace(get_path=lambda: "/w/mine.safetensors")  # a Gio.File
    s = m.job_settings(Config(**dict(base, model="checkpoint", checkpoint=ckpt, **{"set-sigma": True})))
    assert s["model"] == "/w/mine.safetensors" and s["sigma"] == 6.0 and s["noise_level"] is None
