"""Observables against hand-built events and independent numpy formulas (not lorentz.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unfoldmem.physics.observables import (
    OBSERVABLES,
    evaluate,
    find_particle,
    guess_process,
    observables_for,
)

MT, MW, MB = 172.5, 80.4, 4.7


def np_boost(p: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Textbook active boost (Jackson 11.19) in numpy: independent of unfoldmem.physics.lorentz."""
    p = np.asarray(p, dtype=np.float64)
    b2 = float(beta @ beta)
    if b2 == 0:
        return p.copy()
    g = 1 / math.sqrt(1 - b2)
    bp = p[..., 1:] @ beta
    e = g * (p[..., 0] + bp)
    p3 = p[..., 1:] + ((g - 1) * bp / b2 + g * p[..., 0])[..., None] * beta
    return np.concatenate([e[..., None], p3], -1)


def two_body(
    m: float, m1: float, m2: float, cos_t: float, phi: float
) -> tuple[np.ndarray, np.ndarray]:
    """Decay at rest into masses m1, m2 with daughter 1 along (θ, φ): PDG review, kinematics §49."""
    p = math.sqrt((m * m - (m1 + m2) ** 2) * (m * m - (m1 - m2) ** 2)) / (2 * m)
    s = math.sqrt(1 - cos_t * cos_t)
    n = np.array([s * math.cos(phi), s * math.sin(phi), cos_t])
    return (np.array([math.hypot(p, m1), *(p * n)]), np.array([math.hypot(p, m2), *(-p * n)]))


def chain(
    parent: np.ndarray, m_parent: float, m1: float, m2: float, cos_t: float, phi: float
) -> tuple[np.ndarray, np.ndarray]:
    """Two-body decay of a moving parent: decay at rest, then boost with the parent velocity."""
    d1, d2 = two_body(m_parent, m1, m2, cos_t, phi)
    beta = parent[1:] / parent[0]
    return np_boost(d1, beta), np_boost(d2, beta)


def cs_reference(lm: np.ndarray, lp: np.ndarray, sqrt_s: float = 13000.0) -> float:
    """Collins–Soper angle by explicit frames (Phys. Rev. D 16 (1977) 2219): boost into the
    dilepton rest frame, take z along the bisector of the beam directions there."""
    q = lm + lp
    b = -q[1:] / q[0]
    beams = [np.array([sqrt_s / 2, 0, 0, sqrt_s / 2]), np.array([sqrt_s / 2, 0, 0, -sqrt_s / 2])]
    p1, p2 = (np_boost(x, b) for x in beams)
    u1, u2 = p1[1:] / np.linalg.norm(p1[1:]), p2[1:] / np.linalg.norm(p2[1:])
    z = (u1 - u2) / np.linalg.norm(u1 - u2)
    ell = np_boost(lm, b)[1:]
    c = float(ell @ z / np.linalg.norm(ell))
    return c if q[3] >= 0 else -c


def test_drell_yan_at_rest_and_boosted_along_z() -> None:
    """m_ll, y_ll, pt_ll, cos θ_CS of a pair built at rest with l⁻ at polar angle θ, boosted in z:
    the CS angle is ±θ and the rapidity is the boost's artanh β (longitudinal-boost invariance)."""
    m, cos_t = 91.0, 0.37
    lm, lp = two_body(m, 0.0, 0.0, cos_t, 0.9)
    for beta_z in (0.0, 0.6, -0.8):
        b = np.array([0.0, 0.0, beta_z])
        p = torch.tensor(np.stack([np_boost(lm, b), np_boost(lp, b)])[None])
        v = evaluate("drell_yan", p, torch.tensor([13, -13]))
        assert v["m_ll"].item() == pytest.approx(m, rel=1e-12)
        assert v["y_ll"].item() == pytest.approx(math.atanh(beta_z), abs=1e-12)
        assert v["pt_ll"].item() == pytest.approx(0.0, abs=1e-9)
        # the CS z axis follows the sign of the pair's longitudinal momentum
        assert v["cos_cs"].item() == pytest.approx(cos_t * (-1 if beta_z < 0 else 1), abs=1e-12)


def test_drell_yan_cs_with_transverse_momentum_and_slot_order() -> None:
    """cos θ_CS with Q_T ≠ 0 against the explicit-frame construction (massless leptons, for which
    the light-cone formula is exact); l⁺ first in the slots."""
    rng = np.random.default_rng(3)
    events, ref = [], []
    for _ in range(20):
        lm, lp = two_body(
            rng.uniform(60, 120), 0.0, 0.0, rng.uniform(-1, 1), rng.uniform(-3, 3)
        )
        b = rng.normal(0, 0.4, 3)
        b *= min(1.0, 0.9 / np.linalg.norm(b))
        lm, lp = np_boost(lm, b), np_boost(lp, b)
        events.append(np.stack([lp, lm]))
        ref.append(cs_reference(lm, lp))
    v = evaluate("drell_yan", torch.tensor(np.stack(events)), torch.tensor([-11, 11]))
    np.testing.assert_allclose(v["cos_cs"].numpy(), ref, atol=1e-10)
    lm = np.stack(events)[:, 1]
    np.testing.assert_allclose(v["pt_lminus"].numpy(), np.hypot(lm[:, 1], lm[:, 2]), rtol=1e-12)
    np.testing.assert_allclose(
        v["eta_lminus"].numpy(), np.arcsinh(lm[:, 3] / np.hypot(lm[:, 1], lm[:, 2])), rtol=1e-10
    )


def _ttbar_event(lepton_pdg: int, cos_star: float, beta_z: float) -> tuple[np.ndarray, list[int]]:
    """A semileptonic tt̄ event built by hand from two-body decays (on-shell t, W)."""
    m_tt = 450.0
    t, tb = two_body(m_tt, MT, MT, cos_star, 0.4)
    b = np.array([0.1, -0.05, beta_z])
    t, tb = np_boost(t, b), np_boost(tb, b)
    bq, wp = chain(t, MT, MB, MW, 0.3, 1.0)
    bbar, wm = chain(tb, MT, MB, MW, -0.5, 2.0)
    if lepton_pdg < 0:  # l+ from W+ (top side), hadronic W- on the antitop side
        lep, nu = chain(wp, MW, 0.0, 0.0, 0.2, -1.0)
        q1, q2 = chain(wm, MW, 0.0, 0.0, -0.7, 0.5)
        ids = [5, lepton_pdg, -lepton_pdg - 1, -5, 1, -2]
    else:
        lep, nu = chain(wm, MW, 0.0, 0.0, 0.2, -1.0)
        q1, q2 = chain(wp, MW, 0.0, 0.0, -0.7, 0.5)
        ids = [5, 2, -1, -5, lepton_pdg, -lepton_pdg - 1]
        return np.stack([bq, q1, q2, bbar, lep, nu]), ids
    return np.stack([bq, lep, nu, bbar, q1, q2]), ids


@pytest.mark.parametrize("lepton_pdg", [-13, 11])
def test_ttbar_roles_masses_and_cos_theta_star(lepton_pdg: int) -> None:
    """Tops from hand-built decays: m_t(had) = m_t(lep) = 172.5 to 1e-9, m_tt = 450 GeV, y_tt the
    z-boost rapidity, cos θ* the production angle chosen in the tt̄ rest frame; the lepton charge
    decides which b is leptonic (t → W⁺b → ℓ⁺νb)."""
    beta_z = 0.5
    p, ids = _ttbar_event(lepton_pdg, cos_star=-0.42, beta_z=beta_z)
    v = evaluate("ttbar_semileptonic", torch.tensor(p[None]), torch.tensor(ids))
    assert v["m_t_had"].item() == pytest.approx(MT, rel=1e-9)
    assert v["m_t_lep"].item() == pytest.approx(MT, rel=1e-9)
    assert v["m_tt"].item() == pytest.approx(450.0, rel=1e-9)
    tt = p.sum(0)
    assert v["y_tt"].item() == pytest.approx(
        0.5 * math.log((tt[0] + tt[3]) / (tt[0] - tt[3])), rel=1e-10
    )
    assert v["pt_tt"].item() == pytest.approx(math.hypot(tt[1], tt[2]), rel=1e-10)
    # the boost had transverse components: cos θ* is defined after a pure boost to the tt̄ frame,
    # i.e. undoing exactly the boost applied, so the production angle comes back
    assert v["cos_theta_star"].item() == pytest.approx(-0.42, abs=1e-9)
    # stable tops (process ttbar) give the same tt̄ observables
    tops = torch.tensor(np.stack([p[:3].sum(0), p[3:].sum(0)])[None])  # t = b W+, t̄ = b̄ W-
    vt = evaluate("ttbar", tops, torch.tensor([6, -6]))
    for name in ("m_tt", "pt_tt", "y_tt", "cos_theta_star"):
        assert vt[name].item() == pytest.approx(v[name].item(), rel=1e-9, abs=1e-12)
    lep = p[next(ids.index(i) for i in ids if abs(i) in (11, 13))]
    assert v["pt_lepton"].item() == pytest.approx(math.hypot(lep[1], lep[2]), rel=1e-12)


def test_ttbar_wrong_b_assignment_would_change_top_masses() -> None:
    """The leptonic top must use b for ℓ⁺: swapping the b and b̄ ids breaks both masses."""
    p, ids = _ttbar_event(-13, 0.1, 0.2)
    swapped = [-i if abs(i) == 5 else i for i in ids]
    v = evaluate("ttbar_semileptonic", torch.tensor(p[None]), torch.tensor(swapped))
    assert abs(v["m_t_lep"].item() - MT) > 1.0


def test_batched_shapes_and_per_event_ids() -> None:
    """(S, n, k, 4) momenta with (n, k) ids give (S, n) values equal to event-by-event results."""
    rng = np.random.default_rng(5)
    evs = [
        np.stack(two_body(rng.uniform(70, 110), 0, 0, rng.uniform(-1, 1), 0.0)) for _ in range(6)
    ]
    p = torch.tensor(np.stack(evs))
    ids = torch.tensor([[13, -13], [-13, 13]] * 3)
    batch = evaluate("drell_yan", p.expand(3, -1, -1, -1), ids, names=["cos_cs"])["cos_cs"]
    assert batch.shape == (3, 6)
    for i in range(6):
        one = evaluate("drell_yan", p[i : i + 1], ids[i], names=["cos_cs"])["cos_cs"]
        assert batch[2, i].item() == pytest.approx(one.item(), abs=1e-14)
    assert torch.allclose(
        batch[:, 0],
        -evaluate("drell_yan", p[:1], torch.tensor([-13, 13]), names=["cos_cs"])["cos_cs"].expand(
            3
        ),
    )


def test_registry_and_errors() -> None:
    """Registry entries are unique, labelled and binned; missing particles and unknown names fail."""
    for proc, obs in OBSERVABLES.items():
        names = [o.name for o in obs]
        assert len(names) == len(set(names)), proc
        assert all(o.label for o in obs)
    assert guess_process([2, -2, 13, -13]) == "drell_yan"
    assert guess_process([5, -13, 14, -5, 1, -2]) == "ttbar_semileptonic"
    assert guess_process([11, -12]) == "w_lnu"
    assert guess_process([6, -6]) == "ttbar"
    with pytest.raises(ValueError, match="no observable set"):
        guess_process([21, 21])
    with pytest.raises(KeyError, match="known"):
        observables_for("higgs")
    with pytest.raises(KeyError, match="unknown observable"):
        evaluate("drell_yan", torch.zeros(1, 2, 4), torch.tensor([13, -13]), names=["m_tt"])
    with pytest.raises(ValueError, match="PDG id"):
        find_particle(torch.zeros(2, 2, 4), torch.tensor([13, 13]), [-13])
