"""Tests of the MEM integrand: Jacobian, assignments and their combinatorics, per-permutation sums,
NaN safety. Also holds the Drell–Yan sample builder used by the other tests in tests/mem."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import numpy as np
import torch
from hypothesis import given, settings

from tests._support.mem_events import dy_setup, make_dy_events
from tests.conftest import REPO
from unfoldmem.cards import load_card
from unfoldmem.cards.detector import DetectorCard
from unfoldmem.mem.integrand import (
    FLAG_NO_ASSIGNMENT,
    FLAG_NONFINITE_INPUT,
    ExactTransfer,
    MEMIntegrand,
    RecoEvents,
    build_assignments,
)
from unfoldmem.physics.hadronic import integrand_from_card
from unfoldmem.physics.pdf import load_pdf
from unfoldmem.simulate.detector import ParametricDetector

torch.set_num_threads(1)  # intra-op threads thrash on the shared 2-core machine


def test_jacobian_massless_two_body() -> None:
    """log J + log h of two massless partons equals pt1/(8π² s) × N2(a; balance) × pt_r:
    dx1 dx2 dΦ2 = (2π)^-2 d³p1/2E1 dpz2/2E2 · 2/s (hand derivation in docs/mem.md)."""
    had, _, integ = dy_setup()
    z = torch.tensor([[[[40.0, 0.3, 1.0], [41.0, -0.2, 1.0 - math.pi + 0.01]]]], dtype=torch.float64)
    sig = torch.tensor([5.0], dtype=torch.float64)
    p, x1, x2, ljh = integ.momenta(z, sig)
    s = had.sqrt_s**2
    a = torch.tensor([41.0 * math.cos(1.01 - math.pi), 41.0 * math.sin(1.01 - math.pi)],
                     dtype=torch.float64)
    bal = -p[0, 0, 0, 1:3]
    expect = (math.log(40.0 / (8 * math.pi**2 * s)) - float(((a - bal) ** 2).sum()) / (2 * 25.0)
              - math.log(2 * math.pi * 25.0) + math.log(41.0))
    assert abs(float(ljh) - expect) < 1e-10
    assert torch.allclose(p[..., 1:3].sum(-2), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    e, pz = p[..., 0].sum(-1), p[..., 3].sum(-1)
    assert torch.allclose(x1 * x2 * s, e**2 - pz**2)


def _ttbar_like_events(n_jets: int, tags: list[float]) -> RecoEvents:
    """One event: MET, a μ⁺ and n_jets jets with the given b-tags (layout of pad_reco)."""
    obj = torch.zeros(1, 1 + 4 + 8, 7, dtype=torch.float64)
    obj[0, 0, :3] = torch.tensor([30.0, 0.0, 0.5])
    obj[0, 1] = torch.tensor([40.0, 0.1, 1.0, 0.105, 0.0, 1.0, 1.0])
    for j in range(n_jets):
        obj[0, 5 + j] = torch.tensor([100.0 - 10 * j, 0.2 * j, 0.7 * j - 2, 5.0, tags[j], 0.0, 3.0])
    mask = obj[..., 0] > 0
    mask[0, 0] = True
    return RecoEvents(obj, mask)


def test_assignment_counts() -> None:
    """k!/(k−4)! injective maps of 4 jet partons (exact rule); strict: 2 b ↔ 2 tags → 2·2 maps."""
    fs = (5, -13, 14, -5, 1, -2)
    for k in (4, 5, 6):
        asg = build_assignments(_ttbar_like_events(k, [1, 1, 0, 0, 0, 0]), fs, "exact")
        assert int(asg.n_valid[0]) == math.factorial(k) // math.factorial(k - 4)
    asg = build_assignments(_ttbar_like_events(4, [1, 0, 1, 0]), fs, "strict")
    assert int(asg.n_valid[0]) == 4
    b_slots = {5, 7}
    for m in asg.index[0][asg.valid[0]].tolist():
        assert {m[0], m[3]} == b_slots and m[1] == 1 and m[2] == -1
    # Wrong-charge lepton or too few jets: nothing allowed.
    ev = _ttbar_like_events(4, [1, 1, 0, 0])
    ev.objects[0, 1, 5] = -1.0
    assert int(build_assignments(ev, fs, "exact").n_valid[0]) == 0
    assert int(build_assignments(_ttbar_like_events(3, [1, 1, 0]), fs, "exact").n_valid[0]) == 0


def test_per_permutation_sum_equals_total() -> None:
    """Σ_assignments W_σ equals the total W used by the integrand to 1e-10 (issue 14), on a
    tt̄-like final state with the exact detector density (independent: direct product of
    ParametricDetector.log_density over the matched objects of one chosen assignment); W of
    one drawn assignment per sample (``log_w_pick``) equals it and the table's entry."""
    det = ParametricDetector(DetectorCard())
    tr = ExactTransfer(det)
    fs = (5, -13, 14, -5, 1, -2)
    ev = _ttbar_like_events(5, [1, 0, 1, 0, 0])
    prep = tr.prepare(ev, fs)
    g = torch.Generator().manual_seed(3)
    obj = ev.objects[0]
    jets = [5, 6, 7, 8]
    partons = torch.zeros(7, 1, 6, 4, dtype=torch.float64)
    from unfoldmem.physics.lorentz import from_ptetaphim

    for i, slot in zip([0, 3, 4, 5], jets, strict=True):
        v = obj[slot, :4].clone()
        partons[:, 0, i] = from_ptetaphim(v + 0.02 * torch.randn(7, 4, generator=g) * v.abs())
    partons[:, 0, 1] = from_ptetaphim(obj[1, :4].clone().expand(7, 4))
    partons[:, 0, 2] = from_ptetaphim(torch.tensor([30.0, 0.4, 0.5, 0.0]).expand(7, 4))
    lw = tr.log_w(partons, torch.tensor(fs), ev, prep)
    assert lw.shape == (7, 1, 120)
    total = torch.logsumexp(lw, -1)
    perm_sum = torch.exp(lw - total[..., None]).sum(-1)
    assert torch.allclose(perm_sum, torch.ones_like(perm_sum), atol=1e-10, rtol=0)
    # One assignment by hand: b→5, μ→1, b̄→7, d→6, ū→8.
    k = next(i for i, m in enumerate(prep["index"][0].tolist()) if m == [5, 1, -1, 7, 6, 8])
    pdg = torch.tensor(fs)
    hand = sum(det.log_density(obj[s, :3], partons[:, 0, i], pdg[i], obj[s, 4] if s > 1 else None)
               for i, s in ((0, 5), (1, 1), (3, 7), (4, 6), (5, 8)))
    isr = det.log_density_isr(obj[9, :3]) + math.log(1 - 0.01) + det.log_prob_n_isr(torch.tensor(1))
    n_sum = partons[:, 0, :, 1:3].sum(-2)
    reco_sum = sum(obj[s, 0] * torch.stack([torch.cos(obj[s, 2]), torch.sin(obj[s, 2])])
                   for s in (1, 5, 6, 7, 8))
    vis_pt = torch.stack([torch.hypot(partons[:, 0, i, 1], partons[:, 0, i, 2])
                          for i in (0, 1, 3, 4, 5)]).sum(0)
    sig = torch.sqrt(10.0**2 + 0.5**2 * vis_pt)
    met = det.log_density_met(obj[0, 0], obj[0, 2], n_sum - reco_sum, sig)
    assert torch.allclose(lw[:, 0, k], hand + isr + met, atol=1e-9, rtol=0)
    # One assignment per sample (what the sampler evaluates): the same W as the table.
    pick = torch.full((7, 1), k, dtype=torch.long)
    assert torch.allclose(tr.log_w_pick(partons, pdg, ev, prep, pick)[:, 0], hand + isr + met,
                          atol=1e-9, rtol=0)
    pick = torch.randint(0, 120, (7, 1), generator=g)
    torch.testing.assert_close(tr.log_w_pick(partons, pdg, ev, prep, pick),
                               torch.gather(lw, -1, pick[..., None])[..., 0], rtol=0, atol=1e-12)


def test_flags_for_nan_and_missing_objects() -> None:
    """A NaN muon pt and an event with one muon get flags 1 and 2; no NaN anywhere."""
    _, _, integ = dy_setup()
    ev, _ = make_dy_events(3, seed=5)
    ev.objects[0, 1, 0] = float("nan")
    ev.mask[1, 2] = False
    prep = integ.prepare(ev)
    assert prep["flag"].tolist()[:2] == [FLAG_NONFINITE_INPUT, FLAG_NO_ASSIGNMENT]
    assert prep["flag"][2] == 0


@settings(max_examples=25, deadline=None)
@given(
    pt=st.floats(1e-6, 1e5) | st.sampled_from([float("nan"), float("inf"), 0.0]),
    eta=st.floats(-50, 50) | st.sampled_from([float("nan"), 2.4999999, -2.5]),
    phi=st.floats(-10, 10),
    zpt=st.floats(1e-8, 1e5),
    zeta=st.floats(-30, 30),
)
def test_extreme_kinematics_never_nan(pt: float, eta: float, phi: float, zpt: float,
                                      zeta: float) -> None:
    """Property test (issue 14): extreme reco and parton values give finite or −inf integrand
    values and flags, never NaN (reference: the NaN-free contract of the exact detector)."""
    _, _, integ = dy_setup()
    obj = torch.zeros(1, 13, 7, dtype=torch.float64)
    obj[0, 0, :3] = torch.tensor([20.0, 0.0, 0.1])
    obj[0, 1] = torch.tensor([pt, eta, phi, 0.105, 0.0, -1.0, 1.0])
    obj[0, 2] = torch.tensor([35.0, 0.3, -1.0, 0.105, 0.0, 1.0, 1.0])
    ev = RecoEvents(obj, torch.tensor([[True, True, True] + [False] * 10]))
    prep = integ.prepare(ev)
    z = torch.tensor([[[[zpt, zeta, phi], [zpt, -zeta, phi + 3.0]]]], dtype=torch.float64)
    rest, p, x1, x2 = integ.log_rest(z, ev, prep, torch.tensor([10.0], dtype=torch.float64))
    t = integ.log_theta(p, x1, x2)
    assert not torch.isnan(rest).any() and not torch.isnan(t).any()
    assert not bool(np.isnan(float(rest.max() + t.max())))
    finite_input = math.isfinite(pt) and math.isfinite(eta)
    assert (int(prep["flag"][0]) == 0) == finite_input


def test_ttbar_integrand_finite_at_truth() -> None:
    """tt̄ → b μ⁺ν b̄ d ū (real |M|², PDFs, exact detector): for simulated events with one muon
    and ≥ 4 jets the recoil is the neutrino, every event has k!/(k−4)! assignments, and the
    integrand at the true partons is finite for most events and never NaN (reference: the
    generator's own momenta, which lie inside the support by construction)."""
    card = load_card(REPO / "cards/processes/ttbar_semileptonic.yaml", kind="process")
    had = integrand_from_card(card, pdf=load_pdf(card.pdf, alpha_s_mz=card.alpha_s_mz))
    det = ParametricDetector(DetectorCard())
    g = torch.Generator().manual_seed(2)
    pt = had(torch.rand(1500, had.dim, generator=g, dtype=torch.float64))
    keep = torch.rand(1500, generator=g, dtype=torch.float64) < pt.weight / pt.weight.max()
    p_out = pt.p_out[keep]
    out = det.simulate(p_out, torch.tensor(had.process.final_state).expand(len(p_out), 6), g)
    sel = ((out.muons.count == 1) & (out.jets.count >= 4) & (out.electrons.count == 0))
    ev = RecoEvents.from_awkward(out.to_awkward()[sel.numpy()])
    assert len(ev) >= 5
    integ = MEMIntegrand(had, ExactTransfer(det))
    assert integ.recoil == 2 and (integ.masses == 0).all()
    prep = integ.prepare(ev)
    k = (ev.mask & (ev.objects[..., 6] == 3)).sum(-1)
    expect = torch.tensor([math.factorial(int(j)) // math.factorial(int(j) - 4) for j in k])
    assert torch.equal(prep["n_valid"], expect)
    from unfoldmem.physics.lorentz import to_ptetaphim

    z = to_ptetaphim(p_out[sel])[None, ..., :3]
    rest, p, x1, x2 = integ.log_rest(z, ev, prep, torch.full((len(ev),), 10.0, dtype=torch.float64))
    total = torch.logsumexp(rest, -1) + integ.log_theta(p, x1, x2)
    assert not torch.isnan(total).any()
    assert float(torch.isfinite(total).double().mean()) > 0.7


def test_luminosities_equal_one_pdf_call_per_flavour() -> None:
    """The MEM's luminosities (all flavours of a beam in one pass at the fixed μ_F, the ln Q²
    step done once on the grid) equal the products of one ``pdf.xfx`` call per (flavour, beam)
    (reference: the one-flavour LHAPDF interpolation) to rounding, for tt̄'s 11 channels and
    Drell–Yan's."""
    card = load_card(REPO / "cards/processes/ttbar_semileptonic.yaml", kind="process")
    had = integrand_from_card(card, pdf=load_pdf(card.pdf, alpha_s_mz=card.alpha_s_mz))
    g = torch.Generator().manual_seed(5)
    for integ in (MEMIntegrand(had, ExactTransfer(ParametricDetector(DetectorCard()))),
                  dy_setup()[2]):
        x1 = torch.exp(-8 * torch.rand(3000, generator=g, dtype=torch.float64))
        x2 = torch.exp(-8 * torch.rand(3000, generator=g, dtype=torch.float64))
        pdf, q = integ.hadronic.pdf, integ.hadronic.mu_f
        ref = torch.stack([(pdf.xfx(a, x1, q) / x1) * (pdf.xfx(b, x2, q) / x2)
                           for a, b in integ.process.channels], -1)
        assert ref.shape[-1] == len(integ.process.channels) and (ref > 0).any()
        assert isinstance(q, float)
        torch.testing.assert_close(integ._luminosities(x1, x2), ref, rtol=1e-12, atol=0)
