"""`denoise-plugin install krita` / `uninstall krita`.

Layout (Krita 5):
  RESOURCES/pykrita/denoise_cnn.desktop
  RESOURCES/pykrita/denoise_cnn/            the plugin package (denoise_plugins/krita/denoise_cnn)
  RESOURCES/pykrita/denoise_cnn/denoise_client.py   copy of denoise_plugins/common/denoise_client.py
  RESOURCES/pykrita/denoise_cnn/denoise_protocol.py copy of denoise_plugins/common/denoise_protocol.py
  RESOURCES/pykrita/denoise_cnn/denoise_worker.json  {"python", "pythonpath", "models", "default_model"}
and `[python]` `enable_denoise_cnn=true` in kritarc, without which Krita does not load the plugin.

RESOURCES is `--dest` when given, else Krita's resource folder for this user (default_resources:
`~/.local/share/krita` on Linux, `%APPDATA%\\krita` on Windows, `~/Library/Application
Support/krita` on macOS). kritarc is the user's Krita configuration (default_kritarc:
`~/.config/kritarc`, `%LOCALAPPDATA%\\kritarc`, `~/Library/Preferences/kritarc`), also with
`--dest`: Krita keeps one kritarc per user, and a custom resource folder (Settings › Configure
Krita › General › Resource folder) is itself recorded there. Pass `kritarc=` to
`install`/`uninstall` to edit another one (a portable Krita, a test).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path


from denoise_plugins.common.denoise_protocol import CONFIG_NAME

from .plugin_files import common_files, plugin_source, worker_settings

NAME = "denoise_cnn"
SECTION = "python"

def default_resources() -> Path:
    """Krita's resource folder for this user: `%APPDATA%\\krita` on Windows,
    `~/Library/Application Support/krita` on macOS, `$XDG_DATA_HOME/krita` (default
    `~/.local/share/krita`) elsewhere."""
    home = Path(os.path.expanduser("~"))
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming") / "krita"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "krita"
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "krita"


def default_kritarc() -> Path:
    """Krita's settings file for this user: `%LOCALAPPDATA%\\kritarc` on Windows,
    `~/Library/Preferences/kritarc` on macOS, `$XDG_CONFIG_HOME/kritarc` (default `~/.config/kritarc`)
    elsewhere."""
    home = Path(os.path.expanduser("~"))
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "kritarc"
    if sys.platform == "darwin":
        return home / "Library" / "Preferences" / "kritarc"
    return Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "kritarc"


def pykrita_dir(dest: Path | str | None = None) -> Path:
    return (Path(dest).expanduser() if dest else default_resources()) / "pykrita"


# ----------------------------------------------------------------------------- kritarc
def set_kritarc_flag(kritarc: Path, key: str, value: str | None) -> bool:
    """Set `key=value` in kritarc's [python] section (value None: remove the key), touching no
    other line. Returns True when the file changed."""
    kritarc = Path(kritarc)
    text = kritarc.read_text(encoding="utf-8") if kritarc.exists() else ""
    lines = text.splitlines()
    out: list[str] = []
    in_section = found_section = done = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if in_section and not done and value is not None:
                while out and not out[-1].strip():  # keep the blank line before the next section
                    out.pop()
                out.append(f"{key}={value}")
                out.append("")
                done = True
            in_section = stripped == f"[{SECTION}]"
            found_section = found_section or in_section
            out.append(line)
            continue
        if in_section and "=" in stripped and stripped.split("=", 1)[0].strip() == key:
            if value is not None and not done:
                out.append(f"{key}={value}")
                done = True
            continue  # drop the old line (and duplicates)
        out.append(line)
    if value is not None and not done:
        if in_section:
            while out and not out[-1].strip():
                out.pop()
            out.append(f"{key}={value}")
        else:
            if out and out[-1].strip():
                out.append("")
            out.extend([f"[{SECTION}]", f"{key}={value}"])
    new = "\n".join(out) + ("\n" if out else "")
    if new == text or (not text and not out):
        return False
    kritarc.parent.mkdir(parents=True, exist_ok=True)
    tmp = kritarc.with_name(f".{kritarc.name}.denoise-tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, kritarc)
    return True


def kritarc_flag(kritarc: Path, key: str) -> str | None:
    """The value of `key` in kritarc's [python] section, or None."""
    kritarc = Path(kritarc)
    if not kritarc.exists():
        return None
    in_section = False
    value = None
    for line in kritarc.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            in_section = s == f"[{SECTION}]"
        elif in_section and "=" in s and s.split("=", 1)[0].strip() == key:
            value = s.split("=", 1)[1].strip()
    return value


# ----------------------------------------------------------------------------- install
def _copy_package(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.installing")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", CONFIG_NAME))
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def install(dest: Path | str | None = None, python: str = sys.executable,
            kritarc: Path | str | None = None) -> list[str]:
    """Copy the plugin into RESOURCES/pykrita, record the worker, enable it in kritarc.
    Idempotent: a second run replaces the files and leaves kritarc as it is."""
    settings = worker_settings(python)  # first: a bad --python changes nothing
    src = plugin_source("krita")
    pykrita = pykrita_dir(dest)
    pykrita.mkdir(parents=True, exist_ok=True)
    pkg = pykrita / NAME
    _copy_package(src / NAME, pkg)
    for f in common_files():
        shutil.copyfile(f, pkg / f.name)
    (pkg / CONFIG_NAME).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(src / f"{NAME}.desktop", pykrita / f"{NAME}.desktop")
    rc = Path(kritarc) if kritarc else default_kritarc()
    changed = set_kritarc_flag(rc, f"enable_{NAME}", "true")
    lines = [f"Installed the Krita plugin in {pkg}",
             f"  worker: {settings['python']}" + (f" (PYTHONPATH {settings['pythonpath']})"
                                                  if settings["pythonpath"] else ""),
             f"  models: {', '.join(['default', *[m for m in settings['models'] if m != 'default']])}",
             f"{'Enabled' if changed else 'Already enabled'} in {rc} ([python] enable_{NAME}=true)",
             "Restart Krita (quit it first: Krita rewrites kritarc when it exits), then use "
             "Filter › Enhance › Denoise (CNN)…"]
    return lines


def uninstall(dest: Path | str | None = None, kritarc: Path | str | None = None) -> list[str]:
    """Remove the plugin files and the kritarc line. Idempotent."""
    pykrita = pykrita_dir(dest)
    lines = []
    pkg, desktop = pykrita / NAME, pykrita / f"{NAME}.desktop"
    if pkg.exists():
        shutil.rmtree(pkg)
        lines.append(f"Removed {pkg}")
    if desktop.exists():
        desktop.unlink()
        lines.append(f"Removed {desktop}")
    rc = Path(kritarc) if kritarc else default_kritarc()
    if set_kritarc_flag(rc, f"enable_{NAME}", None):
        lines.append(f"Removed enable_{NAME} from {rc}")
    if not lines:
        lines.append(f"The Krita plugin is not installed in {pykrita}; nothing to do")
    return lines
