"""Krita plugin "Denoise (CNN)": Krita imports this package at start, and it registers the extension
that adds Filter › Enhance › Denoise (CNN)… (extension.py; the work is in job.py and dialog.py).

Installed by `denoise-plugin install krita`.
"""
from krita import Krita

from .extension import DenoiseExtension

Krita.instance().addExtension(DenoiseExtension(Krita.instance()))
