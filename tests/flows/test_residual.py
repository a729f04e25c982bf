"""Tests of unfoldmem.flows.residual: bijectivity, exact log-Jacobian, pairing, mass rule."""

from __future__ import annotations

import itertools
import math

import torch
from scipy.optimize import linear_sum_assignment

from unfoldmem.flows.residual import (
    from_acceptance,
    from_residual,
    match_fraction,
    paired_partons,
    slot_order,
    to_acceptance,
    to_residual,
    truth_match,
    velocity_mass,
)
from unfoldmem.physics import lorentz


def _objects(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pt = 20 + 80 * torch.rand(n, k, generator=g, dtype=torch.float64)
    eta = torch.randn(n, k, generator=g, dtype=torch.float64)
    phi = (2 * torch.rand(n, k, generator=g, dtype=torch.float64) - 1) * math.pi
    m = 10 * torch.rand(n, k, generator=g, dtype=torch.float64)
    return torch.stack([pt, eta, phi, m], -1)


def test_round_trip_and_wrapping() -> None:
    """from_residual(to_residual(x)) = x (φ on the circle), unpaired objects untouched, and the
    residual φ lies in [-π, π) also where φ and the parton φ straddle ±π."""
    obj, par = _objects(200, 5, 0), _objects(200, 3, 1)
    idx = [0, 2, 4]
    pseudo, _ = to_residual(obj, par, idx)
    assert torch.equal(pseudo[:, [1, 3]], obj[:, [1, 3]])
    assert bool((pseudo[:, idx, 2].abs() <= math.pi).all())
    back = from_residual(pseudo, par, idx)
    assert torch.allclose(back[..., [0, 1, 3]], obj[..., [0, 1, 3]], atol=1e-12, rtol=1e-12)
    assert bool((lorentz.delta_phi(back[..., 2], obj[..., 2]).abs() < 1e-12).all())
    edge = torch.tensor([[[50.0, 0.0, 3.1, 0.0]]], dtype=torch.float64)
    near = torch.tensor([[[40.0, 0.0, -3.1, 0.0]]], dtype=torch.float64)
    r, _ = to_residual(edge, near, [0])
    assert abs(float(r[0, 0, 2]) - (6.2 - 2 * math.pi)) < 1e-12


def test_log_jacobian_matches_autograd() -> None:
    """Reference: log|det| of the autograd Jacobian of the map (pt, eta, phi, m) of all objects
    -> pseudo-objects, for fixed partons; analytic value -Σ log pT(parton)."""
    obj, par = _objects(4, 3, 2), _objects(4, 2, 3)
    idx = [2, 0]
    _, ladj = to_residual(obj, par, idx)
    for b in range(obj.shape[0]):
        def f(x: torch.Tensor, b: int = b) -> torch.Tensor:
            return to_residual(x.view(3, 4), par[b], idx)[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, obj[b].reshape(-1))
        ref = torch.linalg.slogdet(jac)[1]
        assert abs(float(ref - ladj[b])) < 1e-10
        assert abs(float(ladj[b] + torch.log(par[b, :, 0]).sum())) < 1e-12


def test_pairing_by_pt_and_by_slot() -> None:
    """by_pt pairs the j-th object with the j-th hardest candidate; by slot keeps the order;
    only min(count, candidates) objects are paired."""
    par = torch.tensor([[[30.0, 0, 0, 0], [90.0, 1, 0, 0], [60.0, 2, 0, 0], [5.0, 3, 0, 0]]])
    assert paired_partons(par, [0, 1, 2], 5, True)[0, :, 1].tolist() == [1.0, 2.0, 0.0]
    assert paired_partons(par, [0, 1, 2], 2, False)[0, :, 1].tolist() == [0.0, 1.0]
    assert paired_partons(par, [], 3, True).shape == (1, 0, 4)


def test_velocity_mass_is_the_parametric_detector_rule() -> None:
    """Reference: the parametric detector's jet mass m' = m E'/E at fixed velocity β, i.e. a
    reco four-vector E' p/E of the parton's; velocity_mass of it returns m E'/E."""
    par = _objects(50, 1, 4)[:, 0]
    p4 = lorentz.from_ptetaphim(par)
    scale = 0.5 + torch.rand(50, dtype=torch.float64)
    reco = lorentz.to_ptetaphim(p4 * scale[:, None])
    assert torch.allclose(velocity_mass(reco, par), par[:, 3] * scale, rtol=1e-10)


def test_match_fraction() -> None:
    """A parton with an object on top of it in every event scores 1, one far away 0, and
    objects outside ``valid`` are ignored."""
    par = torch.tensor([[[50.0, 0.0, 0.0, 0.0], [50.0, 2.0, 3.0, 0.0]]]).repeat(10, 1, 1)
    obj = torch.tensor([[[40.0, 0.05, 0.05], [30.0, 2.0, 3.0]]]).repeat(10, 1, 1)
    valid = torch.tensor([True, False]).repeat(10, 1)
    assert match_fraction(par, obj, valid, 0.4).tolist() == [1.0, 0.0]


def test_acceptance_map() -> None:
    """pT-ordered objects in pT > 25, |η| < 2.5: pT become gaps to the next object / the cut,
    round trip, log|det| vs autograd (reference: torch.autograd.functional.jacobian), −inf
    (not NaN) for an object outside the acceptance or out of pT order."""
    obj = _objects(6, 3, 5)
    obj[..., 0] += 5.0
    obj[:, [0, 2], 0] = obj[:, [0, 2], 0].sort(-1, descending=True).values
    obj[..., 1] = obj[..., 1].clamp(-2.4, 2.4)
    pseudo, ladj = to_acceptance(obj, [0, 2], 25.0, 2.5)
    assert torch.equal(pseudo[:, 1], obj[:, 1])
    assert torch.allclose(pseudo[:, 0, 0], obj[:, 0, 0] - obj[:, 2, 0])
    assert torch.allclose(pseudo[:, 2, 0], obj[:, 2, 0] - 25.0)
    assert torch.allclose(from_acceptance(pseudo, [0, 2], 25.0, 2.5), obj, atol=1e-12)
    for b in range(obj.shape[0]):
        def f(x: torch.Tensor) -> torch.Tensor:
            return to_acceptance(x.view(3, 4), [0, 2], 25.0, 2.5)[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, obj[b].reshape(-1))
        assert abs(float(torch.linalg.slogdet(jac)[1] - ladj[b])) < 1e-10
    out = obj.clone()
    out[0, 2, 0], out[1, 2, 1], out[2, 2, 0] = 24.0, 2.6, out[2, 0, 0] + 1.0
    _, l_out = to_acceptance(out, [0, 2], 25.0, 2.5)
    assert l_out[:3].tolist() == [-math.inf] * 3 and bool(torch.isfinite(l_out[3:]).all())


def test_truth_match_is_the_least_squares_assignment() -> None:
    """Reference: scipy's Hungarian solver (linear_sum_assignment) on the ΔR² matrix gives the
    least Σ ΔR² of events with at least as many valid objects as partons; events with fewer map
    their first partons only, each onto a distinct valid object (checked by brute force)."""
    par = _objects(60, 3, 11)
    obj = _objects(60, 5, 12)
    valid = torch.rand(60, 5, generator=torch.Generator().manual_seed(3)) < 0.7
    got = truth_match(par, obj, valid)
    for b in range(60):
        vs = valid[b].nonzero()[:, 0].tolist()
        deta = par[b, :, None, 1] - obj[b, None, vs, 1]
        dphi = lorentz.delta_phi(par[b, :, None, 2], obj[b, None, vs, 2])
        d2 = (deta**2 + dphi**2).numpy()
        m = min(3, len(vs))
        assert (got[b, m:] == -1).all()
        if m == 0:
            continue
        cols = got[b, :m].tolist()
        assert len(set(cols)) == m and all(c in vs for c in cols)
        cost = sum(d2[i, vs.index(c)] for i, c in enumerate(cols))
        rows, best = linear_sum_assignment(d2[:m])
        ref = d2[:m][rows, best].sum()
        brute = min(sum(d2[i, p[i]] for i in range(m))
                    for p in itertools.permutations(range(len(vs)), m))
        assert abs(cost - ref) < 1e-9 and abs(cost - brute) < 1e-9


def test_slot_order_moves_only_jets() -> None:
    """Matched jets come first in parton order, unmatched jets after them in descending pt,
    non-jet and padded slots stay where they are (hand-made event); pt-ordered input with no
    match is unchanged, and unmatched jets out of pt order (a toy given in slot order) are
    put back in pt order."""
    reco = torch.arange(7 * 7, dtype=torch.float64).view(7, 7)[None].clone()
    reco[0, :, 0] = torch.tensor([70.0, 60.0, 50.0, 40.0, 30.0, 20.0, 10.0])
    reco[0, :, 6] = torch.tensor([0.0, 1.0, 3.0, 3.0, 3.0, 3.0, 0.0])
    is_jet = torch.tensor([[False, False, True, True, True, True, False]])
    out = slot_order(reco, is_jet, torch.tensor([[4, -1, 2]]))
    assert out[0, :, 1].tolist() == [reco[0, i, 1] for i in (0, 1, 4, 2, 3, 5, 6)]
    same = slot_order(reco, is_jet, torch.tensor([[-1, -1, -1]]))
    assert torch.equal(same, reco)
    swapped = reco.clone()
    swapped[0, [3, 5]] = reco[0, [5, 3]]
    out = slot_order(swapped, is_jet, torch.tensor([[4, -1, 2]]))
    assert out[0, :, 0].tolist() == [70.0, 60.0, 30.0, 50.0, 40.0, 20.0, 10.0]
