"""`denoise-plugin install gimp`: the GIMP 3 plug-in for this user, wired to this Python.

GIMP 3 loads `<profile>/plug-ins/NAME/NAME.py` (folder and script names must match, run bit set).
We install `denoise-cnn/denoise-cnn.py`, the shared stdlib worker client beside it, and
`denoise_worker.json`, which records the interpreter the plug-in starts the denoiser with (GIMP's
own Python has no torch), the PYTHONPATH it needs (a source checkout) and the shipped models.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import util as importlib_util
from pathlib import Path

import click

from .plugin_files import common_client, plugin_source

PLUGIN_NAME = "denoise-cnn"
CONFIG_NAME = "denoise_worker.json"
CLIENT_NAME = "denoise_client.py"

# asks the worker interpreter what it can run; prints one JSON line
_PROBE = ("import json, sys; from denoise_core.api import DEFAULT_MODEL, shipped_models; "
          "print(json.dumps({'models': sorted(shipped_models()), 'default_model': DEFAULT_MODEL, "
          "'version': list(sys.version_info[:2])}))")


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


def _checkout_root() -> Path | None:
    """The source checkout this installer's denoise_core comes from, if it is not site-installed."""
    spec = importlib_util.find_spec("denoise_core")
    if spec is None or not spec.origin:
        return None
    root = Path(spec.origin).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "denoise_core").is_dir() else None


def _probe(python: str, pythonpath: str | None) -> dict | str:
    """What the worker interpreter reports (dict), or why it cannot run the denoiser (str)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    try:
        # a neutral cwd, so the current directory cannot make the import succeed by accident
        r = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, env=env,
                           cwd=tempfile.gettempdir(), timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run {python}: {e}"
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["no message"])[-1]
        return f"{python} cannot import the denoiser ({tail})"
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"{python} gave an unreadable answer: {r.stdout[-200:]!r}"


def worker_settings(python: str) -> dict:
    """The denoise_worker.json content for `python`: checked by running it, not guessed.

    When this installer runs from a source checkout, the worker gets that checkout on its
    PYTHONPATH, so the plug-in and the core it talks to are the same code.
    """
    python = str(python)
    root = _checkout_root()
    pythonpath = str(root) if root is not None else None
    found = _probe(python, pythonpath)
    if isinstance(found, str):
        raise click.ClickException(
            f"{found}.\nPass --python with the interpreter of the environment where the denoiser "
            f"is installed (one that can `import denoise_core`, torch included).")
    return {"python": python, "pythonpath": pythonpath, "models": found["models"],
            "default_model": found["default_model"]}


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
    _write(target / CLIENT_NAME, Path(common_client()).read_bytes(), 0o644)
    _write(target / CONFIG_NAME, (json.dumps(settings, indent=2) + "\n").encode(), 0o644)
    shutil.rmtree(target / "__pycache__", ignore_errors=True)  # stale bytecode of an older client
    pythonpath = f" (PYTHONPATH {settings['pythonpath']})" if settings["pythonpath"] else ""
    models = ", ".join(["default", *settings["models"]])
    return [f"Installed the GIMP plug-in in {target}",
            f"  worker: {settings['python']}{pythonpath}",
            f"  models: {models} (default: {settings['default_model']})",
            "Restart GIMP, then use Filters > Enhance > Denoise (CNN)..."]


def uninstall(dest: Path | str | None = None) -> list[str]:
    target = plugin_dir(dest)
    if not target.exists():
        return [f"The GIMP plug-in is not installed in {target}"]
    shutil.rmtree(target)
    return [f"Removed {target}"]
