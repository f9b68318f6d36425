"""The worker protocol's constants have one definition (denoise_plugins/common/denoise_protocol.py):
the core, the worker, the client and both plug-ins read that module, and the installed plug-ins find
it in the host's folder with nothing but the standard library."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import denoise_protocol  # as the hosts import it (denoise_plugins/common is on the tests' path)

from denoise_plugins.common import denoise_protocol as protocol

REPO = Path(__file__).resolve().parent.parent
PROTOCOL_FILE = REPO / "denoise_plugins" / "common" / "denoise_protocol.py"
NAMES = ("PROTOCOL_VERSION", "CONFIG_NAME", "JOB_DIR_PREFIX", "MAX_REQUEST_BYTES", "IDLE_S", "MAX_NOISE_LEVEL",
         "MAX_SIGMA", "DEFAULT_TILE", "DEVICES", "SAMPLE_BYTES")


def _values(module) -> dict:
    return {n: getattr(module, n) for n in NAMES}


def test_protocol_module_is_standard_library_only():
    tree = ast.parse(PROTOCOL_FILE.read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    assert protocol.__file__ == denoise_protocol.__file__ == str(PROTOCOL_FILE)


def test_values_the_core_uses_are_the_protocol_module():
    """One definition: the core's limits are the protocol module's objects, not copies."""
    import denoise_client
    from denoise_core import worker
    from denoise_core.inference import api, device

    for name, mod in (("MAX_NOISE_LEVEL", api), ("MAX_SIGMA", api), ("DEFAULT_TILE", api), ("DEVICES", device),
                      ("PROTOCOL_VERSION", worker), ("IDLE_S", worker), ("MAX_REQUEST_BYTES", worker)):
        assert getattr(mod, name) is getattr(protocol, name), (mod.__name__, name)
    for name in ("CONFIG_NAME", "PROTOCOL_VERSION", "MAX_NOISE_LEVEL", "MAX_SIGMA", "DEFAULT_TILE", "SAMPLE_BYTES"):
        assert getattr(denoise_client, name) == getattr(protocol, name), name
    # the limits as numbers the worker's own documentation gives (an oracle apart from the module)
    assert (protocol.MAX_NOISE_LEVEL, protocol.MAX_SIGMA, protocol.DEFAULT_TILE) == (4.0, 100.0, 1024)


def test_worker_sample_types_match_the_protocol():
    import numpy as np
    from denoise_core.worker import SAMPLE_TYPES

    assert set(SAMPLE_TYPES) == set(protocol.SAMPLE_BYTES)
    for name, (dtype, _scale) in SAMPLE_TYPES.items():
        assert np.dtype(dtype).itemsize == protocol.SAMPLE_BYTES[name], name


def test_core_refuses_what_the_protocol_refuses():
    """The client and the Denoiser draw the noise-level and sigma limits at the same place."""
    import denoise_client
    import pytest
    from denoise_core import Denoiser

    dn = Denoiser("default", device="cpu")  # a model with a noise-level input
    for key, top in (("noise_level", protocol.MAX_NOISE_LEVEL), ("sigma", protocol.MAX_SIGMA)):
        dn.check_noise_level(**{"noise_level": None, key: top})
        with pytest.raises(ValueError, match="within"):
            dn.check_noise_level(**{"noise_level": None, key: top * 1.01})
        with pytest.raises(denoise_client.WorkerError, match="within"):
            denoise_client.job_settings({key: top * 1.01})
        assert denoise_client.job_settings({key: top})[key] == top


def _host_python(code: str, path: Path) -> dict:
    """Run CODE as a host program's Python would: isolated (-I: no PYTHONPATH, no user site) and
    without site-packages (-S: no torch, no denoise_core), with only `path` added."""
    probe = f"import sys, json; sys.path.insert(0, {str(path)!r})\n{code}"
    r = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=120,
                       cwd=path)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_installed_plugins_import_the_protocol_without_the_core(tmp_path, monkeypatch):
    from denoise_cli import install_gimp, install_krita

    expected = json.loads(json.dumps(_values(protocol)))
    gimp = install_gimp.plugin_dir(tmp_path / "gimp")
    install_gimp.install(dest=tmp_path / "gimp", python=sys.executable)
    # the plug-in script itself needs GIMP's gi (tests/test_gimp_plugin.py loads the installed one
    # with stub gi modules); here, what it imports from its folder
    got = _host_python(
        "try:\n    import denoise_core\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('core importable')\n"
        "import denoise_client, denoise_protocol\n"
        "assert denoise_client.MAX_SIGMA is denoise_protocol.MAX_SIGMA\n"
        f"print(json.dumps({{n: getattr(denoise_protocol, n) for n in {NAMES!r}}}))", gimp)
    assert "from denoise_protocol import" in (gimp / "denoise-cnn.py").read_text(encoding="utf-8")
    assert got == expected

    monkeypatch.setenv("HOME", str(tmp_path))
    pykrita = tmp_path / "krita" / "pykrita"
    install_krita.install(dest=tmp_path / "krita", python=sys.executable, kritarc=tmp_path / "kritarc")
    got = _host_python(  # the package registers its extension with Krita: a stand-in `krita` module
        "import types\nkrita = types.ModuleType('krita')\n"
        "krita.Extension = type('Extension', (), {'__init__': lambda self, parent: None})\n"
        "krita.Krita = types.SimpleNamespace(instance=lambda: types.SimpleNamespace(addExtension=lambda e: None))\n"
        "sys.modules['krita'] = krita\n"
        "from denoise_cnn import denoise_client, denoise_protocol\n"
        "assert denoise_client.MAX_NOISE_LEVEL is denoise_protocol.MAX_NOISE_LEVEL\n"
        f"print(json.dumps({{n: getattr(denoise_protocol, n) for n in {NAMES!r}}}))", pykrita)
    assert got == expected
