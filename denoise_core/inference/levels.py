"""The noise-level control: local noise maps, how training gives them, how inference scales them.

A level map holds the local standard deviation of the noise in units of 25/255 (so sigma 25 on
the 0-255 scale reads 1.0), measured as the RMS of a residual over a 9x9 window, averaged over
the colour channels. A model built with `level_input=True` takes it with a second plane that
says whether it is given. In training half the patches get the true map (the residual is noisy
minus target) and half none (blind). At inference the default is blind; a user-set level `s`
runs the net blind once, measures the map of what it removed, and runs it again told `s` times
that map: 1 is about what the blind net does, 0 leaves the image as it is, 2 assumes twice the
noise it found.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LEVEL_UNIT = 25.0 / 255.0
LEVEL_WINDOW = 9
LEVEL_RADIUS = LEVEL_WINDOW // 2  # context a map value reads, in pixels
GIVEN_P = 0.5  # share of training patches that are told their noise level


def level_map(residual: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) noise (or an estimate of it) -> (N, 1, H, W) local RMS in units of 25/255."""
    e = residual.float().pow(2).mean(1, keepdim=True)
    r = LEVEL_RADIUS
    e = F.avg_pool2d(F.pad(e, (r, r, r, r), mode="reflect"), LEVEL_WINDOW, stride=1)
    return e.sqrt() / LEVEL_UNIT


def level_planes(levels: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    """The two input planes: the map (zeros when not given) and the given-flag."""
    n, _, h, w = shape
    if levels is None:
        return torch.zeros(n, 2, h, w)
    return torch.cat([levels, torch.ones_like(levels)], 1)


def training_levels(noisy: torch.Tensor, target: torch.Tensor, gen: torch.Generator,
                    given_p: float = GIVEN_P) -> torch.Tensor:
    """Level planes for a training batch: the true map for a random `given_p` share, blind for the rest."""
    given = (torch.rand(noisy.shape[0], generator=gen) < given_p).float().reshape(-1, 1, 1, 1)
    m = level_map(noisy - target)
    return torch.cat([m * given, given.expand_as(m)], 1)


__all__ = ["GIVEN_P", "LEVEL_RADIUS", "LEVEL_UNIT", "LEVEL_WINDOW", "level_map", "level_planes",
           "training_levels"]
