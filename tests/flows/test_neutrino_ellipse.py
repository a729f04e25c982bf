"""Tests of unfoldmem.flows.neutrino_ellipse: the ν ellipse, bijectivity, exact Jacobian, density."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests._support.encoding_checks import (
    F64,
    TT,
    assert_chain_model,
    close_ptetaphi,
    jacobian_check,
    tiny_cinn_configs,
    toy_reco,
    ttbar_partons,
    w_jet,
)
from unfoldmem.cards.model import EncodingConfig
from unfoldmem.flows.cinn import CINN
from unfoldmem.flows.lepton_anchored import LeptonAnchoredEncoding
from unfoldmem.flows.neutrino_ellipse import (
    SIGMA2,
    NeutrinoEllipseEncoding,
    ellipse_coordinates,
    ellipse_neutrino,
)
from unfoldmem.flows.parametrization import decay_tree, parton_encoding_from_dict
from unfoldmem.physics import lorentz


def _rot(axis: int, angle: float) -> np.ndarray:
    """Rotation about x, y or z (0, 1, 2), as in Betchart et al.'s reference code."""
    c, s = math.cos(angle), math.sin(angle)
    r = c * np.eye(3)
    for i in (-1, 0, 1):
        r[(axis - i) % 3, (axis + i) % 3] = i * s + (1 - i * i)
    return r


def _betchart_h(b: np.ndarray, mu: np.ndarray, mw2: float, mt2: float) -> np.ndarray:
    """The 3×3 H of arXiv:1305.1878 (lab frame), ν⃗(t) = H (cos t, sin t, 1), for
    massless b, μ and ν (independent of the module's construction)."""
    pb, pm = np.linalg.norm(b[1:]), np.linalg.norm(mu[1:])
    c = float(b[1:] @ mu[1:]) / (pb * pm)
    s = math.sqrt(1 - c * c)
    x0p, x0 = -(mt2 - mw2) / (2 * b[0]), -mw2 / (2 * mu[0])
    sx = x0  # β_μ = 1: (x0 β − |p|(1 − β²))/β²
    sy = (x0p - c * sx) / s
    w = (1 - c) / s
    om2 = w * w
    x1, y1 = sx - (sx + w * sy) / om2, sy - (sx + w * sy) * w / om2
    z2 = x1 * x1 * om2 - (sy - w * sx) ** 2 - (mw2 - x0 * x0)
    z, om = math.sqrt(max(z2, 0.0)), math.sqrt(om2)
    h_tilde = np.array([[z / om, 0, x1 - pm], [w * z / om, 0, y1], [0, z, 0]])
    rz = _rot(2, -math.atan2(mu[2], mu[1]))
    ry = _rot(1, 0.5 * math.pi - math.acos(mu[3] / pm))
    bx = ry @ rz @ b[1:]
    rx = _rot(0, -math.atan2(bx[2], bx[1]))
    return rz.T @ ry.T @ rx.T @ h_tilde


def _four(v: torch.Tensor) -> torch.Tensor:
    return lorentz.from_ptetaphim(v)


def test_solutions_are_betchart_ellipse() -> None:
    """Every point of Betchart et al.'s ellipse (independent construction, reference code of
    arXiv:1305.1878) has coordinates s_W = log m_W², y_t = m_t² + σ² log(1 − e^{−K/σ²}), K =
    m_t² − m_W² − m²(bℓ), and an
    angle t from which ellipse_neutrino gives it back (1e-9): the two solution sets agree.
    Reference: the paper's H matrix."""
    v = ttbar_partons(40, 21)
    p = _four(v)
    mw2, mt2 = 80.4**2, 172.5**2
    ts = torch.linspace(-3.1, 3.1, 13, dtype=F64)
    n_ok = 0
    for i in range(v.shape[0]):
        pl, pb = p[i, 1], p[i, 0]
        mbl2 = float(lorentz.mass2(pl + pb))
        if mt2 - mw2 - mbl2 <= 1.0:
            continue
        h = torch.as_tensor(_betchart_h(pb.numpy(), pl.numpy(), mw2, mt2))
        nu3 = (h @ torch.stack([ts.cos(), ts.sin(), torch.ones_like(ts)]))
        nu = torch.cat([torch.linalg.vector_norm(nu3, dim=0)[None], nu3]).T
        assert torch.allclose(lorentz.mass2(pl + nu), torch.full_like(ts, mw2), rtol=1e-9)
        s_w, y_t, t, _ = ellipse_coordinates(pl.expand(13, 4), pb.expand(13, 4), nu)
        assert torch.allclose(s_w, torch.full_like(ts, math.log(mw2)), atol=1e-9)
        y_ref = mt2 + SIGMA2 * math.log(-math.expm1(-(mt2 - mw2 - mbl2) / SIGMA2))
        assert torch.allclose(y_t, torch.full_like(ts, y_ref), rtol=1e-9)
        back = ellipse_neutrino(pl.expand(13, 4), pb.expand(13, 4), s_w, y_t, t)
        assert torch.allclose(back, nu, rtol=1e-9, atol=1e-9 * float(nu[:, 0].max()))
        n_ok += 1
    assert n_ok >= 10


@pytest.mark.parametrize("m_lep", [0.0, 0.10566])
def test_every_coordinate_is_a_solution(m_lep: float) -> None:
    """Onto: any real (s_W, y_t, t) decodes to a finite massless ν of positive energy (also
    far outside the physical values); near them (the lab-frame dot products of the check lose
    precision beyond) 2ℓ·ν = e^{s_W} and 2b·ν = K with y_t = m_t² − K + K' + σ² log(1 −
    e^{−K'/σ²}), K' = K/(1 − K/K_max), to 1e-9, and ν encodes back to the same coordinates; the
    closed-form log|det ∂(s_W, y_t, t)/∂p⃗_ν| equals torch.func's (vmap of jacfwd).
    References: the two constraints; forward-mode autodiff."""
    g = torch.Generator().manual_seed(22)
    v = ttbar_partons(300, 23)
    v[..., 1, 3] = m_lep
    p = _four(v)
    pl, pb, n = p[:, 1], p[:, 0], p.shape[0]
    t = (2 * torch.rand(n, generator=g, dtype=F64) - 1) * math.pi
    wild = 2 * torch.rand(n, 2, generator=g, dtype=F64) - 1
    nu = ellipse_neutrino(pl, pb, 8.8 + 15 * wild[:, 0], 3e4 * (1 + 30 * wild[:, 1]), t,
                          m_lep**2)
    assert torch.isfinite(nu).all() and (nu[:, 0] > 0).all()
    assert torch.allclose(lorentz.mass2(nu) / nu[:, 0] ** 2, torch.zeros(n, dtype=F64),
                          atol=1e-9)
    s_w = math.log(6400.0) + 0.1 * torch.randn(n, generator=g, dtype=F64).clamp(-6, 6)
    y_t = 3e4 + 1e3 * torch.randn(n, generator=g, dtype=F64).clamp(-6, 6)
    nu = ellipse_neutrino(pl, pb, s_w, y_t, t, m_lep**2)
    assert torch.allclose(2 * lorentz.dot(pl, nu), s_w.exp(), rtol=1e-9)
    k = 2 * lorentz.dot(pb, nu)
    kp = k / (1 - k * m_lep**2 / (2 * lorentz.dot(pb, pl) * s_w.exp()))
    mt2 = lorentz.mass2(pl + pb + nu)
    ref = mt2 - k + kp + SIGMA2 * torch.log(-torch.expm1(-kp / SIGMA2))
    assert torch.allclose(y_t, ref, rtol=1e-9)
    s_w2, y_t2, t2, ladj = ellipse_coordinates(pl, pb, nu, m_lep**2)
    assert torch.allclose(s_w2, s_w, atol=1e-9)
    assert torch.allclose(y_t2, y_t, rtol=1e-9)
    assert torch.allclose(lorentz.delta_phi(t2, t), torch.zeros(n, dtype=F64), atol=1e-9)

    def f(p3: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        pn = torch.cat([torch.linalg.vector_norm(p3, dim=-1, keepdim=True), p3], -1)
        return torch.stack(ellipse_coordinates(a, b, pn, m_lep**2)[:3], -1)

    jac = torch.func.vmap(torch.func.jacfwd(f))(nu[:, 1:], pl, pb)
    assert torch.allclose(ladj, torch.linalg.slogdet(jac)[1], atol=1e-8)


@pytest.mark.parametrize("case", ["ttbar", "ttbar_kick", "ttbar_muon_mass"])
def test_round_trip_jacobian_and_chain_coordinates(case: str) -> None:
    """v -> x -> v to 1e-8 and log|det ∂x/∂v| against autograd (float64; with Σp_T = 0 the
    Jacobian of (x, ΣP⃗_T) plus log N(ΣP⃗_T)). References: the input itself; autograd; the
    chain's raw coordinates are the lepton's and the b's lab (log p_T, η, atanh(φ/π)), then
    s_W = log(m_W² − m_ℓ²) and y_t = m_t² − K + K' + σ² log(1 − e^{−K'/σ²}), K' = K/(1 −
    K/K_max), from
    the invariants K = m_t² − m_W² − m²(bℓ) + m_ℓ², K_max = 2 b·ℓ (m_W² − m_ℓ²)/m_ℓ²; same
    feature count as the resonance encoding."""
    v = ttbar_partons(600, 24, kick=case == "ttbar_kick")
    m_lep = 0.10566 if case == "ttbar_muon_mass" else 0.0
    v[..., 1, 3] = m_lep
    enc = NeutrinoEllipseEncoding.fit(v, tree=decay_tree(TT), anchor=(1, 2, 0), helicity=True)
    assert enc.fixed_pt is (case != "ttbar_kick")
    assert enc.n_features == (16 if enc.fixed_pt else 18)
    x, ladj = enc(v)
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all()
    total = _four(v)[..., 1:3].sum(-2)
    assert close_ptetaphi(enc.inverse(x, transverse=total if enc.fixed_pt else None), v)
    jacobian_check(enc, v)
    raw = x * enc.std + enc.mean
    at = 1 if enc.fixed_pt else 3
    for k, slot in enumerate((1, 0)):
        assert torch.allclose(raw[:, at + 3 * k].exp(), v[:, slot, 0], rtol=1e-12)
        assert torch.allclose(raw[:, at + 3 * k + 1], v[:, slot, 1], atol=1e-12)
        assert torch.allclose(torch.tanh(raw[:, at + 3 * k + 2]) * math.pi, v[:, slot, 2],
                              atol=1e-9)
    p = _four(v)
    w, m2l = p[:, 1] + p[:, 2], m_lep**2
    assert torch.allclose(raw[:, at + 6].exp(), lorentz.mass2(w) - m2l, rtol=1e-9)
    mt2 = lorentz.mass2(w + p[:, 0])
    k = kp = mt2 - lorentz.mass2(w) - lorentz.mass2(p[:, 1] + p[:, 0]) + m2l
    if m_lep:
        kp = k / (1 - k / (2 * lorentz.dot(p[:, 0], p[:, 1]) * (lorentz.mass2(w) - m2l) / m2l))
    ref = mt2 - k + kp + SIGMA2 * torch.log(-torch.expm1(-kp / SIGMA2))
    assert torch.allclose(raw[:, at + 7], ref, rtol=1e-9)


def test_density_normalised_importance() -> None:
    """∫ p(s_W, y_t, t) ds_W dy_t dt = 1 for a density p in the neutrino's coordinates
    (Gaussian s_W about log 80², Gaussian K' = y_t − m_t² + K about 3 000 GeV², uniform t), as
    ∫ p(x(ν)) |∂x/∂p⃗_ν| d³p_ν by importance sampling from an independent ν density
    (isotropic, log-normal |p⃗|) at fixed ℓ and b: checks the Jacobian and that the ellipse
    coordinates cover each value once. Reference: normalisation (1) within 4σ of the MC error.
    (The full encoding's Jacobian is checked against autograd above.)"""
    n = 400_000
    g = torch.Generator().manual_seed(28)
    pl = torch.tensor([50.0, 30.0, 40.0, 0.0], dtype=F64)
    pb = torch.tensor([0.0, -20.0, 30.0, 60.0], dtype=F64)
    pb[0] = torch.linalg.vector_norm(pb[1:])
    lp = math.log(60.0) + 0.8 * torch.randn(n, generator=g, dtype=F64)
    c = 2 * torch.rand(n, generator=g, dtype=F64) - 1
    ph = (2 * torch.rand(n, generator=g, dtype=F64) - 1) * math.pi
    s = torch.sqrt(1 - c * c)
    nu = lp.exp()[:, None] * torch.stack([torch.ones_like(c), s * ph.cos(), s * ph.sin(), c], -1)
    # d³p = |p|² d|p| dΩ
    log_g = (-0.5 * ((lp - math.log(60.0)) / 0.8) ** 2 - math.log(0.8 * math.sqrt(2 * math.pi))
             - 3 * lp - math.log(4 * math.pi))
    s_w, y_t, _, ladj = ellipse_coordinates(pl.expand(n, 4), pb.expand(n, 4), nu)
    k_ref = y_t - lorentz.mass2(pl + pb) - s_w.exp() - 3000.0
    log_p = (-0.5 * ((s_w - math.log(6400.0)) / 0.3) ** 2 - 0.5 * (k_ref / 1000.0) ** 2
             - math.log(0.3 * 1000.0 * 2 * math.pi) - math.log(2 * math.pi))
    r = torch.exp(log_p + ladj - log_g)
    mean, err = r.mean(), r.std() / math.sqrt(n)
    assert err < 0.03
    assert abs(float(mean) - 1.0) < 4 * float(err)


def test_card_option_model_dir_and_export(tmp_path: object) -> None:
    """``encoding.leptonic_chain: ellipse``: CINN.from_data builds the ellipse chain for tt̄
    (hadronic top with helicity angles), log_prob_partons = flow density + encoding Jacobian,
    the sampler exports as TorchScript (reference: the eager sampler), a model directory saves
    and reloads it (``"leptonic_chain": "ellipse"`` in encoding.json); a W → ℓν without a top
    gets the lepton-anchored chain; the class refuses a chain without b."""
    d = assert_chain_model("ellipse", NeutrinoEllipseEncoding, 26, tmp_path)  # type: ignore[arg-type]
    assert d["leptonic_chain"] == "ellipse" and d["lepton_anchored"] == [1, 2, 0]
    assert type(parton_encoding_from_dict(d)) is NeutrinoEllipseEncoding

    wj = w_jet(300, 27, kick=False)
    only_w = CINN.from_data(wj, *toy_reco(wj, 3.0), encoding=EncodingConfig(leptonic_chain="ellipse"),
                            pdg=[-13, 14, 1], **tiny_cinn_configs())
    assert type(only_w.parton_encoding) is LeptonAnchoredEncoding
    with pytest.raises(ValueError, match="no t → bW"):
        NeutrinoEllipseEncoding.fit(wj, tree=[[[0, 1], 2]], anchor=(0, 1, -1))
