"""A model with a noise-level input for the plugin tests (imported by the host end-to-end tests).

`level_model(dir)` is "default" once the shipped default has the input. Until then it writes a
checkpoint grown from the shipped `unet` (denoise_core.models.unet.UNet.grow_from) whose level
weights are made non-zero: grown weights start at zero, which would make every level give the
automatic result and the tests unable to tell a level was used. Never committed: built at test time.
"""
from __future__ import annotations

from typing import Any
from pathlib import Path

import torch

from denoise_core.inference.api import Denoiser, resolve_model
from denoise_core.inference.checkpoint import load_checkpoint, save_checkpoint
from denoise_core.models import create_model


def level_model(directory: Path) -> str:
    if Denoiser("default", device="cpu").has_levels:
        return "default"
    path = Path(directory) / "unet-levels.safetensors"
    if not path.exists():
        ck = load_checkpoint(resolve_model("unet"))
        net: Any = create_model("unet", **ck.arch_args, level_input=True)
        state = net.grow_from(ck.state_dict)
        w = state["intro.weight"]
        colour = w.shape[1] - net.level_channels * 4  # level planes, 4 channels each after unshuffle
        gen = torch.Generator().manual_seed(0)
        w[:, colour:] = torch.randn(w[:, colour:].shape, generator=gen) * 0.3 * w[:, :colour].std()
        net.load_state_dict(state)
        save_checkpoint(path, net, {})
    return str(path)
