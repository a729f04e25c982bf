"""The per-event adapted law of a channel's uniforms (population Monte Carlo)."""

from __future__ import annotations

import math

import torch

from unfoldmem.mem.context import UniformLaw

torch.set_num_threads(1)


def test_adapted_uniform_law_is_normalised_and_is_what_it_draws() -> None:
    """After a fit to weighted samples of a target N(m, 0.7²) in ε = Φ⁻¹(u), the law h(u) draws
    and reports its density consistently: E_h[1/h(u)] = ∫₀¹du = 1 (the reference: the volume
    of the unit cube) for every event and law, within 5 standard errors of the sample mean;
    and the fit has moved to the target (mean within 0.1 of m, so h is not uniform)."""
    g = torch.Generator().manual_seed(3)
    b, d, v = 2, 6, 2
    law = UniformLaw(b, d, v)
    m = torch.tensor([[0.5, -0.5], [0.3, 0.0]], dtype=torch.float64)  # (b, v) target means
    rows = torch.arange(b)
    for _ in range(4):
        n = 4000
        laws = torch.randint(0, v, (n, b), generator=g)
        u, lh = law.draw(n, rows, laws, g)
        eps = torch.special.ndtri(u.clamp(1e-15, 1 - 1e-15))
        c = torch.gather(m[None].expand(n, b, v), 2, laws[..., None])  # (n, b, 1)
        # log of target N(c, 0.7²) per dimension over the uniform measure, over h.
        lt = (-0.5 * ((eps - c) / 0.7) ** 2 - math.log(0.7) + 0.5 * eps**2).sum(-1)
        law.add(rows, u, laws, lt - lh)
        law.refit()
    assert (law.mu - m[..., None]).abs().max() < 0.1
    n = 40000
    laws = torch.randint(0, v, (n, b), generator=g)
    u, lh = law.draw(n, rows, laws, g)
    torch.testing.assert_close(lh, law.log_density(u, rows, laws), rtol=0, atol=1e-12)
    r = torch.exp(-lh)
    for k in range(v):
        for e in range(b):
            x = r[laws[:, e] == k, e]
            assert abs(float(x.mean()) - 1) < 5 * float(x.std()) / math.sqrt(len(x))
