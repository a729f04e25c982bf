"""Tests of unfoldmem.flows.encoding: bijectivity, exact log-Jacobians, normalisation, padding."""

from __future__ import annotations

import math

import awkward as ak
import numpy as np
import pytest
import torch

from unfoldmem.cards.model import FlowConfig
from unfoldmem.flows.cinn import CouplingNSF
from unfoldmem.flows.encoding import (
    ObjectEncoding,
    RecoEncoding,
    log_jacobian_fourvector,
    pad_reco,
    parton_objects,
    weighted_mean_std,
)
from unfoldmem.physics import lorentz


def _objects(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pt = 20 + 80 * torch.rand(n, 4, generator=g, dtype=torch.float64)
    eta = 2 * torch.randn(n, 4, generator=g, dtype=torch.float64)
    phi = (2 * torch.rand(n, 4, generator=g, dtype=torch.float64) - 1) * math.pi
    m = torch.stack([170 + 2 * torch.randn(n, generator=g, dtype=torch.float64),
                     torch.full((n,), 4.7, dtype=torch.float64),
                     torch.zeros(n, dtype=torch.float64),
                     torch.rand(n, generator=g, dtype=torch.float64) * 20], -1)
    eta[:, 2] = 0.0  # a MET-like object: eta constant, massless
    return torch.stack([pt, eta, phi, m], -1)


@pytest.mark.parametrize("relative_phi", [True, False])
def test_round_trip(relative_phi: bool) -> None:
    """v -> x -> v is the identity to 1e-10 (float64); reference: the input itself."""
    v = _objects(500)
    enc = ObjectEncoding.fit(v, relative_phi=relative_phi)
    assert enc.free_mass.tolist() == [True, False, False, True]
    assert enc.free_eta.tolist() == [True, True, False, True]
    assert enc.n_features == 4 + 3 + 4 + 2
    x, ladj = enc(v)
    assert x.shape == (500, 13) and ladj.shape == (500,)
    back = enc.inverse(x)
    assert torch.allclose(back, v, rtol=1e-10, atol=1e-9)
    # standardised on its own data
    assert torch.allclose(x.mean(0), torch.zeros(13, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(13, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("relative_phi", [True, False])
def test_log_jacobian_matches_autograd(relative_phi: bool) -> None:
    """log|det dx/dv| equals the log-determinant of the autograd Jacobian (free variables only)."""
    v = _objects(50, seed=1)
    enc = ObjectEncoding.fit(v, relative_phi=relative_phi)
    free = torch.stack([torch.ones(4, dtype=torch.bool), enc.free_eta,
                        torch.ones(4, dtype=torch.bool), enc.free_mass], -1)
    for i in range(5):
        v0 = v[i].clone()

        def f(u: torch.Tensor, v0: torch.Tensor = v0) -> torch.Tensor:
            w = v0.clone()
            w[free] = u
            return enc(w)[0]

        jac = torch.autograd.functional.jacobian(f, v0[free])
        assert jac.shape == (13, 13)
        ref = torch.linalg.slogdet(jac)[1]
        assert torch.allclose(enc(v0)[1], ref, atol=1e-9)


def test_density_normalised_2d() -> None:
    """A random flow times the encoding Jacobian integrates to 1 over (pt, phi) (trapezoid grid).

    Reference: normalisation of a probability density (1), to the grid's quadrature error.
    """
    torch.manual_seed(3)
    n = 4000
    v = torch.stack([torch.exp(3 + 0.5 * torch.randn(n)), torch.zeros(n),
                     (2 * torch.rand(n) - 1) * math.pi, torch.zeros(n)], -1)[:, None].double()
    enc = ObjectEncoding.fit(v)
    assert enc.n_features == 2
    torch.manual_seed(3)
    flow = CouplingNSF(2, 0, FlowConfig(transforms=2, hidden=[16])).double()
    logpt = torch.linspace(-2.0, 9.0, 601, dtype=torch.float64)
    phi = torch.linspace(-math.pi, math.pi, 601, dtype=torch.float64)[1:-1]
    lp, ph = torch.meshgrid(logpt, phi, indexing="ij")
    grid = torch.stack([lp.exp(), torch.zeros_like(lp), ph, torch.zeros_like(lp)], -1)[..., None, :]
    with torch.no_grad():
        x, ladj = enc(grid)
        dens = torch.exp(flow().log_prob(x) + ladj) * lp.exp()  # d pt = pt d log pt
    total = torch.trapezoid(torch.trapezoid(dens, phi, dim=1), logpt)
    assert abs(float(total) - 1.0) < 3e-3


def test_fourvector_jacobian() -> None:
    """log|d(E,p)/d(pt,eta,phi,m)| vs autograd of lorentz.from_ptetaphim."""
    v = torch.tensor([[40.0, 0.7, 1.1, 12.0], [150.0, -2.0, -3.0, 80.0]], dtype=torch.float64)
    for row in v:
        jac = torch.autograd.functional.jacobian(lorentz.from_ptetaphim, row)
        assert torch.allclose(log_jacobian_fourvector(row), torch.linalg.slogdet(jac)[1])


def test_weighted_stats_equal_duplication() -> None:
    """Weight 2 on an event equals duplicating it (definition of a weighted moment)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 3, generator=g, dtype=torch.float64)
    w = torch.ones(100, dtype=torch.float64)
    w[:50] = 2.0
    m1, s1 = weighted_mean_std(x, w)
    m2, s2 = weighted_mean_std(torch.cat([x, x[:50]]))
    assert torch.allclose(m1, m2) and torch.allclose(s1, s2)
    neg = w.clone()
    neg[:10] = -0.5  # negative weights keep finite positive spreads
    _, s3 = weighted_mean_std(x, neg)
    assert bool((s3 > 0).all())


def _events() -> ak.Array:
    jets = ak.Array([[{"pt": 30.0, "eta": 0.1, "phi": 0.2, "mass": 5.0, "btag": 1.0},
                      {"pt": 90.0, "eta": -1.0, "phi": 2.0, "mass": 9.0, "btag": 0.0}],
                     [{"pt": 50.0, "eta": 1.0, "phi": -1.0, "mass": 6.0, "btag": 0.0}]])
    muons = ak.Array([[{"pt": 25.0, "eta": 0.5, "phi": 1.0, "mass": 0.106, "charge": -1.0}], []])
    electrons = ak.Array([[], [{"pt": 35.0, "eta": 0.3, "phi": 0.5, "mass": 0.0005, "charge": 1.0}]])
    met = ak.Array([{"pt": 40.0, "phi": -2.0}, {"pt": 10.0, "phi": 1.0}])
    return ak.zip({"jets": jets, "muons": muons, "electrons": electrons, "met": met},
                  depth_limit=1)


def test_pad_reco_layout() -> None:
    """Slots are MET, muons, electrons, jets (pt-ordered); padding is zero and masked."""
    objs, mask = pad_reco(_events(), max_jets=3, max_leptons=1)
    assert objs.shape == (2, 6, 7) and mask.shape == (2, 6)
    assert mask.tolist() == [[True, True, False, True, True, False],
                             [True, False, True, True, False, False]]
    assert objs[0, 3, 0] == 90.0 and objs[0, 4, 0] == 30.0  # pt-ordered jets
    assert objs[0, 0, 0] == 40.0 and objs[0, 0, 6] == 0  # MET
    assert objs[1, 2, 6] == 2 and objs[1, 2, 5] == 1.0  # electron, charge
    assert bool((objs[~mask] == 0).all())
    enc = RecoEncoding.fit(objs, mask)
    feats = enc(objs, mask)
    assert feats.shape == (2, 6, RecoEncoding.n_features)
    assert bool((feats[~mask] == 0).all())
    assert bool(torch.isfinite(feats).all())


def test_parton_objects_drops_beam_partons() -> None:
    """Incoming partons (pt = 0) are dropped; the rest equal lorentz.to_ptetaphim."""
    four = np.array([[[100.0, 0, 0, 100.0], [50.0, 30.0, 40.0, 0.0], [60.0, 0.0, 36.0, 48.0]]] * 2)
    rec = ak.zip({"partons": ak.zip({k: four[..., i] for i, k in enumerate(["E", "px", "py", "pz"])})},
                 depth_limit=1)
    v = parton_objects(rec)
    assert v.shape == (2, 2, 4)
    assert torch.allclose(v, lorentz.to_ptetaphim(torch.from_numpy(four[:, 1:])))
