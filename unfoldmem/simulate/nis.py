r"""Neural importance sampling: a normalizing flow on the unit hypercube trained to sample an
integrand (PDF × |M|² × phase space), started from a VEGAS grid.

The flow lives in logit space, x = logit(u), so its support is the whole open hypercube:
q(u) = q_x(x) / Π u_i (1 − u_i). Training first maximises the likelihood of VEGAS-sampled
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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import vegas
import zuko
from torch import Tensor, nn

__all__ = ["NISConfig", "HypercubeFlow", "SamplerResult", "adapt_vegas", "vegas_weights", "train_nis", "sample_weights", "summarize"]

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
        lr: Adam learning rate. seed: torch / VEGAS seed.
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
    lr: float = 2e-3
    seed: int = 0


class HypercubeFlow(nn.Module):
    """A density q(u) on the open unit hypercube (0, 1)^dim: a zuko NSF in logit space."""

    def __init__(self, dim: int, config: NISConfig | None = None) -> None:
        super().__init__()
        config = config or NISConfig()
        self.dim = dim
        self.flow = zuko.flows.NSF(
            dim, 0, bins=config.bins, transforms=config.transforms, hidden_features=config.hidden
        ).double()

    def log_prob(self, u: Tensor) -> Tensor:
        """log q(u), (N,), for u (N, dim) strictly inside the cube."""
        u = u.clamp(1e-15, 1 - 1e-15)
        x = torch.log(u) - torch.log1p(-u)
        return self.flow().log_prob(x) - (torch.log(u) + torch.log1p(-u)).sum(-1)

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """n points u (n, dim) and their log q(u) (n,), without gradients."""
        with torch.no_grad():
            x, log_qx = self.flow().rsample_and_log_prob((n,))
            u = torch.sigmoid(x).clamp(1e-15, 1 - 1e-15)
            return u, log_qx - (torch.log(u) + torch.log1p(-u)).sum(-1)


@dataclass
class SamplerResult:
    """Integral estimate and sampling quality of one sampler.

    Attributes: sigma, sigma_err (pb); unweighting_efficiency ⟨w⟩/max w; n_points used;
    seconds of evaluation + sampling; relative error per second: 1 / (rel_err² · seconds).
    """

    sigma: float
    sigma_err: float
    unweighting_efficiency: float
    n_points: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def precision_per_second(self) -> float:
        """1 / (relative error² × seconds): bigger is better, independent of n."""
        rel = self.sigma_err / abs(self.sigma)
        return 1.0 / (rel * rel * self.seconds)


def adapt_vegas(f: Integrand, dim: int, config: NISConfig) -> vegas.Integrator:
    """A VEGAS integrator adapted to ``f`` (batched over points)."""

    @vegas.lbatchintegrand
    def fb(x: np.ndarray) -> np.ndarray:
        return f(torch.as_tensor(x, dtype=torch.float64)).detach().numpy()

    np.random.seed(config.seed)
    integ = vegas.Integrator(dim * [[0.0, 1.0]], ran_array_generator=np.random.default_rng(config.seed).random)
    integ(fb, nitn=config.vegas_iterations, neval=config.vegas_neval)
    return integ


def vegas_weights(integ: vegas.Integrator, f: Integrand, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Importance-sample ``n`` points through VEGAS's adapted map (no stratification).

    Returns:
        u (n, dim) and weights f(u)·J(u) (n,), whose mean estimates the integral.
    """
    rng = np.random.default_rng(seed)
    y = rng.random((n, integ.map.dim))
    x = np.empty_like(y)
    jac = np.empty(n)
    integ.map.map(y, x, jac)
    u = torch.as_tensor(x, dtype=torch.float64)
    return u, f(u) * torch.as_tensor(jac, dtype=torch.float64)


def train_nis(f: Integrand, dim: int, config: NISConfig | None = None,
              integ: vegas.Integrator | None = None) -> tuple[HypercubeFlow, dict[str, Any]]:
    """Train a :class:`HypercubeFlow` to sample ``f``: VEGAS start, then forward KL.

    Returns:
        the flow (eval mode) and a history: ``warmup_loss``, ``kl_loss``, ``ess_ratio`` per step.
    """
    config = config or NISConfig()
    torch.manual_seed(config.seed)
    integ = integ or adapt_vegas(f, dim, config)
    model = HypercubeFlow(dim, config)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    u, w = vegas_weights(integ, f, config.warmup_points, config.seed)
    w = (w / w.sum()).detach()
    history: dict[str, list[float]] = {"warmup_loss": [], "kl_loss": [], "ess_ratio": []}
    gen = torch.Generator().manual_seed(config.seed)
    batch = 2000
    for _ in range(config.warmup_epochs):
        order = torch.randperm(len(u), generator=gen)
        total = 0.0
        for i in range(0, len(u), batch):
            b = order[i : i + batch]
            loss = -(w[b] * model.log_prob(u[b])).sum() / w[b].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(b)
        history["warmup_loss"].append(total / len(u))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(config.kl_steps, 1))
    for _ in range(config.kl_steps):
        us, log_q = model.sample(config.kl_batch)
        fw = f(us).detach()
        ratio = fw / log_q.exp()
        if not torch.isfinite(ratio).all() or ratio.sum() <= 0:
            continue  # a batch with no support is skipped, its count is in ess_ratio history
        loss = -(ratio * model.log_prob(us)).sum() / ratio.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history["kl_loss"].append(float(loss))
        history["ess_ratio"].append(float(ratio.sum() ** 2 / (ratio**2).sum() / len(ratio)))
    model.eval()
    return model, history


def sample_weights(model: HypercubeFlow, f: Integrand, n: int, chunk: int = 20000) -> tuple[Tensor, Tensor]:
    """n points from the flow and their weights f(u)/q(u) (mean = integral estimate)."""
    us, ws = [], []
    for i in range(0, n, chunk):
        u, log_q = model.sample(min(chunk, n - i))
        us.append(u)
        ws.append(f(u).detach() * torch.exp(-log_q))
    return torch.cat(us), torch.cat(ws)


def summarize(w: Tensor, seconds: float, **extra: Any) -> SamplerResult:
    """σ ± error and unweighting efficiency ⟨w⟩ / max w of importance weights ``w``."""
    w = w.double()
    n = len(w)
    mean = float(w.mean())
    err = float(w.std(unbiased=True)) / math.sqrt(n)
    eff = mean / float(w.max()) if float(w.max()) > 0 else 0.0
    return SamplerResult(mean, err, eff, n, seconds, dict(extra))
