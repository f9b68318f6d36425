"""Krita plugin "Denoise (CNN)": Filter › Enhance › Denoise (CNN)…

Installed by `denoise-plugin install krita`. Importable without Krita (for tests of pixels.py).
"""
try:
    from krita import Krita
except ImportError:  # not inside Krita
    Krita = None

if Krita is not None:
    from .extension import DenoiseExtension

    Krita.instance().addExtension(DenoiseExtension(Krita.instance()))
