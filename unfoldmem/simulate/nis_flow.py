r"""Neural importance sampling: the normalizing flow on the unit hypercube trained to sample an
integrand (PDF × |M|² × phase space), started from a VEGAS grid.

The flow lives in probit space, x = Φ⁻¹(u) with Φ the standard normal CDF, so its support is
the whole open hypercube and q(u) = q_x(x) / Π φ(x_i). The untrained flow (identity on a
standard normal base) is uniform sampling, and because the spline flow is the identity outside
[−5, 5] its tails stay uniform in u: a flat direction of the integrand near a face of the cube is
never under-sampled (in logit space the Gaussian tails starve such regions and produce rare
huge weights). Training first maximises the likelihood of VEGAS-sampled
points weighted by f/q_VEGAS (so the flow starts where VEGAS ended), then minimises the forward
KL divergence on its own samples, whose gradient is −E_q[(f/q) ∇ log q] / E_q[f/q].

References:
    C. Gao, J. Isaacson, C. Krause, "i-flow: High-dimensional integration and sampling with
    normalizing flows", arXiv:2001.05486.
    T. Heimel et al., "MadNIS — Neural multi-channel importance sampling", arXiv:2212.06172.
    G. P. Lepage, "Adaptive multidimensional integration: VEGAS enhanced", arXiv:2009.05112.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import vegas
import zuko
from torch import Tensor, nn

__all__ = [
    "Integrand",
    "NISConfig",
    "HypercubeFlow",
    "adapt_vegas",
    "map_points",
    "vegas_weights",
    "train_nis",
    "sample_weights",
]

_EPS = 1e-15
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

Integrand = Callable[[Tensor], Tensor]
"""u (N, dim) float64 in [0, 1] → (N,) non-negative weights (pb)."""


@dataclass
class NISConfig:
    """Flow size and training schedule.

    Arguments:
        transforms, hidden, bins: the zuko NSF (coupling spline flow) architecture.
        vegas_iterations, vegas_neval: VEGAS adaptation before the flow is trained.
        warmup_points, warmup_epochs: VEGAS-sampled points for the weighted-likelihood start.
        kl_steps, kl_batch: on-policy forward-KL steps and points per step.
        variance_steps: further on-policy steps minimising the weight variance E_q[(f/q)²]
            (χ² divergence): it weighs the largest weights quadratically, which lowers max w
            and so raises the unweighting efficiency.
        lr: Adam learning rate. seed: torch / VEGAS seed.
        on_vegas: :func:`make_sampler` trains the flow on the VEGAS-mapped integrand
            (:func:`on_vegas_map`), starting exactly from VEGAS (the flow's last layers are
            zero, i.e. the identity) so training only has to learn what VEGAS's product grid
            misses: correlations. Else it learns f on the plain cube, warm-started by a
            weighted fit to VEGAS points.
    """

    transforms: int = 4
    hidden: tuple[int, ...] = (64, 64)
    bins: int = 8
    vegas_iterations: int = 8
    vegas_neval: int = 4000
    warmup_points: int = 20000
    warmup_epochs: int = 30
    kl_steps: int = 150
    kl_batch: int = 2000
    variance_steps: int = 0
    lr: float = 2e-3
    seed: int = 0
    on_vegas: bool = True


class HypercubeFlow(nn.Module):
    """A density q(u) on the open unit hypercube (0, 1)^dim: a zuko spline flow in probit space.

    Arguments:
        dim: dimension of the cube; config: architecture (transforms, hidden, bins).
    """

    def __init__(self, dim: int, config: NISConfig | None = None) -> None:
        super().__init__()
        config = config or NISConfig()
        self.dim = dim
        # coupling (passes=2): one network call per layer when sampling, unlike an autoregressive
        # flow's dim sequential calls
        self.flow = zuko.flows.NSF(
            dim, 0, bins=config.bins, transforms=config.transforms,
            hidden_features=config.hidden, passes=2 if dim > 1 else None,
        ).double()
        if config.on_vegas:
            # zero output layers: identity splines, so the untrained flow is uniform in y
            for t in self.flow.transform.transforms:
                last = [m for m in t.modules() if isinstance(m, nn.Linear)][-1]
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    @staticmethod
    def _log_phi(x: Tensor) -> Tensor:
        return (-0.5 * x * x - _HALF_LOG_2PI).sum(-1)

    def log_prob_x(self, x: Tensor) -> Tensor:
        """log q(u(x)) (N,) for probit-space points x (N, dim); differentiable in the weights."""
        return self.flow().log_prob(x) - self._log_phi(x)

    def log_prob(self, u: Tensor) -> Tensor:
        """log q(u), (N,), for u (N, dim) strictly inside the cube."""
        x = torch.special.ndtri(u.double().clamp(_EPS, 1 - _EPS))
        return self.log_prob_x(x)

    def sample_x(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """n points: probit x (n, dim), u (n, dim) and log q(u) (n,), without gradients."""
        with torch.no_grad():
            x, log_qx = self.flow().rsample_and_log_prob((n,))
            u = torch.special.ndtr(x).clamp(_EPS, 1 - _EPS)
            return x, u, log_qx - self._log_phi(x)

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """n points u (n, dim) and their log q(u) (n,), without gradients."""
        _, u, log_q = self.sample_x(n)
        return u, log_q


def adapt_vegas(f: Integrand, dim: int, config: NISConfig) -> vegas.Integrator:
    """A VEGAS integrator adapted to ``f`` by ``config.vegas_iterations`` iterations.

    Arguments:
        f: the integrand, u (N, dim) → (N,) (batched over points).
        dim: dimension of the unit hypercube.
        config: iterations, points per iteration and seed.
    """

    @vegas.lbatchintegrand
    def fb(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return f(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    rng = np.random.default_rng(config.seed)
    integ = vegas.Integrator(dim * [[0.0, 1.0]])
    integ.set(ran_array_generator=lambda size: rng.random(size))
    integ(fb, nitn=config.vegas_iterations, neval=config.vegas_neval)
    return integ


def map_points(vmap: vegas.AdaptiveMap, y: Tensor) -> tuple[Tensor, Tensor]:
    """Points y (N, dim) of the VEGAS unit cube through its map: u = x(y) (N, dim) and the
    Jacobian |∂x/∂y| (N,), float64."""
    yn = np.ascontiguousarray(y.detach().numpy())
    x = np.empty_like(yn)
    jac = np.empty(len(yn))
    vmap.map(yn, x, jac)
    return torch.from_numpy(x), torch.from_numpy(jac)


def vegas_weights(integ: vegas.Integrator, f: Integrand, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Importance-sample ``n`` points through VEGAS's adapted map (no stratification).

    Returns:
        u (n, dim) and weights f(u)·J(u) (n,), whose mean estimates the integral.
    """
    y = np.random.default_rng(seed).random((n, integ.map.dim))
    u, jac = map_points(integ.map, torch.from_numpy(y))
    with torch.no_grad():
        return u, f(u) * jac


def train_nis(f: Integrand, dim: int, config: NISConfig | None = None,
              integ: vegas.Integrator | None = None) -> tuple[HypercubeFlow, dict[str, Any]]:
    """Train a :class:`HypercubeFlow` to sample ``f``: VEGAS start, forward KL, then variance.

    Arguments:
        f: the integrand, u (N, dim) → (N,) ≥ 0.
        dim: dimension of the unit hypercube.
        config: flow and schedule; integ: an adapted VEGAS integrator (else one is adapted).

    Returns:
        the flow (eval mode) and a history: ``warmup_loss`` per epoch, ``loss`` and
        ``ess_ratio`` (effective sample size / n of the on-policy batch) per step, ``skipped``.
    """
    config = config or NISConfig()
    torch.manual_seed(config.seed)
    model = HypercubeFlow(dim, config)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    history: dict[str, Any] = {"warmup_loss": [], "loss": [], "ess_ratio": [], "skipped": 0}
    if config.warmup_epochs > 0:
        integ = integ or adapt_vegas(f, dim, config)
        u, w = vegas_weights(integ, f, config.warmup_points, config.seed)
        w = torch.where(torch.isfinite(w), w, 0.0).clamp_min(0.0)
        w = w / w.sum()
    gen = torch.Generator().manual_seed(config.seed)
    batch = 2000
    for _ in range(config.warmup_epochs):
        order = torch.randperm(len(u), generator=gen)
        total = 0.0
        for i in range(0, len(u), batch):
            b = order[i : i + batch]
            if float(w[b].sum()) <= 0:
                continue
            loss = -(w[b] * model.log_prob(u[b])).sum() / w[b].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach().item() * len(b)
        history["warmup_loss"].append(total / len(u))
    steps = config.kl_steps + config.variance_steps
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    for step in range(steps):
        xs, us, log_q = model.sample_x(config.kl_batch)
        with torch.no_grad():
            ratio = f(us) * torch.exp(-log_q)
        if not bool(torch.isfinite(ratio).all()) or float(ratio.sum()) <= 0:
            history["skipped"] += 1  # a batch without support carries no gradient
            sched.step()
            continue
        # ∇ KL(p‖q) = −E_q[(p/q) ∇ log q] and ∇ Var_q(f/q) = −E_q[(f/q)² ∇ log q], each
        # self-normalised so the unknown σ drops out
        r = ratio if step < config.kl_steps else ratio * ratio / ratio.mean()
        loss = -(r * model.log_prob_x(xs)).sum() / r.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history["loss"].append(loss.detach().item())
        history["ess_ratio"].append(float(ratio.sum() ** 2 / (ratio**2).sum() / len(ratio)))
    model.eval()
    return model, history


def sample_weights(model: HypercubeFlow, f: Integrand, n: int, chunk: int = 20000) -> tuple[Tensor, Tensor]:
    """n points from the flow and their weights f(u)/q(u) (mean = integral estimate)."""
    us, ws = [], []
    for i in range(0, n, chunk):
        u, log_q = model.sample(min(chunk, n - i))
        us.append(u)
        with torch.no_grad():
            ws.append(f(u) * torch.exp(-log_q))
    return torch.cat(us), torch.cat(ws)

