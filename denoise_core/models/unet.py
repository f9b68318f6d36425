"""Reduced-resolution residual U-Net: the default (`unet`) and preview (`fast`) architectures.

The image is pixel-unshuffled 2x on entry, so every convolution runs at a quarter of the pixels
or fewer; three scales of plain conv-ReLU residual blocks (the fastest block on a CPU), pixel-shuffle
upsampling, and a global residual so the net predicts the noise and a clean input passes through.

With `level_input=True` the net also takes a noise-level map (FFDNet/CBDNet-style conditioning):
two extra input planes, the local noise standard deviation in units of 25/255
(`denoise_core.inference.levels`) and a flag that says whether that level is given (1) or left to the net
(0, blind: the map is ignored and the net estimates the noise itself, as without the input).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model

LEVEL_CHANNELS = 2  # noise-level map, and whether it is given


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x), inplace=True)).add_(x)  # in place: one tensor fewer per block


class Down(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x), inplace=True)


class Up(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout * 4, 1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def _stage(channels: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])


class UNet(nn.Module):
    """Blind denoiser; input and output are sRGB-encoded images in [0, 1], NCHW."""

    def __init__(
        self,
        *,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (32, 64, 128),
        enc_blocks: Sequence[int] = (1, 2),  # two stages (a list when read from JSON metadata)
        mid_blocks: int = 2,
        dec_blocks: Sequence[int] = (2, 1),
        level_input: bool = False,
    ) -> None:
        super().__init__()
        w1, w2, w3 = widths
        enc_blocks, dec_blocks = tuple(enc_blocks), tuple(dec_blocks)  # JSON metadata gives lists
        self.level_channels = LEVEL_CHANNELS if level_input else 0
        self.unshuffle = nn.PixelUnshuffle(2)
        self.intro = nn.Conv2d((in_channels + self.level_channels) * 4, w1, 3, padding=1)
        self.enc1 = _stage(w1, enc_blocks[0])
        self.down1 = Down(w1, w2)
        self.enc2 = _stage(w2, enc_blocks[1])
        self.down2 = Down(w2, w3)
        self.mid = _stage(w3, mid_blocks)
        self.up2 = Up(w3, w2)
        self.dec2 = _stage(w2, dec_blocks[0])
        self.up1 = Up(w2, w1)
        self.dec1 = _stage(w1, dec_blocks[1])
        self.outro = nn.Conv2d(w1, in_channels * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        nn.init.zeros_(self.outro.weight)
        if self.outro.bias is not None:
            nn.init.zeros_(self.outro.bias)
        # context each output pixel depends on, in full-resolution pixels: 3x3 convs at 1/2, 1/4
        # and 1/8 scale add 2, 4 and 8 px each, the two 2x2 downsamplers 2 and 4, plus 8 px of
        # pixel-shuffle alignment slack (measured: 78 px for `unet`, 91 for the shipped two-block
        # `unet`, which states 98, and 46 for `fast`)
        self.receptive_radius = (2 * (2 + 2 * enc_blocks[0] + 2 * dec_blocks[1])
                                 + 4 * 2 * (enc_blocks[1] + dec_blocks[0]) + 8 * 2 * mid_blocks + 6 + 8)

    size_multiple = 8

    def grow_from(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A full state dict for this net from one of a same-width `UNet` with fewer blocks per stage,
        or without the noise-level input.

        Stages keep their trained blocks in order; each added block gets a zeroed second conv, so it
        starts as the identity; an added level input gets zero weights in the first conv. So the
        grown net computes exactly what the smaller one did (blind, or whatever level it is given)."""
        out = dict(self.state_dict())
        stage_names = ("enc1", "enc2", "mid", "dec2", "dec1")
        for key, value in state.items():
            if key not in out:
                raise ValueError(f"cannot grow from these weights: this net has no {key}")
            if key == "intro.weight" and value.shape[1] < out[key].shape[1] and value.shape[0] == out[key].shape[0]:
                grown = torch.zeros_like(out[key])
                grown[:, :value.shape[1]] = value  # pixel-unshuffle keeps each input plane's 4 channels together
                out[key] = grown
                continue
            if out[key].shape != value.shape:
                raise ValueError(f"cannot grow from these weights: {key} {tuple(value.shape)} "
                                 f"does not fit this net {tuple(out[key].shape)}")
            out[key] = value
        for name in stage_names:
            stage: nn.Sequential = getattr(self, name)
            for i in range(len(stage)):
                if f"{name}.{i}.conv1.weight" not in state:
                    out[f"{name}.{i}.conv2.weight"] = torch.zeros_like(out[f"{name}.{i}.conv2.weight"])
                    out[f"{name}.{i}.conv2.bias"] = torch.zeros_like(out[f"{name}.{i}.conv2.bias"])
        return out

    def forward(self, x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        """`level`: (N, 2, H, W) map and given-flag planes (see the module docstring); None is blind."""
        inp = x
        if self.level_channels:
            if level is None:
                level = x.new_zeros(x.shape[0], self.level_channels, *x.shape[2:])
            inp = torch.cat([x, level.to(x)], 1)
        elif level is not None:
            raise ValueError("this model has no noise-level input")
        s1 = self.enc1(F.relu(self.intro(self.unshuffle(inp)), inplace=True))
        s2 = self.enc2(self.down1(s1))
        y = self.mid(self.down2(s2))
        y = self.dec2(self.up2(y) + s2)
        y = self.dec1(self.up1(y) + s1)
        return x - self.shuffle(self.outro(y))


_FAST = {"widths": (16, 32, 64), "enc_blocks": (1, 1), "mid_blocks": 1, "dec_blocks": (1, 1)}


@register_model
def unet(**kwargs) -> UNet:
    """Widths 32/64/128, about 1.0 M parameters. These defaults stay fixed: checkpoints record only
    the arguments they were built with. The shipped weights are deeper (`enc_blocks=(2, 3)`,
    `mid_blocks=6`, `dec_blocks=(3, 2)`, recorded in their metadata)."""
    return UNet(**kwargs)


@register_model
def fast(**kwargs) -> UNet:
    """Preview model: a quarter of the channels, one block per stage, about 0.14 M parameters."""
    return UNet(**{**_FAST, **kwargs})
