r"""Tests of unfoldmem.physics.densities against scipy and numerical normalisation."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import integrate, stats

from unfoldmem.physics.densities import log_normal, log_wrapped_normal


def test_log_normal_matches_scipy() -> None:
    """Reference: scipy.stats.norm.logpdf."""
    g = torch.Generator().manual_seed(7)
    x, mu = torch.randn(200, generator=g, dtype=torch.float64), torch.randn(200, generator=g,
                                                                            dtype=torch.float64)
    s = 0.1 + torch.rand(200, generator=g, dtype=torch.float64)
    want = stats.norm.logpdf(x.numpy(), mu.numpy(), s.numpy())
    np.testing.assert_allclose(log_normal(x, mu, s).numpy(), want, rtol=1e-12)


def test_wrapped_normal_is_normalised_periodic_and_narrow_limit_is_normal() -> None:
    """References: ∫ over one period = 1 (scipy quad); period 2π; for σ ≪ π it equals the plain
    normal (scipy.stats.norm); for wide σ it equals the explicit image sum with 41 images."""
    for s in (0.05, 0.5, 0.99):
        sig = torch.tensor(s, dtype=torch.float64)

        def f(d: float, sig: torch.Tensor = sig) -> float:
            return math.exp(float(log_wrapped_normal(torch.tensor(d, dtype=torch.float64), sig)))

        total, _ = integrate.quad(f, -math.pi, math.pi, points=[0.0], limit=200)
        assert abs(total - 1.0) < 1e-10
    d = torch.linspace(-3.0, 3.0, 61, dtype=torch.float64)
    s = torch.full_like(d, 0.7)
    np.testing.assert_allclose(log_wrapped_normal(d + 2 * math.pi, s).numpy(),
                               log_wrapped_normal(d, s).numpy(), atol=1e-12)
    k = np.arange(-20, 21)[:, None] * 2 * math.pi
    many = np.log(stats.norm.pdf(d.numpy()[None, :] + k, 0.0, 0.7).sum(0))
    np.testing.assert_allclose(log_wrapped_normal(d, s).numpy(), many, rtol=1e-12, atol=1e-12)
    narrow = torch.full_like(d, 0.02)
    small = d[d.abs() < 0.1]
    np.testing.assert_allclose(log_wrapped_normal(small, narrow[: len(small)]).numpy(),
                               stats.norm.logpdf(small.numpy(), 0.0, 0.02), rtol=1e-12)
