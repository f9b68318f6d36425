"""Near-name suggestions for the commands' model arguments (`--model defualt`: did you mean 'default'?)."""
from __future__ import annotations

import difflib
import os

from denoise_core.inference.api import shipped_models


def did_you_mean(model: str | os.PathLike) -> str:
    """'; did you mean 'default'?' when `model` is a name (not a path) close to a shipped model's, else ''."""
    name = str(model)
    if os.sep in name or "/" in name or os.path.splitext(name)[1]:
        return ""
    names = ["default", *shipped_models(include_raw=True)]
    close = difflib.get_close_matches(name.lower(), names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
