r"""The wrapped normal's log density as one numba loop (the MEM channels' hot path).

:func:`unfoldmem.physics.densities.log_wrapped_normal` sums five images of the circle with a
``logsumexp`` over a trailing dimension of 5 (~400 ns per value: 13 % of a tt̄ MEM sample).
With :math:`d \in [-\pi, \pi)` the central image is the largest term, so

.. math:: \log\sum_{k=-2}^{2} e^{-z_k^2/2} = -\frac{z_0^2}{2}
    + \log\Big(1 + \sum_{k\ne 0} e^{-(z_k - z_0)(z_k + z_0)/2}\Big),
    \qquad z_k = (d + 2\pi k)/\sigma:

the same five images, equal to the reference to rounding (≤ 2e-15 relative), in one pass
(~2× faster).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import Tensor

__all__ = ["log_wrapped_normal_fast"]

_LOG_2PI = math.log(2 * math.pi)
_TWO_PI = 2 * math.pi


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _kernel(dphi, sigma, out):  # pragma: no cover - compiled
    for i in range(dphi.shape[0]):
        s = sigma[i]
        d = (dphi[i] + math.pi) % _TWO_PI - math.pi  # Python modulo = torch.remainder
        z0 = d / s
        acc = 0.0
        for k in (-2.0, -1.0, 1.0, 2.0):
            zk = (d + _TWO_PI * k) / s
            acc += math.exp(-0.5 * (zk - z0) * (zk + z0))
        out[i] = -0.5 * z0 * z0 + math.log1p(acc) - math.log(s) - 0.5 * _LOG_2PI


def log_wrapped_normal_fast(dphi: Tensor, sigma: Tensor) -> Tensor:
    """log density (1/rad) of a normal of width sigma (rad) wrapped onto the circle, at the
    angle difference ``dphi`` (any real value), broadcasting; as
    :func:`~unfoldmem.physics.densities.log_wrapped_normal` (which it falls back to off the
    CPU, for other dtypes and under autograd)."""
    if (dphi.device.type != "cpu" or dphi.dtype != torch.float64
            or sigma.dtype != torch.float64 or dphi.requires_grad or sigma.requires_grad):
        from unfoldmem.physics.densities import log_wrapped_normal

        return log_wrapped_normal(dphi, sigma)
    d, s = torch.broadcast_tensors(dphi, sigma)
    out = np.empty(d.numel())
    _kernel(np.ascontiguousarray(d.reshape(-1).numpy()),
            np.ascontiguousarray(s.reshape(-1).numpy()), out)
    return torch.from_numpy(out).view(d.shape)
