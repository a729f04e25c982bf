"""Tests of unfoldmem.flows.onshell: bijectivity, exact Jacobians, normalisation, model use."""

from __future__ import annotations

import math

import pytest
import torch

from tests._support.encoding_checks import (
    TT,
    assert_normalised,
    close_ptetaphi,
    dilepton,
    jacobian_check,
    toy_reco,
    ttbar_partons,
)
from unfoldmem.cards.model import EncodingConfig, FlowConfig, ModelCard
from unfoldmem.flows.cinn import CINN
from unfoldmem.flows.decay_tree import decay_tree, invisible_slots, orient_tree
from unfoldmem.flows.model_dir import data_hash, load_model, save_model
from unfoldmem.flows.onshell import OnShellEncoding
from unfoldmem.physics import lorentz

F64 = torch.float64


def _tt_encoding(v: torch.Tensor) -> OnShellEncoding:
    return OnShellEncoding.fit(v, tree=orient_tree(decay_tree(TT), TT),
                               invisible=invisible_slots(TT))


def test_orient_tree_puts_lepton_first_and_neutrino_second() -> None:
    """Reference: the decay chains of the PDG ids (ν second in its W; the ℓ's top first)."""
    pdg = [5, 2, -1, -5, -14, 13]  # hadronic top first, ν̄ before μ⁻ in slot order
    assert decay_tree(pdg) == [[0, [1, 2]], [3, [4, 5]]]
    assert orient_tree(decay_tree(pdg), pdg) == [[3, [5, 4]], [0, [1, 2]]]
    assert invisible_slots(pdg) == [4]


@pytest.mark.parametrize("case", ["ttbar", "ttbar_kick", "dilepton", "dilepton_kick"])
def test_round_trip(case: str) -> None:
    """v -> x -> v to 1e-8 (float64); reference: the input itself. With Σp_T = 0 the decoder
    gets the true (P_x, P_y) back. The lepton's log p_T and the masses are coordinates exactly."""
    v = {"ttbar": lambda: ttbar_partons(1500), "ttbar_kick": lambda: ttbar_partons(1500, 1, True),
         "dilepton": lambda: dilepton(1500, 2, False), "dilepton_kick": lambda: dilepton(1500)}[
        case]()
    enc = _tt_encoding(v) if case.startswith("ttbar") else OnShellEncoding.fit(v, tree=[[0, 1]])
    assert enc.fixed_pt == (case in ("ttbar", "dilepton"))
    x, ladj = enc(v)
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all()
    total = lorentz.from_ptetaphim(v)[..., 1:3].sum(-2)
    assert close_ptetaphi(enc.inverse(x, transverse=total if enc.fixed_pt else None), v)
    raw = x * enc.std + enc.mean
    if case.startswith("ttbar"):
        assert torch.allclose(raw[:, 0], v[:, 1, 0].log(), rtol=1e-12)  # μ⁺: lab log p_T
        m_w = lorentz.mass(lorentz.from_ptetaphim(v[:, 1:3]).sum(1))
        s = raw[:, -len(enc.massed):]
        assert torch.allclose(s[:, 0].exp(), m_w**2, rtol=1e-9)  # first node: W⁺, log m_W²
    else:
        m = lorentz.mass(lorentz.from_ptetaphim(v).sum(1))
        assert torch.allclose(raw[:, -1].exp(), m**2, rtol=1e-9)


@pytest.mark.parametrize("kick", [False, True])
def test_log_jacobian_matches_autograd_ttbar(kick: bool) -> None:
    """log|det ∂x/∂v| over the 18 (pt, η, φ) vs autograd; with Σp_T = 0 that of (x, ΣP⃗_T)
    plus log N(ΣP⃗_T; 0, σ²). Covers lab leaves, bottom-up (lab and relative to the lepton),
    the top-down hadronic top and its anchor, on and off the Σp_T = 0 surface."""
    enc = _tt_encoding(ttbar_partons(300, 3, kick))
    assert enc.fixed_pt is not kick
    assert {s[0] for s in enc.steps} == ({"leaf", "rel", "bu"} | ({"anchor", "td"} if not kick
                                                                   else set()))
    jacobian_check(enc, ttbar_partons(20, 4, kick=True), rows=3)


def test_log_jacobian_free_mass_primary_and_dilepton_top_down() -> None:
    """A massive (free-mass) primary: Jacobian over (pt, η, φ, m) vs autograd; the lepton
    pair with Σp_T = 0 (top-down from the pair's (y, m²)) vs autograd."""
    v = dilepton(300, 4)
    g = torch.Generator().manual_seed(6)
    v[:, 0, 3] = 1.0 + 5.0 * torch.rand(300, generator=g, dtype=F64)
    enc = OnShellEncoding.fit(v, tree=[[0, 1]])
    assert enc.free_index == [0] and enc.n_features == 7
    assert close_ptetaphi(enc.inverse(enc(v)[0]), v)
    jacobian_check(enc, v, rows=3)
    enc = OnShellEncoding.fit(dilepton(300, 5, kick=False), tree=[[0, 1]])
    assert [s[0] for s in enc.steps] == ["anchor", "td"]
    jacobian_check(enc, dilepton(10, 6), rows=3)


@pytest.mark.parametrize("kick", [True, False])
def test_density_normalised_importance(kick: bool) -> None:
    """∫ N(x(v); 0, 0.5²) exp(ladj(v)) dv = 1 over the 6 (pt, η, φ) of a lepton pair (one
    invisible), free pair p_T or Σp_T = 0 with pt_sigma = 12 GeV; reference: normalisation (1)
    within 4σ of the importance-sampling error (independent log-normal/Gaussian proposal)."""
    v = dilepton(4000, 7, kick=kick, wide=True)
    enc = OnShellEncoding.fit(v, tree=[[0, 1]], pt_sigma=12.0, invisible=[1])
    assert enc.fixed_pt is not kick
    assert_normalised(enc)


def test_tree_without_massless_child_is_refused() -> None:
    """Two massive partons cannot be solved from a direction and a mass: a clear ValueError."""
    v = dilepton(50, 1)
    v[..., 3] = 5.0 + torch.rand(50, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    with pytest.raises(ValueError, match="no massless parton child"):
        OnShellEncoding.fit(v, tree=[[0, 1]])


def test_cinn_onshell_model_dir_round_trip_and_card(tmp_path: object) -> None:
    """CINN.from_data with parton_coordinates onshell: log_prob_partons = flow density +
    encoding Jacobian; samples have P⃗_T ~ N(0, 1 GeV²); a model directory reloads it; the
    card refuses relative_phi with onshell."""
    v = dilepton(256, 9, kick=False)
    reco, mask = toy_reco(v)
    cond = ModelCard(name="c", condition={"embed": 4, "hidden": [4], "context": 2}).condition
    model = CINN.from_data(v, reco, mask, flow=FlowConfig(transforms=2, hidden=[8]),
                           condition=cond,
                           encoding=EncodingConfig(parton_coordinates="onshell"), pdg=[13, -13])
    enc = model.parton_encoding
    assert isinstance(enc, OnShellEncoding) and enc.tree == [[0, 1]] and enc.n_features == 4
    x, ladj = enc(v)
    ref = model(reco, mask).log_prob(x.float()).double() + ladj
    assert torch.allclose(model.log_prob_partons(v, reco, mask), ref)
    s = model.sample_partons(400, reco[:5], mask[:5])
    assert s.shape == (400, 5, 2, 4) and torch.isfinite(s).all()
    ptot = lorentz.from_ptetaphim(s)[..., 1:3].sum(-2) / enc.pt_sigma
    assert abs(float((ptot**2).mean()) - 1.0) < 4 * math.sqrt(2 / ptot.numel())
    card = ModelCard(name="os", flow=FlowConfig(transforms=2, hidden=[8]), condition=cond,
                     encoding=EncodingConfig(parton_coordinates="onshell"))
    out = tmp_path / "m"  # type: ignore[operator]
    save_model(out, model, card, data_hash({"v": v}))
    loaded = load_model(out)
    assert isinstance(loaded.model.parton_encoding, OnShellEncoding)
    assert torch.allclose(loaded.model.log_prob_partons(v, reco, mask),
                          model.log_prob_partons(v, reco, mask))
    with pytest.raises(ValueError, match="relative_phi"):
        EncodingConfig(parton_coordinates="onshell", relative_phi=True)
