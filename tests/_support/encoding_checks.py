r"""Parton samples and exactness checks shared by the encoding tests (resonance, on-shell).

``ttbar_partons`` and ``dilepton`` draw partons; ``jacobian_check`` compares an encoding's
log-Jacobian with autograd and ``assert_normalised`` checks its density integrates to one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from unfoldmem.cards.model import FlowConfig, ModelCard
from unfoldmem.physics import lorentz
from unfoldmem.physics.process import get_process

__all__ = ["F64", "TT", "assert_chain_model", "assert_normalised", "boost_z", "close_ptetaphi", "dilepton",
           "importance_ratios", "jacobian_check", "tiny_cinn_configs", "toy_reco", "ttbar_partons", "w_jet"]

F64 = torch.float64


def boost_z(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Boost every event's four-vectors p (n, k, 4) along z to rapidity y (n,)."""
    b = torch.zeros(*p.shape[:-1], 3, dtype=F64)
    b[..., 2] = torch.tanh(y)[:, None]
    return lorentz.boost(p, b)


def ttbar_partons(n: int, seed: int = 0, kick: bool = False) -> torch.Tensor:
    """(b μ⁺ ν b̄ d ū) of the ttbar_semileptonic phase space, boosted along z (and in x if kick)."""
    g = torch.Generator().manual_seed(seed)
    proc = get_process("ttbar_semileptonic", top_width="lo")
    shat = (400.0 + 600.0 * torch.rand(n, generator=g, dtype=F64)) ** 2
    p, w = proc.phase_space(torch.rand(n, 14, generator=g, dtype=F64), shat, proc.theta())
    p = p[w > 0]
    p = boost_z(p, torch.randn(p.shape[0], generator=g, dtype=F64))
    if kick:
        b = torch.zeros(*p.shape[:-1], 3, dtype=F64)
        b[..., 0] = 0.3 * torch.rand(p.shape[0], 1, generator=g, dtype=F64)
        p = lorentz.boost(p, b)
    v = lorentz.to_ptetaphim(p)
    v[..., 3] = 0.0
    return v


def dilepton(n: int, seed: int = 0, kick: bool = True, wide: bool = False) -> torch.Tensor:
    """Massless pair of mass ~ N(91, 3) GeV (wide: 60 e^{0.3 z}), isotropic decay, boosted along
    z and, if kick, transversely by β ∈ [0.3, 0.6] in a random direction."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=g, dtype=F64)
    m = 60.0 * torch.exp(0.3 * z) if wide else 91.0 + 3.0 * z
    cos = 2 * torch.rand(n, generator=g, dtype=F64) - 1
    phi = (2 * torch.rand(n, generator=g, dtype=F64) - 1) * math.pi
    s = torch.sqrt(1 - cos**2)
    d = 0.5 * m[:, None] * torch.stack([s * torch.cos(phi), s * torch.sin(phi), cos], -1)
    e = 0.5 * m[:, None]
    p = torch.stack([torch.cat([e, d], -1), torch.cat([e, -d], -1)], 1)
    p = boost_z(p, torch.randn(n, generator=g, dtype=F64))
    if kick:
        beta = 0.3 * (1 + torch.rand(n, 1, generator=g, dtype=F64))
        angle = 2 * math.pi * torch.rand(n, 1, generator=g, dtype=F64)
        b = torch.zeros(n, 2, 3, dtype=F64)
        b[..., 0], b[..., 1] = beta * torch.cos(angle), beta * torch.sin(angle)
        p = lorentz.boost(p, b)
    v = lorentz.to_ptetaphim(p)
    v[..., 3] = 0.0
    return v


def close_ptetaphi(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-8) -> bool:
    """(pt, η, φ, m) rows equal to ``tol`` (pt relative, φ modulo 2π)."""
    d = a - b
    d[..., 2] = lorentz.delta_phi(a[..., 2], b[..., 2])
    scale = torch.ones_like(a)
    scale[..., 0] = b[..., 0]
    return bool(((d / scale).abs() < tol).all())


def jacobian_check(enc: torch.nn.Module, v: torch.Tensor, rows: int = 4) -> None:
    """log|det ∂x/∂v| of a decay-tree encoding vs autograd on the first ``rows`` events, over
    every (pt, η, φ) and the free masses. With Σp_T = 0 (``fixed_pt``): the Jacobian of
    (x, ΣP_x, ΣP_y) plus log N(ΣP⃗_T; 0, σ²), as the encodings' docstrings define it."""
    s2 = enc.pt_sigma**2
    var = torch.zeros(v.shape[1], 4, dtype=torch.bool)
    var[:, :3] = True
    var[:, 3] = enc.free_mass  # a free mass is a physical variable, a fixed one is not
    for i in range(rows):
        v0 = v[i].clone()
        gauss = 0.0
        if enc.fixed_pt:
            p0 = lorentz.from_ptetaphim(torch.cat([v0[:, :3], enc.fixed_mass[:, None]], -1))
            gauss = -(p0[:, 1:3].sum(0) ** 2).sum() / (2 * s2) - math.log(2 * math.pi * s2)

        def f(u: torch.Tensor, v0: torch.Tensor = v0) -> torch.Tensor:
            w = v0.clone()
            w[var] = u
            x = enc(w)[0]
            if not enc.fixed_pt:
                return x
            p = lorentz.from_ptetaphim(torch.cat([w[:, :3], enc.fixed_mass[:, None]], -1))
            return torch.cat([x, p[:, 1:3].sum(0)])

        jac = torch.autograd.functional.jacobian(f, v0[var])
        assert jac.shape[0] == jac.shape[1]
        ref = torch.linalg.slogdet(jac)[1]
        assert torch.allclose(enc(v0)[1], ref + gauss, atol=1e-8, rtol=1e-10)


def importance_ratios(enc: torch.nn.Module, n: int, seed: int, k: int, pt0: float,
                      s_lpt: float, s_eta: float) -> torch.Tensor:
    """(n,) ratios N(x(v); 0, 0.5²) exp(ladj(v)) / g(v) for n draws v of k massless partons from
    a proposal g independent of the encoding (log-normal p_T about ``pt0`` GeV of width
    ``s_lpt``, normal η of width ``s_eta``, uniform φ): their mean estimates the encoded
    density's integral over the 3k (pt, η, φ)."""
    g = torch.Generator().manual_seed(seed)
    lpt = math.log(pt0) + s_lpt * torch.randn(n, k, generator=g, dtype=F64)
    eta = s_eta * torch.randn(n, k, generator=g, dtype=F64)
    phi = (2 * torch.rand(n, k, generator=g, dtype=F64) - 1) * math.pi
    w = torch.stack([lpt.exp(), eta, phi, torch.zeros_like(eta)], -1)
    log_g = (-0.5 * ((lpt - math.log(pt0)) / s_lpt) ** 2
             - math.log(s_lpt * math.sqrt(2 * math.pi))
             - lpt - 0.5 * (eta / s_eta) ** 2 - math.log(s_eta * math.sqrt(2 * math.pi))
             - math.log(2 * math.pi)).sum(-1)
    x, ladj = enc(w)
    s = 0.5
    log_p = (-0.5 * (x / s) ** 2 - math.log(s * math.sqrt(2 * math.pi))).sum(-1) + ladj
    return torch.exp(log_p - log_g)


def assert_normalised(enc: torch.nn.Module, n: int = 400_000, seed: int = 8, k: int = 2,
                      pt0: float = 30.0, s_lpt: float = 0.8, s_eta: float = 2.5) -> None:
    """∫ N(x(v); 0, 0.5²) exp(ladj(v)) dv = 1 over the 3k (pt, η, φ) of k massless partons, by
    importance sampling (:func:`importance_ratios`): within 4σ of the MC error, which must be
    below 0.03."""
    r = importance_ratios(enc, n, seed, k, pt0, s_lpt, s_eta)
    mean, err = r.mean(), r.std() / math.sqrt(n)
    assert err < 0.03
    assert abs(float(mean) - 1.0) < 4 * float(err)


def toy_reco(v: torch.Tensor, type_code: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Reco objects (n, k + 1, 7) equal to the k partons (slot 0 empty), of one ``type_code``,
    and their mask."""
    reco = torch.zeros(v.shape[0], v.shape[1] + 1, 7, dtype=F64)
    reco[:, 1:, :4] = v
    reco[:, 1:, 6] = type_code
    return reco, torch.ones(v.shape[0], v.shape[1] + 1, dtype=torch.bool)


def tiny_cinn_configs() -> dict[str, Any]:
    """``flow`` and ``condition`` keyword arguments of a tiny CINN (plumbing tests)."""
    return {"flow": FlowConfig(transforms=2, hidden=[8]),
            "condition": ModelCard(name="c", condition={"embed": 4, "hidden": [4],
                                                        "context": 2}).condition}


#: PDG ids of the tt̄ → b μ⁺ν b̄ d ū slots of :func:`ttbar_partons`
TT = [5, -13, 14, -5, 1, -2]


def w_jet(n: int, seed: int, kick: bool, wide: bool = False) -> torch.Tensor:
    """(μ⁺, ν, d): a W of mass ~ N(80, 2) GeV (wide: 60 e^{0.3 z}) decaying isotropically,
    recoiling against a quark (Σp⃗_T = 0 unless ``kick``) of random p_z."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=g, dtype=F64)
    mw = 60.0 * torch.exp(0.3 * z) if wide else 80.0 + 2.0 * z
    pw = 20.0 + 60.0 * torch.rand(n, generator=g, dtype=F64)
    cw, phw = 2 * torch.rand(n, generator=g, dtype=F64) - 1, 6.2 * torch.rand(n, generator=g,
                                                                            dtype=F64)
    sw = torch.sqrt(1 - cw * cw)
    w3 = pw[:, None] * torch.stack([sw * torch.cos(phw), sw * torch.sin(phw), cw], -1)
    w = torch.cat([torch.sqrt(pw * pw + mw * mw)[:, None], w3], -1)
    c, ph = 2 * torch.rand(n, generator=g, dtype=F64) - 1, 6.2 * torch.rand(n, generator=g,
                                                                          dtype=F64)
    s = torch.sqrt(1 - c * c)
    d = 0.5 * mw[:, None] * torch.stack([s * torch.cos(ph), s * torch.sin(ph), c], -1)
    lep = lorentz.boost_frame(torch.cat([0.5 * mw[:, None], d], -1), w, mw)
    q3 = -w3
    if kick:
        q3 = q3 + torch.cat([15 * torch.randn(n, 2, generator=g, dtype=F64),
                             torch.zeros(n, 1, dtype=F64)], -1)
    q3[:, 2] = 80 * torch.randn(n, generator=g, dtype=F64)
    q = torch.cat([torch.linalg.vector_norm(q3, dim=-1, keepdim=True), q3], -1)
    v = lorentz.to_ptetaphim(torch.stack([lep, w - lep, q], 1))
    v[..., 3] = 0.0
    return v


def assert_chain_model(chain: str, cls: type, seed: int, tmp_path: Path) -> dict[str, Any]:
    """``encoding.leptonic_chain: chain`` on tt̄ (:data:`TT`): CINN.from_data builds a ``cls``
    encoding with the chain (1, 2, 0) and the hadronic top's helicity angles; log_prob_partons
    = flow density + encoding Jacobian; samples are finite; the sampler exports as TorchScript
    (reference: the eager sampler, 1e-8); a model directory (``tmp_path / "m"``) saves and
    reloads it with the same density. Returns the reloaded ``encoding.json`` parton dict."""
    from unfoldmem.cards.model import EncodingConfig
    from unfoldmem.flows.cinn import CINN
    from unfoldmem.flows.export import export_model
    from unfoldmem.flows.model_dir import data_hash, load_model, save_model

    v = ttbar_partons(300, seed)
    reco, mask = toy_reco(v, 3.0)
    small = tiny_cinn_configs()
    cfg = EncodingConfig(leptonic_chain=chain)
    model = CINN.from_data(v, reco, mask, encoding=cfg, pdg=TT, **small)
    enc = model.parton_encoding
    assert isinstance(enc, cls) and enc.anchor == (1, 2, 0)
    # the hadronic top keeps its resonance coordinates (nodes 2 and 3) in every chain option
    assert enc.helicity and getattr(enc, "res_nodes", [2, 3]) == [2, 3]
    x, ladj = enc(v)
    ref = model(reco, mask).log_prob(x.float()).double() + ladj
    assert torch.allclose(model.log_prob_partons(v, reco, mask), ref)
    s = model.sample_partons(2, reco[:4], mask[:4])
    assert s.shape == (2, 4, 6, 4) and torch.isfinite(s).all()
    manifest = export_model(model.double().eval(), tmp_path, "torchscript", "float64",
                            n_example=16)
    assert manifest["max_abs_dev"] < 1e-8
    card = ModelCard(name=chain, encoding=cfg, **small)
    out = tmp_path / "m"
    save_model(out, model, card, data_hash({"v": v}))
    loaded = load_model(out, card=card)
    assert isinstance(loaded.model.parton_encoding, cls)
    assert torch.allclose(loaded.model.log_prob_partons(v, reco, mask),
                          model.log_prob_partons(v, reco, mask))
    return json.loads((out / "encoding.json").read_text())["parton"]
