r"""Fisher information of θ, per event and summed, by automatic differentiation (torch.func)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["fisher_information", "per_event_fisher", "rank_events"]


def per_event_fisher(
    fn: Callable[[Tensor], Tensor], theta: Tensor, kind: str = "hessian"
) -> Tensor:
    r"""Per-event information matrices at θ.

    ``kind="hessian"``: observed information :math:`-\partial_a\partial_b \log P(x_i|\theta)`;
    ``kind="score"``: outer product of scores :math:`s_{ia} s_{ib}`,
    :math:`s_i = \partial_\theta \log P(x_i|\theta)`. Both average to the Fisher information
    :math:`I_{ab}(\theta) = E[s_a s_b] = -E[\partial_a\partial_b \log P]` over events drawn at θ
    (Cramér–Rao: :math:`\mathrm{Var}\,\hat\theta \to I^{-1}`).

    Arguments:
        fn: θ (P,) float64 → (N,) per-event log P(x_i|θ), differentiable.
        theta: (P,) float64 point of evaluation.
        kind: ``"hessian"`` or ``"score"``.

    Returns:
        (N, P, P) float64.

    References:
        R. A. Fisher (1925); H. Cramér, *Mathematical Methods of Statistics* (1946), §32.3.
    """
    theta = torch.as_tensor(theta, dtype=torch.float64)
    if kind == "score":
        s = torch.func.jacfwd(fn)(theta)
        return s[:, :, None] * s[:, None, :]
    if kind == "hessian":
        return -torch.func.jacfwd(torch.func.jacfwd(fn))(theta)
    msg = f"kind must be 'hessian' or 'score', got {kind!r}"
    raise ValueError(msg)


def fisher_information(
    fn: Callable[[Tensor], Tensor],
    theta: Tensor,
    weight: Tensor | None = None,
    kind: str = "hessian",
) -> Tensor:
    r"""Summed information :math:`\sum_i w_i I_i(\theta)` (P, P) of a weighted event sample.

    Its inverse is the asymptotic covariance of the ML estimate for this sample size.
    """
    per = per_event_fisher(fn, theta, kind)
    if weight is None:
        return per.sum(0)
    return (torch.as_tensor(weight, dtype=torch.float64)[:, None, None] * per).sum(0)


def rank_events(per_event: Tensor, param: int = 0) -> Tensor:
    """Event indices sorted by decreasing information on parameter ``param`` (diagonal entry).

    Arguments:
        per_event: (N, P, P) from :func:`per_event_fisher`.
    """
    return torch.argsort(per_event[:, param, param], descending=True)
