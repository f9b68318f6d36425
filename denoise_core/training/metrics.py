"""Image quality metrics on float tensors/arrays in [0, 1]."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def psnr(a, b, *, peak: float = 1.0) -> float:
    a = torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a, dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b) if not torch.is_tensor(b) else b, dtype=torch.float64)
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(peak * peak / mse)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (Gaussian window 11, sigma 1.5) over channels; inputs (N, C, H, W) in [0, 1]."""
    a, b = a.double(), b.double()
    c = a.shape[1]
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    gy = g.reshape(1, 1, 11, 1).expand(c, 1, 11, 1).contiguous()
    gx = g.reshape(1, 1, 1, 11).expand(c, 1, 1, 11).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian window, valid region
        return F.conv2d(F.conv2d(t, gy, groups=c), gx, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a ** 2
    sbb = blur(b * b) - mu_b ** 2
    sab = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    return float(s.mean())
