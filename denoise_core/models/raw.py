"""Raw-domain denoiser (`raw`): a Bayer mosaic packed into R, G1, G2, B planes, plus the noise
standard deviation of every photosite (four more planes), in; the denoised planes out.

The packed planes are at half the mosaic's resolution, so the net's first stage already runs at a
quarter of the photosites. Two more scales of plain conv-ReLU residual blocks (the blocks of
`unet.py`), pixel-shuffle upsampling, skip connections, and a global residual: the net predicts
the noise, and its zero-initialised head makes an untrained net pass the mosaic through.

Values are linear sensor data, black 0 and white 1; high-ISO shots sit low in that range. The net
sees each plane as its 3x3 local mean (times `input_scale`) and the detail around that mean (times
`detail_scale`), plus the noise planes (times `level_scale`), so typical values are near 1 and the
detail keeps its precision in bf16 (the residual is scaled back).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model
from .unet import Down, ResBlock, Up

RAW_PLANES = 4  # R, G1, G2, B


def _stage(channels: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])


class RawUNet(nn.Module):
    """(N, 4, h, w) packed mosaic and (N, 4, h, w) noise std -> (N, 4, h, w) denoised mosaic (float32)."""

    size_multiple = 4  # in packed pixels (two 2x downsamplings)

    def __init__(
        self,
        *,
        widths: tuple[int, int, int] = (32, 64, 96),
        enc_blocks: Sequence[int] = (1, 1),  # two stages (a list when read from JSON metadata)
        mid_blocks: int = 2,
        dec_blocks: Sequence[int] = (1, 1),
        input_scale: float = 4.0,
        detail_scale: float = 16.0,
        level_scale: float = 16.0,
    ) -> None:
        super().__init__()
        w1, w2, w3 = widths
        enc_blocks, dec_blocks = tuple(enc_blocks), tuple(dec_blocks)
        self.input_scale, self.level_scale = float(input_scale), float(level_scale)
        self.detail_scale = float(detail_scale)
        self.intro = nn.Conv2d(3 * RAW_PLANES, w1, 3, padding=1)
        self.enc1 = _stage(w1, enc_blocks[0])
        self.down1 = Down(w1, w2)
        self.enc2 = _stage(w2, enc_blocks[1])
        self.down2 = Down(w2, w3)
        self.mid = _stage(w3, mid_blocks)
        self.up2 = Up(w3, w2)
        self.dec2 = _stage(w2, dec_blocks[0])
        self.up1 = Up(w2, w1)
        self.dec1 = _stage(w1, dec_blocks[1])
        self.outro = nn.Conv2d(w1, RAW_PLANES, 3, padding=1)
        nn.init.zeros_(self.outro.weight)
        if self.outro.bias is not None:
            nn.init.zeros_(self.outro.bias)
        # context in packed pixels: intro and outro 1 each, 3x3 convs 1 px per conv at 1x, 2 at 1/2,
        # 4 at 1/4 scale, the 2x2 downsamplers 1 and 2, plus 4 px of alignment slack
        self.receptive_radius = (2 + 2 * (enc_blocks[0] + dec_blocks[1]) + 4 * (enc_blocks[1] + dec_blocks[0])
                                 + 8 * mid_blocks + 3 + 4 + 1)  # + 1: the 3x3 mean

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        # local 3x3 mean and the detail around it as separate planes: under bf16 autocast the
        # convolutions see 8-bit mantissas, which would round a bright photosite by more than its
        # noise; the detail plane is small, so it keeps its precision, the mean plane only needs it
        # coarsely
        x = x.float()
        mean = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        inp = torch.cat([(x - mean) * self.detail_scale, mean * self.input_scale,
                         sigma.float() * self.level_scale], 1)
        s1 = self.enc1(F.relu(self.intro(inp), inplace=True))
        s2 = self.enc2(self.down1(s1))
        y = self.mid(self.down2(s2))
        y = self.dec2(self.up2(y) + s2)
        y = self.dec1(self.up1(y) + s1)
        return x - self.outro(y) / self.detail_scale


@register_model
def raw(**kwargs) -> RawUNet:
    """Widths 32/64/96 at 1/2, 1/4 and 1/8 of the mosaic's resolution. These defaults stay fixed:
    checkpoints record only the arguments they were built with."""
    return RawUNet(**kwargs)
