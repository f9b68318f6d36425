"""The original experiment's network, kept as the `seed` architecture.

conv3x3 3->32, ReLU, conv3x3 32->32, ReLU, conv3x3 32->3, same padding: 11,011 parameters.
It maps the noisy image straight to the clean one (no residual connection), as it was trained.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_model


class SeedNet(nn.Module):
    size_multiple = 1
    receptive_radius = 3

    def __init__(self, *, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, in_channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_model
def seed(*, in_channels: int = 3, width: int = 32) -> SeedNet:
    return SeedNet(in_channels=in_channels, width=width)
