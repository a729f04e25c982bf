"""Tests of unfoldmem.flows.parametrization: decay trees, bijectivity, exact Jacobians, normalisation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests._support.encoding_checks import (
    F64,
    assert_normalised,
    close_ptetaphi,
    dilepton,
    jacobian_check,
    tiny_cinn_configs,
    toy_reco,
    ttbar_partons,
)
from unfoldmem.cards.model import EncodingConfig, ModelCard
from unfoldmem.flows.cinn import CINN
from unfoldmem.flows.encoding import ObjectEncoding
from unfoldmem.flows.model_dir import data_hash, load_model, save_model
from unfoldmem.flows.parametrization import (
    ResonanceEncoding,
    decay_tree,
    infer_tree,
    narrow_tree,
    parton_encoding_from_dict,
)
from unfoldmem.physics import lorentz
from unfoldmem.physics.process import get_process


def test_decay_tree_of_builtin_processes() -> None:
    """Trees from PDG ids against the decay chains in unfoldmem/physics/processes (t → bW⁺ with
    W⁺ the slots ``_wp``; Z/γ* → μ⁻μ⁺; W → μν; on-shell tt̄: no decay)."""
    for name in ("ttbar_semileptonic", "ttbar_semileptonic_minus"):
        proc = get_process(name)
        tree = decay_tree(proc.final_state)
        wp, wm = sorted(proc._wp), sorted(proc._wm)
        assert tree == [[0, wp], [3, wm]]
    assert decay_tree(get_process("drell_yan").final_state) == [[0, 1]]
    assert decay_tree(get_process("w_lnu").final_state) == [[0, 1]]
    assert decay_tree(get_process("ttbar").final_state) == [0, 1]
    assert decay_tree([5, -5, 21]) == [0, 1, 2]


def test_infer_tree_finds_w_and_top() -> None:
    """Narrow masses alone recover the generator's decay chain (b (μ⁺ν)) (b̄ (d ū))."""
    tree = infer_tree(ttbar_partons(3000))
    norm = sorted(sorted(map(str, (t if isinstance(t, list) else [t]))) for t in tree)
    assert norm == sorted([sorted(["0", "[1, 2]"]), sorted(["3", "[4, 5]"])])
    assert infer_tree(dilepton(2000)) in ([[0, 1]], [[1, 0]])


def test_narrow_tree_keeps_resonances_only() -> None:
    """PDG pairing kept where the pair mass is a resonance (Z: N(91, 3)), dissolved where it is
    not (a 60 e^{0.3 z} continuum); tt̄'s tops and W's all kept."""
    pair = decay_tree([13, -13])
    assert narrow_tree(pair, dilepton(2000)) == pair
    assert sorted(narrow_tree(pair, dilepton(2000, wide=True))) == [0, 1]
    tt = decay_tree([5, -13, 14, -5, 1, -2])
    assert narrow_tree(tt, ttbar_partons(2000)) == tt


@pytest.mark.parametrize("case", ["ttbar", "ttbar_kick", "dilepton", "dilepton_atrest"])
def test_round_trip(case: str) -> None:
    """v -> x -> v to 1e-8 (float64), standardised features; reference: the input itself."""
    v = {"ttbar": lambda: ttbar_partons(2000), "ttbar_kick": lambda: ttbar_partons(2000, 1, True),
         "dilepton": lambda: dilepton(2000), "dilepton_atrest": lambda: dilepton(2000, 2, False)}[
        case]()
    tree = decay_tree([5, -13, 14, -5, 1, -2] if case.startswith("ttbar") else [13, -13])
    enc = ResonanceEncoding.fit(v, tree=tree)
    kick = case in ("ttbar_kick", "dilepton")
    assert enc.fixed_pt is not kick
    n_coord = 3 * v.shape[1] - (0 if kick else 2)
    assert enc.n_features == n_coord
    x, ladj = enc(v)
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all()
    assert torch.allclose(x.mean(0), torch.zeros(n_coord, dtype=F64), atol=1e-8)
    total = lorentz.from_ptetaphim(v)[..., 1:3].sum(-2)
    assert close_ptetaphi(enc.inverse(x, transverse=total), v)
    # a resonance mass is a coordinate: the W mass of the leptonic top, exactly
    if case.startswith("ttbar"):
        m_w = lorentz.mass(lorentz.from_ptetaphim(v[:, 1:3]).sum(1))
        raw = x * enc.std + enc.mean
        i = 1 if enc.fixed_pt else 6
        assert torch.allclose(raw[:, i].exp(), m_w, rtol=1e-9)  # nodes: W+, t, W-, t̄[, tt̄]


@pytest.mark.parametrize("kick", [True, False])
def test_log_jacobian_matches_autograd_ttbar(kick: bool) -> None:
    """log|det ∂x/∂v| over the 18 (pt, η, φ) vs autograd. For training data with Σp_T = 0:
    the Jacobian of (x, ΣP_x, ΣP_y) plus the log N(ΣP⃗_T; 0, σ²) of the module docstring, on
    and off (kicked events) the Σp_T = 0 surface."""
    v = ttbar_partons(400, 3, kick)
    enc = ResonanceEncoding.fit(v, tree=decay_tree([5, -13, 14, -5, 1, -2]))
    assert enc.fixed_pt is not kick
    jacobian_check(enc, v)
    if not kick:
        jacobian_check(enc, ttbar_partons(50, 4, kick=True))


def test_log_jacobian_free_masses_and_relative_phi() -> None:
    """Free-mass partons and several roots (relative φ): Jacobian vs autograd over (pt, η, φ, m)."""
    v = torch.cat([dilepton(300, 4), dilepton(300, 5)], 1)
    g = torch.Generator().manual_seed(6)
    v[..., 3] = 1.0 + 5.0 * torch.rand(300, 4, generator=g, dtype=F64)
    enc = ResonanceEncoding.fit(v, tree=[[0, 1], [2, 3]])
    assert enc.free_mass.all() and enc.n_features == 16
    assert close_ptetaphi(enc.inverse(enc(v)[0]), v)
    jacobian_check(enc, v)


@pytest.mark.parametrize("kick", [True, False])
def test_density_normalised_importance(kick: bool) -> None:
    """∫ N(x(v); 0, 0.5²) exp(ladj(v)) dv = 1 over the 6 (pt, η, φ) of a lepton pair, by
    importance sampling from an independent proposal, with free pair p_T and with the Gaussian
    pair p_T of a Σp_T = 0 training sample (pt_sigma = 12 GeV); reference: normalisation (1)
    within 4σ of the MC error."""
    v = dilepton(4000, 7, kick=kick, wide=True)
    enc = ResonanceEncoding.fit(v, tree=[[0, 1]], pt_sigma=12.0)
    assert enc.fixed_pt is not kick
    assert_normalised(enc)


def test_cinn_uses_resonances_and_model_dir_round_trip(tmp_path: object) -> None:
    """CINN.from_data picks the encoding from the card; log_prob_partons = flow density +
    encoding Jacobian; a model directory saves and reloads it; old directories mean objects."""
    v = dilepton(256, 9, kick=False)
    reco, mask = toy_reco(v)
    small = tiny_cinn_configs()
    obj = CINN.from_data(v, reco, mask, encoding=EncodingConfig(parton_coordinates="objects"),
                         **small)
    assert isinstance(obj.parton_encoding, ObjectEncoding)
    model = CINN.from_data(v, reco, mask, pdg=[13, -13], **small)
    enc = model.parton_encoding
    assert isinstance(enc, ResonanceEncoding) and enc.tree == [[0, 1]] and enc.n_features == 4
    x, ladj = enc(v)
    ref = model(reco, mask).log_prob(x.float()).double() + ladj
    assert torch.allclose(model.log_prob_partons(v, reco, mask), ref)
    s = model.sample_partons(3, reco[:5], mask[:5])
    assert s.shape == (3, 5, 2, 4) and torch.isfinite(s).all()
    s = model.sample_partons(400, reco[:5], mask[:5])
    ptot = lorentz.from_ptetaphim(s)[..., 1:3].sum(-2) / enc.pt_sigma  # N(0, 1) by construction
    assert abs(float((ptot**2).mean()) - 1.0) < 4 * math.sqrt(2 / ptot.numel())

    card = ModelCard(name="res", **small)
    out = tmp_path / "m"  # type: ignore[operator]
    save_model(out, model, card, data_hash({"v": v}))
    loaded = load_model(out, card=card)
    assert isinstance(loaded.model.parton_encoding, ResonanceEncoding)
    assert torch.allclose(loaded.model.log_prob_partons(v, reco, mask),
                          model.log_prob_partons(v, reco, mask))
    old = tmp_path / "old"  # type: ignore[operator]
    save_model(old, obj, ModelCard(name="old", **small), data_hash({"v": v}))
    raw = (old / "card.yaml").read_text().replace("  parton_coordinates: resonances\n", "")
    (old / "card.yaml").write_text(raw)
    assert load_model(old).card.encoding.parton_coordinates == "objects"
    d = json.loads((old / "encoding.json").read_text())
    assert isinstance(parton_encoding_from_dict(d["parton"]), ObjectEncoding)


@pytest.mark.parametrize("kick", [False, True])
def test_helicity_angles(kick: bool) -> None:
    """``helicity``: decay angles of nested nodes about the parent's lab flight direction.
    References: v -> x -> v (1e-8); the Jacobian against autograd; the boost formula
    E_μ = γ(E* + β p* cos θ*) = (E_W + |p⃗_W| cos θ*)/2 of W⁺ → μ⁺ν for the W⁺ node's cos θ*;
    roots keep the lab axes; to_dict/from_dict keeps it, a dict without the key (models saved
    before the option) means lab axes."""
    v = ttbar_partons(1000, 5, kick)
    tree = decay_tree([5, -13, 14, -5, 1, -2])
    hel = ResonanceEncoding.fit(v, tree=tree, helicity=True)
    lab = ResonanceEncoding.fit(v, tree=tree)
    # nodes in post-order: W⁺, t, W⁻, t̄[, tt̄]; with kick the tops are the roots
    assert hel.hel_node == ([True, False, True, False] if kick else [True] * 4 + [False])
    x, ladj = hel(v)
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all()
    assert not torch.allclose(x, lab(v)[0], atol=1e-3)
    total = lorentz.from_ptetaphim(v)[..., 1:3].sum(-2)
    assert close_ptetaphi(hel.inverse(x, transverse=None if kick else total), v)
    jacobian_check(hel, v)
    raw = x * hel.std + hel.mean
    n_nodes = len(hel.nodes)
    first_angle = (6 if kick else 1) + n_nodes  # roots' (y[, log pT, φ]), then the log M
    cos = torch.tanh(raw[:, first_angle])
    p = lorentz.from_ptetaphim(v)
    w = p[:, 1] + p[:, 2]
    e_mu = 0.5 * (w[:, 0] + torch.linalg.vector_norm(w[:, 1:], dim=-1) * cos)
    assert torch.allclose(e_mu, p[:, 1, 0], rtol=1e-9)
    d = hel.to_dict()
    assert d["helicity"] is True and "helicity" not in lab.to_dict()
    assert torch.equal(parton_encoding_from_dict(d)(v)[0], x)
    d.pop("helicity")
    assert parton_encoding_from_dict(d).hel_node == [False] * n_nodes


def test_cinn_resonances_use_helicity_angles_for_nested_decays() -> None:
    """CINN.from_data with the default resonance coordinates of a tt̄ decay tree measures the
    W and top decay angles about their flight directions (docs/unfolding.md, #8); a single
    resonance (Drell–Yan) is a root and keeps the lab axes. Reference: the node layout of the
    tree (post-order W⁺, t, W⁻, t̄, tt̄)."""
    v = ttbar_partons(300, 6)
    reco, mask = toy_reco(v, 3.0)
    small = tiny_cinn_configs()
    enc = CINN.from_data(v, reco, mask, pdg=[5, -13, 14, -5, 1, -2], **small).parton_encoding
    assert isinstance(enc, ResonanceEncoding) and enc.helicity
    assert enc.hel_node == [True, True, True, True, False]
    dy = dilepton(300, 9, kick=False)
    enc = CINN.from_data(dy, *toy_reco(dy), pdg=[13, -13], **small).parton_encoding
    assert isinstance(enc, ResonanceEncoding) and enc.hel_node == [False]
