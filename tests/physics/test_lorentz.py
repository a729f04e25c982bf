r"""Tests of unfoldmem.physics.lorentz against scikit-hep `vector` and explicit frame constructions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import vector

from unfoldmem.physics import lorentz as L

GEN = torch.Generator().manual_seed(20261127)


def _momenta(n: int = 500, mmax: float = 50.0) -> torch.Tensor:
    p3 = 200.0 * torch.randn(n, 3, generator=GEN, dtype=torch.float64)
    m = mmax * torch.rand(n, generator=GEN, dtype=torch.float64)
    e = torch.sqrt(m * m + (p3 * p3).sum(-1))
    return torch.cat([e[:, None], p3], dim=-1)


def _vec(p: torch.Tensor) -> vector.MomentumNumpy4D:
    a = p.detach().numpy()
    return vector.array({"E": a[:, 0], "px": a[:, 1], "py": a[:, 2], "pz": a[:, 3]})


def test_kinematics_match_vector_package() -> None:
    """pt, eta, phi, m, rapidity, dot vs scikit-hep `vector` (independent implementation)."""
    p, q = _momenta(), _momenta()
    v, w = _vec(p), _vec(q)
    np.testing.assert_allclose(L.pt(p).numpy(), v.pt, rtol=1e-12)
    np.testing.assert_allclose(L.eta(p).numpy(), v.eta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(L.phi(p).numpy(), v.phi, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(L.mass(p).numpy(), v.mass, rtol=1e-7, atol=1e-6)
    np.testing.assert_allclose(L.rapidity(p).numpy(), v.rapidity, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(L.dot(p, q).numpy(), v.dot(w), rtol=1e-9, atol=1e-6)


def test_ptetaphim_round_trip() -> None:
    """from_ptetaphim(to_ptetaphim(p)) == p (exact algebraic inverse), massive and massless."""
    p = _momenta()
    p[:100, 0] = torch.linalg.vector_norm(p[:100, 1:], dim=-1)  # massless
    back = L.from_ptetaphim(L.to_ptetaphim(p))
    torch.testing.assert_close(back, p, rtol=1e-10, atol=1e-9)
    v = torch.tensor([[30.0, 2.5, -1.0, 4.7], [50.0, -4.0, 3.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(L.to_ptetaphim(L.from_ptetaphim(v)), v, rtol=1e-9, atol=1e-9)


def test_no_nan_at_edges_values_and_grads() -> None:
    """pt = 0, null vector, massless along z, huge |eta|: finite values and gradients."""
    edge = torch.tensor(
        [
            [10.0, 0.0, 0.0, 10.0],
            [10.0, 0.0, 0.0, -10.0],
            [0.0, 0.0, 0.0, 0.0],
            [5.0, 0.0, 0.0, 3.0],
            [1e4, 1e-8, 0.0, 1e4],
            [3.0, 1.0, 2.0, 2.0],
        ],
        dtype=torch.float64,
        requires_grad=True,
    )
    out = torch.cat([L.to_ptetaphim(edge), L.rapidity(edge)[:, None]], dim=-1)
    assert torch.isfinite(out).all()
    assert out[0, 1] == L.ETA_MAX and out[1, 1] == -L.ETA_MAX
    assert out[3, 4].item() == pytest.approx(0.5 * math.log(8.0 / 2.0), rel=1e-14)
    out.sum().backward()
    assert torch.isfinite(edge.grad).all()
    assert torch.isfinite(L.from_ptetaphim(L.to_ptetaphim(edge.detach()))).all()


def test_boosts_match_vector_and_invert() -> None:
    """boost vs vector.boost_beta3; boost_to_rest(p, p) = (m, 0, 0, 0); boost(-b) undoes boost(b)."""
    p = _momenta()
    b = 0.99 * torch.nn.functional.normalize(
        torch.randn(500, 3, generator=GEN, dtype=torch.float64)
    )
    b = b * torch.rand(500, 1, generator=GEN, dtype=torch.float64)
    bn = b.numpy()
    ref = _vec(p).boost_beta3(vector.array({"x": bn[:, 0], "y": bn[:, 1], "z": bn[:, 2]}))
    got = L.boost(p, b)
    np.testing.assert_allclose(got[:, 0].numpy(), ref.E, rtol=1e-11)
    np.testing.assert_allclose(got[:, 3].numpy(), ref.pz, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(L.boost(got, -b), p, rtol=1e-10, atol=1e-9)
    rest = L.boost_to_rest(p, p)
    torch.testing.assert_close(rest[:, 1:], torch.zeros_like(rest[:, 1:]), rtol=0, atol=1e-9)
    torch.testing.assert_close(rest[:, 0], L.mass(p), rtol=1e-9, atol=1e-9)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


def test_collins_soper_vs_explicit_frame() -> None:
    """cos θ_CS vs the frame definition: angle to the bisector of p_a and -p_b in the ll rest frame
    (Collins & Soper, Phys. Rev. D 16 (1977) 2219), sign flipped for Q_z < 0."""
    lm, lp = _momenta(400, 0.0), _momenta(400, 0.0)
    q = lm + lp
    beam_a = torch.tensor([6500.0, 0.0, 0.0, 6500.0], dtype=torch.float64).expand(400, 4)
    beam_b = torch.tensor([6500.0, 0.0, 0.0, -6500.0], dtype=torch.float64).expand(400, 4)
    ra, rb = _unit(L.boost_to_rest(beam_a, q)[:, 1:]), _unit(L.boost_to_rest(beam_b, q)[:, 1:])
    axis = _unit(ra - rb)
    lrest = _unit(L.boost_to_rest(lm, q)[:, 1:])
    ref = (lrest * axis).sum(-1) * torch.sign(q[:, 3])
    torch.testing.assert_close(L.cos_theta_cs(lm, lp), ref, rtol=0, atol=1e-10)


def test_helicity_angle_vs_sequential_boosts() -> None:
    """cos θ of the daughter vs explicit boosts lab -> ref rest frame -> parent rest frame."""
    (
        parent,
        other,
    ) = _momenta(300, 200.0), _momenta(300, 200.0)
    ref = parent + other
    d = _momenta(300, 5.0)
    pr, dr = L.boost_to_rest(parent, ref), L.boost_to_rest(d, ref)
    dstar = L.boost_to_rest(dr, pr)
    expect = (_unit(dstar[:, 1:]) * _unit(pr[:, 1:])).sum(-1)
    torch.testing.assert_close(L.cos_theta_helicity(d, parent, ref), expect, rtol=0, atol=1e-9)
    lab = (_unit(L.boost_to_rest(d, parent)[:, 1:]) * _unit(parent[:, 1:])).sum(-1)
    torch.testing.assert_close(L.cos_theta_helicity(d, parent), lab, rtol=0, atol=1e-9)


def test_delta_r_wraps_phi() -> None:
    """ΔR across the ±π seam equals the short way round (definition)."""
    a = L.from_ptetaphim(torch.tensor([[10.0, 0.3, 3.1, 0.0]], dtype=torch.float64))
    b = L.from_ptetaphim(torch.tensor([[20.0, -0.1, -3.1, 1.0]], dtype=torch.float64))
    expect = math.hypot(0.4, 2 * math.pi - 6.2)
    assert L.delta_r(a, b).item() == pytest.approx(expect, rel=1e-9)


def test_boost_preserves_minkowski_products() -> None:
    """Lorentz invariance: dot(Λp, Λq) = dot(p, q) for boosts up to γ ≈ 70 (definition)."""
    p, q = _momenta(300), _momenta(300)
    b = torch.nn.functional.normalize(torch.randn(300, 3, generator=GEN, dtype=torch.float64))
    b = b * (1 - 10 ** (-4 * torch.rand(300, 1, generator=GEN, dtype=torch.float64)))
    scale = p[:, 0] * q[:, 0] / (1 - (b * b).sum(-1))  # rounding grows like γ² E_p E_q
    diff = L.dot(L.boost(p, b), L.boost(q, b)) - L.dot(p, q)
    assert (diff.abs() <= 1e-12 * scale).all()


def test_boost_frame_matches_vector_and_stays_exact_at_large_boost() -> None:
    """boost_frame vs scikit-hep `vector`'s boost_p4 (independent) at moderate γ, and at
    γ ≈ 2e4 the defining property: the frame's own rest-frame vector (m, 0, 0, 0) maps to the
    frame to float64 precision, and back to within the input's rounding amplified by γ."""
    p, frame = _momenta(300), _momenta(300, mmax=200.0)
    frame[:, 0] = torch.sqrt(frame[:, 0] ** 2 + 100.0**2)  # keep every frame massive
    m = L.mass(frame)
    lab = L.boost_frame(p, frame, m)
    ref = _vec(p).boost_p4(_vec(frame))
    for got, want in zip(lab.T, (ref.E, ref.px, ref.py, ref.pz), strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(L.boost_frame(lab, frame, m, to_rest=True).numpy(), p.numpy(),
                               rtol=1e-10, atol=1e-8)
    mass = torch.full((4,), 0.1, dtype=torch.float64)
    pz = torch.tensor([1e3, -1e3, 5e2, 2e3], dtype=torch.float64)
    fast = torch.stack([torch.sqrt(mass**2 + pz**2), 0 * pz, 0 * pz, pz], -1)
    rest = torch.stack([mass, 0 * mass, 0 * mass, 0 * mass], -1)
    np.testing.assert_allclose(L.boost_frame(rest, fast, mass).numpy(), fast.numpy(),
                               rtol=1e-14, atol=1e-12 * 2e3)
    back = L.boost_frame(fast, fast, mass, to_rest=True)
    # the input E itself carries a rounding of eps*E, which the boost amplifies by gamma
    gamma = float((fast[:, 0] / mass).max())
    tol = 4 * gamma * float(fast[:, 0].max()) * torch.finfo(torch.float64).eps
    np.testing.assert_allclose(back.numpy(), rest.numpy(), atol=tol)
