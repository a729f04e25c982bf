"""Tests of unfoldmem.flows.lepton_anchored: chain choice, bijectivity, exact Jacobian, density."""

from __future__ import annotations

import math

import pytest
import torch

from tests._support.encoding_checks import (
    F64,
    TT,
    assert_chain_model,
    assert_normalised,
    close_ptetaphi,
    jacobian_check,
    tiny_cinn_configs,
    toy_reco,
    ttbar_partons,
    w_jet,
)
from unfoldmem.cards.model import EncodingConfig
from unfoldmem.flows.cinn import CINN
from unfoldmem.flows.lepton_anchored import LeptonAnchoredEncoding, leptonic_chain
from unfoldmem.flows.parametrization import (
    ResonanceEncoding,
    decay_tree,
    parton_encoding_from_dict,
)
from unfoldmem.physics import lorentz


def test_leptonic_chain_from_tree_and_pdg() -> None:
    """The chain (ℓ, ν, b) is found from the decay tree and PDG ids where it can be anchored:
    tt̄ with the tops as roots or as children of the Σp_T = 0 root; W → ℓν as a root (b = −1);
    none for Drell–Yan, an all-hadronic W, a W that is itself the Σp_T = 0 root, or a lepton
    with a free mass. Reference: the slot layout of the PDG ids."""
    free, fixed = [False] * 6, [0.0] * 6
    tt = decay_tree(TT)
    assert leptonic_chain(tt, TT, free, fixed, False) == (1, 2, 0)
    assert leptonic_chain([[tt[0], tt[1]]], TT, free, fixed, True) == (1, 2, 0)
    assert leptonic_chain([[0, 1], 2], [-13, 14, 1], free[:3], fixed[:3], False) == (0, 1, -1)
    assert leptonic_chain([[[0, 1], 2]], [-13, 14, 1], free[:3], fixed[:3], True) == (0, 1, -1)
    assert leptonic_chain([[0, 1]], [-13, 14], free[:2], fixed[:2], True) is None
    assert leptonic_chain([[0, 1]], [13, -13], free[:2], fixed[:2], False) is None
    assert leptonic_chain([[0, 1]], [1, -2], free[:2], fixed[:2], False) is None
    assert leptonic_chain(tt, TT, [False, True, *free[2:]], fixed, False) is None


@pytest.mark.parametrize("case", ["ttbar", "ttbar_kick", "ttbar_muon_mass", "w_jet",
                                  "w_jet_kick"])
def test_round_trip_jacobian_and_chain_coordinates(case: str) -> None:
    """v -> x -> v to 1e-8 and log|det ∂x/∂v| against autograd (float64; with Σp_T = 0 the
    Jacobian of (x, ΣP⃗_T) plus log N(ΣP⃗_T)). References: the input itself; autograd; the
    chain's raw coordinates are the lepton's lab (log p_T, η, atanh(φ/π)) and the exact
    invariants s_W = log(m_W² − m_ℓ²), s_t = log(m_t² − m_W²); same feature count as the
    resonance encoding of the tree."""
    if case.startswith("ttbar"):
        v = ttbar_partons(600, 11, kick=case == "ttbar_kick")
        if case == "ttbar_muon_mass":
            v[..., 1, 3] = 0.10566
        pdg, lep, nu, bq = TT, 1, 2, 0
    else:
        v = w_jet(600, 12, kick=case == "w_jet_kick")
        pdg, lep, nu, bq = [-13, 14, 1], 0, 1, -1
    res = ResonanceEncoding.fit(v, tree=decay_tree(pdg), helicity=True)
    anchor = leptonic_chain(res.tree, pdg, res.free_mass, res.fixed_mass, res.fixed_pt)
    assert anchor == (lep, nu, bq)
    enc = LeptonAnchoredEncoding.fit(v, tree=res.tree, anchor=anchor, helicity=True)
    assert enc.fixed_pt is (case in ("ttbar", "ttbar_muon_mass", "w_jet"))
    assert enc.n_features == res.n_features
    x, ladj = enc(v)
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all()
    assert torch.allclose(x.mean(0), torch.zeros(enc.n_features, dtype=F64), atol=1e-8)
    total = lorentz.from_ptetaphim(v)[..., 1:3].sum(-2)
    assert close_ptetaphi(enc.inverse(x, transverse=total if enc.fixed_pt else None), v)
    jacobian_check(enc, v)
    raw = x * enc.std + enc.mean
    at = 1 if enc.fixed_pt else 3 * (len(enc.roots) - 1)
    assert torch.allclose(raw[:, at].exp(), v[:, lep, 0], rtol=1e-12)
    assert torch.allclose(raw[:, at + 1], v[:, lep, 1], atol=1e-12)
    assert torch.allclose(torch.tanh(raw[:, at + 2]) * math.pi, v[:, lep, 2], atol=1e-9)
    p = lorentz.from_ptetaphim(torch.cat([v[..., :3], enc.fixed_mass.expand(v.shape[:-1])[
        ..., None]], -1))
    w = p[:, lep] + p[:, nu]
    m2l = enc.fixed_mass[lep] ** 2
    assert torch.allclose(raw[:, at + 3].exp(), lorentz.mass2(w) - m2l, rtol=1e-9)
    if bq >= 0:
        t = w + p[:, bq]
        assert torch.allclose(raw[:, at + 6].exp(), lorentz.mass2(t) - lorentz.mass2(w),
                              rtol=1e-9)


def test_jacobian_off_the_zero_pt_surface() -> None:
    """An encoding fitted on Σp_T = 0 events, evaluated on kicked ones (the MEM's proposal
    density is evaluated off the surface): Jacobian against autograd, round trip with their
    own ΣP⃗_T."""
    enc = LeptonAnchoredEncoding.fit(ttbar_partons(300, 13), tree=decay_tree(TT),
                                     anchor=(1, 2, 0), helicity=True)
    assert enc.fixed_pt
    v = ttbar_partons(50, 14, kick=True)
    jacobian_check(enc, v)
    total = lorentz.from_ptetaphim(v)[..., 1:3].sum(-2)
    assert close_ptetaphi(enc.inverse(enc(v)[0], transverse=total), v)


@pytest.mark.parametrize("case", ["w_root", "w_jet_fixed_pt"])
def test_density_normalised_importance(case: str) -> None:
    """The encoded density is normalised in the partons' (p_T, η, φ): a W → μν root (6
    dimensions, free p⃗_T) and μ ν d with Σp_T = 0 (9 dimensions: the jet from the p⃗_T balance
    and the root's rapidity, ΣP⃗_T ~ N(0, 25² GeV²)); a broad (60 e^{0.3 z} GeV) W mass, so that
    the proposal covers the mass coordinate. Reference: normalisation (1) by
    importance sampling within 4σ of its MC error."""
    if case == "w_root":
        v = w_jet(3000, 15, kick=True, wide=True)[:, :2]
        enc = LeptonAnchoredEncoding.fit(v, tree=[[0, 1]], anchor=(0, 1, -1))
        assert not enc.fixed_pt
        assert_normalised(enc)
    else:
        v = w_jet(3000, 16, kick=False, wide=True)
        enc = LeptonAnchoredEncoding.fit(v, tree=[[0, 1], 2], anchor=(0, 1, -1),
                                         pt_sigma=25.0)
        assert enc.fixed_pt and enc.split == 2
        assert_normalised(enc, 1_000_000, k=3, pt0=40.0, s_lpt=0.7, s_eta=1.5)


def test_cinn_card_option_and_model_dir_round_trip(tmp_path: object) -> None:
    """``encoding.leptonic_chain: lepton`` of the model card: CINN.from_data anchors tt̄'s leptonic
    top (helicity angles kept for the hadronic one), leaves Drell–Yan (no such chain) with the
    resonance encoding, and log_prob_partons = flow density + encoding Jacobian; the sampler
    exports as TorchScript (reference: the eager sampler); a model directory saves and
    reloads it; a dict without the key (every model saved before) is the
    plain resonance encoding; the option is refused with other coordinates."""
    d = assert_chain_model("lepton", LeptonAnchoredEncoding, 17, tmp_path)  # type: ignore[arg-type]
    dy = ttbar_partons(300, 18)[:, 1:3].clone()
    plain = CINN.from_data(dy, *toy_reco(dy), encoding=EncodingConfig(leptonic_chain="lepton"),
                           pdg=[13, -13], **tiny_cinn_configs())
    assert type(plain.parton_encoding) is ResonanceEncoding
    assert d["lepton_anchored"] == [1, 2, 0]
    d.pop("lepton_anchored")
    assert type(parton_encoding_from_dict(d)) is ResonanceEncoding
    with pytest.raises(ValueError, match="leptonic_chain"):
        EncodingConfig(parton_coordinates="onshell", leptonic_chain="lepton")
