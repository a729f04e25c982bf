"""NaN safety at extreme kinematics (issue 14): every shipped process's hadronic integrand,
fed unit-hypercube points on and next to the edges (ŝ at threshold and at √s, rapidity at its
limits, collinear and back-to-back decay angles), returns finite, non-negative weights."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO
from unfoldmem.cards import load_card
from unfoldmem.physics.hadronic import integrand_from_card
from unfoldmem.physics.pdf import load_pdf

PDF = load_pdf("NNPDF31_lo_as_0118", alpha_s_mz=0.118)
INTEGRANDS = {
    name: integrand_from_card(load_card(REPO / f"cards/processes/{name}.yaml"), pdf=PDF)
    for name in ("drell_yan", "w_lnu", "ttbar", "ttbar_semileptonic")
}
EDGES = [0.0, 1e-15, 1e-9, 0.5, 1 - 1e-9, 1 - 1e-15, 1.0]
coordinate = st.one_of(st.sampled_from(EDGES), st.floats(0.0, 1.0))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(sorted(INTEGRANDS)))
def test_integrand_is_finite_at_the_edges(data, name):
    f = INTEGRANDS[name]
    u = torch.tensor([[data.draw(coordinate) for _ in range(f.dim)] for _ in range(4)],
                     dtype=torch.float64)
    w = f.weight(u)
    assert bool(torch.isfinite(w).all()), (name, u, w)
    assert bool((w >= 0).all()), (name, u, w)


def test_all_edge_corners_at_once():
    """Every coordinate at 0 or 1 simultaneously: the worst case for every mapping."""
    for name, f in INTEGRANDS.items():
        for value in (0.0, 1.0):
            w = f.weight(torch.full((2, f.dim), value, dtype=torch.float64))
            assert bool(torch.isfinite(w).all()), (name, value, w)
