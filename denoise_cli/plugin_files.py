"""What both plugin installers share: where the plugins' source files are (the package
`denoise_plugins`, installed or in a source checkout), and the worker settings (`denoise_worker.json`).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from importlib import util as importlib_util
from pathlib import Path

import click

CLIENT_NAME = "denoise_client.py"
PROTOCOL_NAME = "denoise_protocol.py"

# asks the worker interpreter what it can run; prints one JSON line
_PROBE = ("import json; from denoise_core.inference.api import shipped_models; "
          "print(json.dumps({'models': sorted(shipped_models())}))")


def plugins_root() -> Path:
    """The folder that holds `common/`, `krita/`, `gimp/`: the package `denoise_plugins`."""
    import denoise_plugins

    root = Path(denoise_plugins.__file__).resolve().parent
    if not (root / "common" / CLIENT_NAME).is_file():
        raise FileNotFoundError(f"plugin files not found: {root} holds no common/{CLIENT_NAME}")
    return root

def plugin_source(host: str) -> Path:
    """The folder with HOST's plugin files (`krita` or `gimp`)."""
    path = plugins_root() / host
    if not path.is_dir():
        raise FileNotFoundError(f"no plugin files for {host!r} at {path}")
    return path


def common_client() -> Path:
    """The stdlib-only worker client shared by the plugins."""
    return plugins_root() / "common" / CLIENT_NAME


def common_files() -> list[Path]:
    """What every plug-in gets beside it: the worker client and the protocol constants it imports."""
    return [plugins_root() / "common" / name for name in (CLIENT_NAME, PROTOCOL_NAME)]


def _checkout_root() -> Path | None:
    """The source checkout this installer's denoise_core comes from, if it is not site-installed."""
    spec = importlib_util.find_spec("denoise_core")
    if spec is None or not spec.origin:
        return None
    root = Path(spec.origin).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "denoise_core").is_dir() else None


def worker_settings(python: str) -> dict:
    """denoise_worker.json for `python`, checked by running it, not guessed.

    When this installer runs from a source checkout, the worker gets that checkout on its
    PYTHONPATH, so the plugin and the core it talks to are the same code.
    """
    python = os.path.abspath(os.path.expanduser(str(python)))  # abspath, not resolve: venv symlinks
    root = _checkout_root()
    pythonpath = str(root) if root is not None else None
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    hint = ("Pass --python with the interpreter of the environment where the denoiser is installed "
            "(one that can `import denoise_core`, torch included).")
    try:
        # a neutral cwd, so the current directory cannot make the import succeed by accident
        r = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, env=env,
                           cwd=tempfile.gettempdir(), timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise click.ClickException(f"cannot run {python}: {e}.\n{hint}") from None
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise click.ClickException(f"{python} cannot import the denoiser ({tail}).\n{hint}")
    try:
        found = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise click.ClickException(f"{python} gave an unreadable answer: {r.stdout[-200:]!r}") from None
    return {"python": python, "pythonpath": pythonpath, "models": found["models"], "default_model": "default"}
