r"""Log-densities of the resolution models shared by the detector and the MEM channels."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["log_normal", "log_wrapped_normal"]

_LOG_2PI = math.log(2 * math.pi)


def log_normal(x: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """log N(x; mu, sigma²), elementwise (broadcasting), in the units of 1/x."""
    z = (x - mu) / sigma
    return -0.5 * z * z - torch.log(sigma) - 0.5 * _LOG_2PI


def log_wrapped_normal(dphi: Tensor, sigma: Tensor) -> Tensor:
    """log density of a normal of width sigma (rad) wrapped onto the circle, at the angle
    difference ``dphi`` (any real value; wrapped here), in 1/rad."""
    # Five images of the circle are exact to float64 for sigma < 1 rad.
    d = torch.remainder(dphi + math.pi, 2 * math.pi) - math.pi
    k = torch.arange(-2, 3, dtype=d.dtype, device=d.device) * (2 * math.pi)
    z = (d.unsqueeze(-1) + k) / sigma.unsqueeze(-1)
    return torch.logsumexp(-0.5 * z * z, -1) - torch.log(sigma) - 0.5 * _LOG_2PI
