"""Where the host plugins' source files are, installed (package `denoise_plugins`) or in the repo.

Installed from a wheel, `plugins/` ships as the package `denoise_plugins`; in a source checkout
(`python -m cli.plugin`, or an editable install) the files are the repo's `plugins/` folder.
"""
from __future__ import annotations

from pathlib import Path

_REPO_PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


def plugins_root() -> Path:
    """The folder that holds `common/`, `krita/`, `gimp/`."""
    try:
        from importlib.resources import files

        root = Path(str(files("denoise_plugins")))
        if (root / "common" / "denoise_client.py").is_file():
            return root
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    if (_REPO_PLUGINS / "common" / "denoise_client.py").is_file():
        return _REPO_PLUGINS
    raise FileNotFoundError("plugin files not found: neither package denoise_plugins nor "
                            f"{_REPO_PLUGINS} holds common/denoise_client.py")


def plugin_source(host: str) -> Path:
    """The folder with HOST's plugin files (`krita` or `gimp`)."""
    path = plugins_root() / host
    if not path.is_dir():
        raise FileNotFoundError(f"no plugin files for {host!r} at {path}")
    return path


def common_client() -> Path:
    """The stdlib-only worker client shared by the plugins."""
    return plugins_root() / "common" / "denoise_client.py"
