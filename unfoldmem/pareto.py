r"""Pareto-tail diagnostic of importance weights: the shape :math:`\hat k` of their upper tail.

A sum of importance weights has a finite variance only if the weights' tail is lighter than a
Pareto tail of shape 1/2. Where :math:`\hat k > 0.7` the sample variance (and so the reported
error of an importance-sampling estimate) is not to be trusted, however small it looks: the
sample has not yet met the rare large weights that dominate the integral. The fit is the
generalized Pareto fit of Zhang & Stephens with the weakly informative prior and tail size of
Pareto-smoothed importance sampling (PSIS).

References:
    J. Zhang, M. A. Stephens, *A new and efficient estimation method for the generalized Pareto
    distribution*, Technometrics 51 (2009) 316.
    A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry, *Pareto smoothed importance
    sampling*, JMLR 25 (2024) 1, arXiv:1507.02646 (tail size, prior, the 0.7 threshold).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["K_RELIABLE", "pareto_k", "tail_size"]

#: Above this :math:`\hat k` an importance-sampling error estimate is unreliable (PSIS, §3).
K_RELIABLE = 0.7


def tail_size(n: int | Tensor) -> int | Tensor:
    r"""Number of largest weights in the fit for a sample of ``n``: :math:`\min(n/5, 3\sqrt n)`
    (an int, or a long tensor for a tensor of sample sizes)."""
    if isinstance(n, Tensor):
        return torch.minimum(0.2 * n, 3.0 * torch.sqrt(n)).floor().long()
    return int(min(0.2 * n, 3.0 * math.sqrt(n)))


def pareto_k(log_w: Tensor, n: Tensor | int | None = None) -> Tensor:
    r"""Shape :math:`\hat k` of the generalized Pareto fit to the largest weights.

    Arguments:
        log_w: (..., M) log weights holding at least the ``tail_size(n) + 1`` largest of each
            sample (any order; −inf entries are missing weights). Only ratios matter, so any
            per-row log scale is fine.
        n: (...) or int: the full sample size of each row (default: M).

    Returns:
        (...) :math:`\hat k` (float64); NaN where the tail has fewer than 5 positive
        exceedances (too few weights for a fit).
    """
    lw = torch.sort(log_w.double(), dim=-1, descending=True).values
    m_all = lw.shape[-1]
    n_t = torch.as_tensor(m_all if n is None else n, dtype=torch.float64).expand(lw.shape[:-1])
    m = torch.clamp(tail_size(n_t), max=m_all - 1)
    lw = lw[..., : int(m.max()) + 1] if m.numel() else lw  # the tail and its threshold only
    m_all = lw.shape[-1]
    top = lw[..., :1]
    w = torch.exp(lw - torch.where(torch.isfinite(top), top, 0.0))  # largest first, in (0, 1]
    u = torch.gather(w, -1, m[..., None])  # the threshold: the (M+1)-th largest weight
    idx = torch.arange(m_all)
    inside = idx < m[..., None]
    x = torch.where(inside, (w - u).clamp(min=0.0), 0.0)  # exceedances, largest first
    n_x = inside.sum(-1).double()
    ok = (x > 0).sum(-1) >= 5
    # Zhang & Stephens: a posterior mean of θ = −k/σ over a grid of m_g candidate values.
    m_g = 80 + int(math.sqrt(m_all))  # loo's grid (Zhang & Stephens used 20 + √n)
    j = torch.arange(1, m_g + 1, dtype=torch.float64)
    x_max = x[..., 0].clamp(min=1e-300)
    q = (n_x / 4 + 0.5).floor().long().clamp(min=1) - 1  # x[floor(n/4 + 0.5)] of the ascending x
    x_q = torch.gather(x, -1, (m - 1 - q).clamp(min=0)[..., None])[..., 0].clamp(min=1e-300)
    b = 1 / x_max[..., None] + (1 - torch.sqrt(m_g / (j - 0.5))) / 3 / x_q[..., None]  # (..., m_g)
    k_j = (torch.log1p(-b[..., None] * x[..., None, :]) * inside[..., None, :]).sum(-1)
    k_j = k_j / n_x.clamp(min=1)[..., None]
    log_l = n_x[..., None] * (torch.log(-b / k_j) - k_j - 1)
    wt = torch.softmax(torch.where(torch.isnan(log_l), -math.inf, log_l), -1)
    b_hat = (wt * b).sum(-1)
    k = (torch.log1p(-b_hat[..., None] * x) * inside).sum(-1) / n_x.clamp(min=1)
    k = (n_x * k + 10 * 0.5) / (n_x + 10)  # weakly informative prior N(0.5, ·) (PSIS, loo)
    return torch.where(ok, k, math.nan)
