"""The version is written in one place (denoise_core.__version__), and the changelog's newest
release is that version."""
import re
from pathlib import Path

import denoise_core

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_written_once_and_is_the_newest_release():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert not re.search(r"^version\s*=\s*\"", pyproject, re.MULTILINE)  # no literal version
    assert re.search(r"^dynamic = \[\"version\"\]", pyproject, re.MULTILINE)
    assert 'version = {attr = "denoise_core.__version__"}' in pyproject
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## (\d+\.\d+\.\d+) — \d{4}-\d{2}-\d{2}$", changelog, re.MULTILINE)
    assert releases and releases[0] == denoise_core.__version__, releases
