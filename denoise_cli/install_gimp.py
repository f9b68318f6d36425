"""`denoise-plugin install gimp`: the GIMP 3 plug-in for this user, wired to this Python.

GIMP 3 loads `<profile>/plug-ins/NAME/NAME.py` (folder and script names must match, run bit set).
We install `denoise-cnn/denoise-cnn.py`, the shared stdlib worker client and the protocol's constants
(`denoise_client.py`, `denoise_protocol.py`) beside it, and
`denoise_worker.json`, which records the interpreter the plug-in starts the denoiser with (GIMP's
own Python has no torch), the PYTHONPATH it needs (a source checkout) and the shipped models.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from denoise_plugins.common.denoise_protocol import CONFIG_NAME

from .plugin_files import common_files, plugin_source, worker_settings

PLUGIN_NAME = "denoise-cnn"


def default_profile() -> Path:
    """GIMP 3's user folder (what GIMP itself uses; GIMP3_DIRECTORY overrides it as in GIMP)."""
    if os.environ.get("GIMP3_DIRECTORY"):
        return Path(os.environ["GIMP3_DIRECTORY"]).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming") / "GIMP" / "3.0"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "GIMP" / "3.0"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "GIMP" / "3.0"


def plugin_dir(dest: Path | str | None = None) -> Path:
    return (Path(dest).expanduser() if dest else default_profile()) / "plug-ins" / PLUGIN_NAME


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install(dest: Path | str | None = None, python: str = sys.executable) -> list[str]:
    """Install (or refresh: idempotent) the plug-in; returns lines to show the user."""
    settings = worker_settings(python)
    target = plugin_dir(dest)
    target.mkdir(parents=True, exist_ok=True)
    src = plugin_source("gimp") / PLUGIN_NAME
    script = f"{PLUGIN_NAME}.py"
    _write(target / script, (src / script).read_bytes(), 0o755)
    for f in common_files():
        _write(target / f.name, f.read_bytes(), 0o644)
    _write(target / CONFIG_NAME, (json.dumps(settings, indent=2) + "\n").encode(), 0o644)
    shutil.rmtree(target / "__pycache__", ignore_errors=True)  # stale bytecode of an older client
    pythonpath = f" (PYTHONPATH {settings['pythonpath']})" if settings["pythonpath"] else ""
    models = ", ".join(["default", *settings["models"]])
    return [f"Installed the GIMP plug-in in {target}",
            f"  worker: {settings['python']}{pythonpath}",
            f"  models: {models}",
            "Restart GIMP, then use Filters > Enhance > Denoise (CNN)..."]


def uninstall(dest: Path | str | None = None) -> list[str]:
    target = plugin_dir(dest)
    if not target.exists():
        return [f"The GIMP plug-in is not installed in {target}"]
    shutil.rmtree(target)
    return [f"Removed {target}"]
