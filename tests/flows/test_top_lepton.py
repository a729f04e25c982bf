"""Tests of unfoldmem.flows.top_lepton: bijectivity, exact Jacobian, physical region, redraws."""

from __future__ import annotations

import math

import pytest
import torch

from tests._support.encoding_checks import (
    F64,
    TT,
    assert_chain_model,
    close_ptetaphi,
    importance_ratios,
    jacobian_check,
    tiny_cinn_configs,
    toy_reco,
    ttbar_partons,
)
from unfoldmem.cards.model import EncodingConfig
from unfoldmem.flows.cinn import CINN
from unfoldmem.flows.lepton_anchored import leptonic_chain
from unfoldmem.flows.parametrization import ResonanceEncoding, decay_tree
from unfoldmem.flows.top_lepton import TopLeptonEncoding
from unfoldmem.physics import lorentz


def _encoding(v: torch.Tensor, **kw: object) -> TopLeptonEncoding:
    res = ResonanceEncoding.fit(v, tree=decay_tree(TT), helicity=True)
    anchor = leptonic_chain(res.tree, TT, res.free_mass, res.fixed_mass, res.fixed_pt)
    return TopLeptonEncoding.fit(v, tree=res.tree, anchor=anchor, helicity=True, **kw)


def _isotropic(m: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(n, 3) unit vectors times m/2: the daughters' momentum of a massless pair at rest."""
    c = 2 * torch.rand(len(m), generator=g, dtype=F64) - 1
    ph = (2 * torch.rand(len(m), generator=g, dtype=F64) - 1) * math.pi
    s = torch.sqrt(1 - c * c)
    return 0.5 * m[:, None] * torch.stack([s * torch.cos(ph), s * torch.sin(ph), c], -1)


def top_chain(n: int, seed: int) -> torch.Tensor:
    """(b, μ⁺, ν) of t → bW, W → μν, massless, with broad masses (m_W = 60 e^{0.3 z} GeV,
    m_t = m_W + 90 e^{0.3 z'} GeV), isotropic decays and a top of random momentum."""
    g = torch.Generator().manual_seed(seed)
    mw = 60.0 * torch.exp(0.3 * torch.randn(n, generator=g, dtype=F64))
    mt = mw + 90.0 * torch.exp(0.3 * torch.randn(n, generator=g, dtype=F64))
    ps = (mt * mt - mw * mw) / (2 * mt)
    d = _isotropic(2 * ps, g)
    w = lorentz.boost_frame(torch.cat([torch.sqrt(ps * ps + mw * mw)[:, None], -d], -1),
                            torch.cat([mt[:, None], torch.zeros(n, 3, dtype=F64)], -1), mt)
    b = torch.cat([ps[:, None], d], -1)
    q = _isotropic(mw, g)
    lep = lorentz.boost_frame(torch.cat([0.5 * mw[:, None], q], -1), w, mw)
    nu = w - lep
    top3 = 80.0 * torch.randn(n, 3, generator=g, dtype=F64)
    top = torch.cat([torch.sqrt((top3 * top3).sum(-1) + mt * mt)[:, None], top3], -1)
    p = lorentz.boost_frame(torch.stack([b, lep, nu], 1), top[:, None], mt[:, None])
    v = lorentz.to_ptetaphim(p)
    v[..., 3] = 0.0
    return v


@pytest.mark.parametrize("kick", [False, True])
def test_round_trip_jacobian_and_lepton_coordinates(kick: bool) -> None:
    """tt̄ → b μν b̄ dū (Σp⃗_T = 0, and kicked transversely): v → x → v to 1e-8, log|det ∂x/∂v|
    against autograd (with Σp_T = 0: of (x, ΣP⃗_T) plus log N(ΣP⃗_T)); the lepton's lab log p_T,
    η, atanh(φ/π) are raw columns exactly; same feature count as the resonance encoding.
    References: the input itself, autograd, the lepton's own (p_T, η, φ)."""
    v = ttbar_partons(600, 11, kick=kick)
    enc = _encoding(v)
    res = ResonanceEncoding.fit(v, tree=decay_tree(TT), helicity=True)
    assert enc.n_features == res.n_features and enc.fixed_pt is (not kick)
    x, ladj = enc(v)
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all()
    total = lorentz.from_ptetaphim(v)[..., 1:3].sum(-2)
    assert close_ptetaphi(enc.inverse(x, transverse=total if enc.fixed_pt else None), v)
    jacobian_check(enc, v)
    raw = x * enc.std + enc.mean
    d = res.n_features - 2 * len(enc.nodes)  # first decay-angle column
    jt, jw = enc.top_node, enc.w_node
    assert torch.allclose(raw[:, d + 2 * jw].exp(), v[:, 1, 0], rtol=1e-12)
    assert torch.allclose(raw[:, d + 2 * jt], v[:, 1, 1], atol=1e-12)
    assert torch.allclose(math.pi * torch.tanh(raw[:, d + 2 * jt + 1]), v[:, 1, 2], atol=1e-9)
    # the other nodes' columns are the resonance encoding's
    xr = res(v)[0] * res.std + res.mean
    keep = [c for c in range(res.n_features) if c not in
            {d + 2 * jt, d + 2 * jt + 1, d + 2 * jw, d + 2 * jw + 1}]
    assert torch.allclose(raw[:, keep], xr[:, keep], atol=1e-10)


def test_outside_the_physical_region_decodes_to_nan() -> None:
    """The lepton's top-frame energy E* = E_ℓ(E_t − p⃗_t·n̂)/m_t must lie in (m_W²/2m_t, m_t/2):
    scaling the lepton's p_T in feature space by a factor moves E* by the same factor, so
    E* × 2/m_t ≥ 1 must give NaN chain partons (and only the chain's), E* inside a finite,
    physical event whose lepton has the requested p_T and whose neutrino is massless; with
    ``clamp=True`` the outside draws decode onto the edge (E* at the nearer limit) and the
    inside ones are unchanged. Reference: E* computed from the decoded top and the requested
    p_T, the partons' masses."""
    v = ttbar_partons(400, 21)
    enc = _encoding(v)
    x = enc(v)[0]
    raw = x * enc.std + enc.mean
    d = enc.n_features - 2 * len(enc.nodes)
    col = d + 2 * enc.w_node
    total = lorentz.from_ptetaphim(v)[..., 1:3].sum(-2)
    top = lorentz.from_ptetaphim(v)[:, [0, 1, 2]].sum(1)
    mt = torch.sqrt(lorentz.mass2(top))
    w = lorentz.from_ptetaphim(v)[:, [1, 2]].sum(1)
    mw = torch.sqrt(lorentz.mass2(w))
    pl = lorentz.from_ptetaphim(v)[:, 1]
    es = (top[:, 0] * pl[:, 0] - (top[:, 1:] * pl[:, 1:]).sum(-1)) / mt
    for f in (0.5, 0.9, 1.1, 1.6, 2.5):
        r = raw.clone()
        r[:, col] = r[:, col] + math.log(f)
        out = enc.inverse((r - enc.mean) / enc.std, transverse=total)
        inside = (f * es > mw * mw / (2 * mt)) & (f * es < mt / 2)
        ok = torch.isfinite(out).all(-1).all(-1)
        assert torch.equal(ok, inside)
        assert torch.isfinite(out[:, 3:]).all()  # the hadronic top is untouched
        assert torch.allclose(out[ok][:, 1, 0], f * v[ok][:, 1, 0], rtol=1e-10)
        edge = enc.inverse((r - enc.mean) / enc.std, transverse=total, clamp=True)
        assert torch.isfinite(edge).all() and torch.equal(edge[ok], out[ok])
        lim = torch.where(f * es >= mt / 2, mt / 2, mw * mw / (2 * mt))[~ok]
        pe = lorentz.from_ptetaphim(edge[~ok])
        te, le = pe[:, :3].sum(1), pe[:, 1]
        es_edge = (te[:, 0] * le[:, 0] - (te[:, 1:] * le[:, 1:]).sum(-1)) / mt[~ok]
        assert torch.allclose(es_edge, lim, rtol=1e-5)
        nu = lorentz.from_ptetaphim(out[ok])[:, 2]
        assert float(lorentz.mass2(nu).abs().max()) < 1e-6 * float((nu[:, 0] ** 2).max())
    assert 0 < int(inside.sum()) < len(v)  # f = 2.5: some events in, some out


def test_density_is_exact_on_the_physical_region() -> None:
    """For features x ~ N(0, 0.5²) the encoded density ∫ N(x(v)) exp(ladj(v)) dv over the 9
    physical (p_T, η, φ) of b μ ν (top chain as a free root, broad masses) equals the
    probability that such an x decodes to a physical event (the flow's mass outside the region
    is lost, none is double counted). Two independent estimates: importance sampling in
    (p_T, η, φ) from a proposal unrelated to the encoding (log-normal p_T, normal η, uniform
    φ), and the fraction of finite decodings of N(0, 0.5²) draws; equal within 4σ."""
    v = top_chain(4000, 31)
    enc = TopLeptonEncoding.fit(v, tree=[[0, [1, 2]]], anchor=(1, 2, 0), helicity=True)
    assert not enc.fixed_pt
    n = 2_000_000
    r = importance_ratios(enc, n, 32, 3, pt0=50.0, s_lpt=0.9, s_eta=1.4)
    assert torch.isfinite(r).all()
    mean, err = float(r.mean()), float(r.std()) / math.sqrt(n)
    g = torch.Generator().manual_seed(33)
    z = 0.5 * torch.randn(400_000, enc.n_features, generator=g, dtype=F64)
    phys = torch.isfinite(enc.inverse(z)).all(-1).all(-1).double()
    frac, ferr = float(phys.mean()), float(phys.std()) / math.sqrt(len(phys))
    assert err < 0.03 and 0.05 < frac < 0.95
    assert abs(mean - frac) < 4 * math.hypot(err, ferr)


def test_sample_partons_redraws_outside_the_region() -> None:
    """An untrained tiny cINN with ``leptonic_chain: top_lepton`` puts a large share of its
    draws outside the physical region: sample_partons returns only finite partons, each a
    decoding of some flow draw for its own event (its chain is physical: massless ν); where
    only 1 draw in 500 is physical the doubling rounds still fill every slot (no warning); where
    every draw is unphysical the draws are moved onto the region's edge with a warning (lepton
    top-frame energy inside [m_W²/2m_t, m_t/2], from the decoded partons); CINNChannel (MEM)
    refuses the model."""
    from unfoldmem.mem.cinn_channel import CINNChannel

    v = ttbar_partons(300, 41)
    reco, mask = toy_reco(v, 3.0)
    model = CINN.from_data(v, reco, mask, encoding=EncodingConfig(leptonic_chain="top_lepton"),
                           pdg=TT, **tiny_cinn_configs())
    assert isinstance(model.parton_encoding, TopLeptonEncoding)
    torch.manual_seed(0)
    first = model.parton_encoding.inverse(model.flow.sample_many(64, model.context(reco[:8],
                                                                                 mask[:8])))
    assert float((~torch.isfinite(first).all(-1).all(-1)).double().mean()) > 0.05
    s = model.sample_partons(64, reco[:8], mask[:8])
    assert s.shape == (64, 8, 6, 4) and torch.isfinite(s).all()
    nu = lorentz.from_ptetaphim(s)[..., 2, :]
    assert float(lorentz.mass2(nu).abs().max()) < 1e-6 * float((nu[..., 0] ** 2).max())
    inv = model.parton_encoding.inverse

    def never(x: torch.Tensor, transverse: object = None, clamp: bool = False) -> torch.Tensor:
        out = inv(x, clamp=clamp)
        return out if clamp else torch.full_like(out, math.nan)

    def rare(x: torch.Tensor, transverse: object = None, clamp: bool = False) -> torch.Tensor:
        out = inv(x, clamp=clamp)
        keep = torch.frac(1000 * x[..., 0].double().abs()) < 0.002  # P ≈ 0.002 per draw
        return torch.where(keep[..., None, None], out, math.nan)

    # physical draws 1 in 500: the rounds double their size until every slot is filled
    model.parton_encoding.inverse = rare
    s = model.sample_partons(4, reco[:3], mask[:3])
    assert torch.isfinite(s).all()
    model.parton_encoding.inverse = never
    with pytest.warns(RuntimeWarning, match="moved onto its edge"):
        edge = model.sample_partons(4, reco[:2], mask[:2])
    model.parton_encoding.inverse = inv
    assert torch.isfinite(edge).all()
    p = lorentz.from_ptetaphim(edge)
    top, lep = p[..., [0, 1, 2], :].sum(-2), p[..., 1, :]
    mt = torch.sqrt(lorentz.mass2(top))
    es = (top[..., 0] * lep[..., 0] - (top[..., 1:] * lep[..., 1:]).sum(-1)) / mt
    mw2 = lorentz.mass2(p[..., 1, :] + p[..., 2, :])
    assert bool(((es >= mw2 / (2 * mt) * (1 - 1e-6)) & (es <= mt / 2 * (1 + 1e-6))).all())
    with pytest.raises(ValueError, match="top_lepton"):
        CINNChannel(model)


def test_cinn_card_option_and_model_dir_round_trip(tmp_path: object) -> None:
    """``encoding.leptonic_chain: top_lepton``: CINN.from_data builds the encoding for tt̄'s
    leptonic top, log_prob_partons = flow density + encoding Jacobian, samples are finite, the
    sampler exports as TorchScript (NaN rows where the eager sampler has them), a model
    directory saves and reloads it (``top_lepton`` key); Drell–Yan has no top chain and keeps
    the resonance encoding."""
    d = assert_chain_model("top_lepton", TopLeptonEncoding, 43, tmp_path)  # type: ignore[arg-type]
    assert d["top_lepton"] == [1, 2, 0]
    dy = ttbar_partons(300, 44)[:, 1:3].clone()
    plain = CINN.from_data(dy, *toy_reco(dy), encoding=EncodingConfig(leptonic_chain="top_lepton"),
                           pdg=[13, -13], **tiny_cinn_configs())
    assert type(plain.parton_encoding) is ResonanceEncoding
