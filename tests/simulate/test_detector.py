"""Tests of the parametric detector and its exact transfer density."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from unfoldmem.cards import load_card
from unfoldmem.cards.detector import DetectorCard
from unfoldmem.errors import CardError
from unfoldmem.physics.lorentz import from_ptetaphim, to_ptetaphim
from unfoldmem.simulate.detector import (
    REASONS,
    ParametricDetector,
    partons_to_tensors,
)
from unfoldmem.simulate.detector_kernel import normals, uniforms

CARDS = Path(__file__).resolve().parents[2] / "cards" / "detectors"
DET = ParametricDetector(load_card(CARDS / "default.yaml"))


def _parton(pt: float, eta: float, phi: float, m: float = 0.0) -> torch.Tensor:
    return from_ptetaphim(torch.tensor([pt, eta, phi, m], dtype=torch.float64))


def _copies(parton: torch.Tensor, pdg: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return parton.expand(n, 1, 4).clone(), torch.full((n, 1), pdg)


def _grid_integral(det: ParametricDetector, parton: torch.Tensor, pdg: int,
                   pt_range: tuple[float, float], eta_range: tuple[float, float],
                   phi_range: tuple[float, float], n: tuple[int, int, int],
                   btag: float | None = None) -> float:
    """Trapezoid integral of exp(log_density) over a (pt, eta, phi) box, clipped to the acceptance."""
    cfg = det.card.jets if abs(pdg) in (1, 2, 3, 4, 5, 21) else (
        det.card.muons if abs(pdg) == 13 else det.card.electrons)
    edge = 1 - 1e-12
    f64 = torch.float64
    pt = torch.linspace(max(pt_range[0], cfg.pt_min / edge), pt_range[1], n[0], dtype=f64)
    eta = torch.linspace(max(eta_range[0], -cfg.eta_max * edge),
                         min(eta_range[1], cfg.eta_max * edge), n[1], dtype=f64)
    phi = torch.linspace(*phi_range, n[2], dtype=f64)
    g = torch.stack(torch.meshgrid(pt, eta, phi, indexing="ij"), -1)
    tag = None if btag is None else torch.tensor(btag)
    f = det.log_density(g, parton, torch.tensor(pdg), tag).exp()
    return float(torch.trapezoid(torch.trapezoid(torch.trapezoid(f, phi), eta), pt))


def test_density_normalised_per_object_type() -> None:
    """∫ density dpt' dη' dφ' + P(lost) = 1 for jets (b-tag summed), muons and electrons,
    placed at the pt threshold and the |η| edge of the acceptance.

    Reference: probability conservation of the detector model; the integral is a numeric
    trapezoid over ±8σ (clipped to the acceptance), P(lost) from closed form / quadrature,
    and the lepton P_acc also against scipy's normal CDF.
    """
    det = ParametricDetector(DetectorCard())
    b, mu, el = _parton(26.0, 2.45, 3.1, 4.7), _parton(10.2, -2.4995, 3.13, 0.105), \
        _parton(11.0, 1.2, -3.14, 0.000511)
    cases = [
        (b, 5, (3.0, 65.0), (2.2, 2.7), 0.03, (121, 41, 17)),
        (_parton(80.0, 0.3, -1.0), 21, (10.0, 150.0), (0.05, 0.55), 0.02, (91, 41, 17)),
        (mu, 13, (9.0, 12.0), (-2.51, -2.49), 0.001, (61, 41, 17)),
        (el, 11, (10.0, 12.4), (1.19, 1.21), 0.001, (61, 41, 17)),
    ]
    for parton, pdg, pt_r, eta_r, s_phi, n in cases:
        phi0 = float(torch.atan2(parton[2], parton[1]))
        phi_r = (phi0 - 8 * s_phi, phi0 + 8 * s_phi)
        # the density is 2π-periodic in φ', so the window may run past ±π unsplit
        tags = (0.0, 1.0) if pdg in (5, 21) else (None,)
        total = sum(_grid_integral(det, parton, pdg, pt_r, eta_r, phi_r, n, t)
                    for t in tags)
        lost = float(det.log_prob_lost(parton, torch.tensor(pdg)).exp())
        assert total + lost == pytest.approx(1.0, abs=2e-3), (pdg, total, lost)
        assert 0.01 < lost < 0.99 or pdg == 21
    c = det.card.muons
    s_pt = 10.2 * math.hypot(c.resolution.a[1], c.resolution.b[1] * 10.2)
    p_acc = stats.norm.sf(c.pt_min, 10.2, s_pt) * (
        stats.norm.cdf(c.eta_max, -2.4995, c.sigma_eta[1])
        - stats.norm.cdf(-c.eta_max, -2.4995, c.sigma_eta[1]))
    lost = float(det.log_prob_lost(mu, torch.tensor(13)).exp())
    assert lost == pytest.approx(1 - c.efficiency[1] * p_acc, rel=1e-6)


def test_samples_follow_density_ks() -> None:
    """Standardised smearing residuals of simulated jets and muons are N(0, 1) (KS test).

    Reference: the sampling formulas inverted independently in the test (E' = pt' cosh η'/β).
    """
    n = 20_000
    g = torch.Generator().manual_seed(7)
    jet = _parton(120.0, 0.4, 1.0, 4.7)
    p, pdg = _copies(jet, 5, n)
    out = DET.simulate(p, pdg, g)
    j = out.jets
    m = j.mask & (j.parton_index == 0)
    pt_r, eta_r, phi_r = j.pt[m], j.eta[m], j.phi[m]
    e, pabs = float(jet[0]), float(jet[1:].norm())
    res = DET.card.jets.resolution
    s_e = math.sqrt(res.a[0] ** 2 * e + res.b[0] ** 2 + (res.c[0] * e) ** 2)
    z_e = (pt_r * torch.cosh(eta_r) * e / pabs - e) / s_e
    z_eta = (eta_r - 0.4) / DET.card.jets.sigma_eta[0]
    z_phi = (phi_r - 1.0) / DET.card.jets.sigma_phi[0]
    for z in (z_e, z_eta, z_phi):
        assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    mu = _parton(45.0, -1.0, 2.0, 0.10566)
    out = DET.simulate(*_copies(mu, -13, n), g)
    c = DET.card.muons
    s_pt = 45.0 * math.hypot(c.resolution.a[0], c.resolution.b[0] * 45.0)
    assert stats.kstest(((out.muons.pt[out.muons.mask] - 45.0) / s_pt).numpy(),
                        "norm").pvalue > 1e-3
    assert torch.all(out.muons.tag[out.muons.mask] == 1.0)  # mu+ has charge +1


def test_samples_follow_density_chi2_near_threshold() -> None:
    """Binned pt' of a jet near threshold vs the density integrated per bin (χ² test).

    Reference: log_density integrated numerically over (η', φ') in each pt' bin.
    """
    n = 40_000
    parton = _parton(30.0, 1.2, 0.0)
    out = DET.simulate(*_copies(parton, 1, n), torch.Generator().manual_seed(3))
    j = out.jets
    pt = j.pt[j.mask & (j.parton_index == 0)].numpy()
    edges = np.linspace(25.0, 40.0, 16)
    counts, _ = np.histogram(pt, edges)
    expected = []
    for lo, hi in itertools.pairwise(edges):
        expected.append(n * _grid_integral(DET, parton, 1, (lo, hi), (0.9, 1.5), (-0.2, 0.2),
                                           (21, 41, 17)))
    expected = np.array(expected)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert stats.chi2.sf(chi2, len(counts)) > 1e-3, (counts, expected)


def test_efficiencies_and_btag_match_card() -> None:
    """Detected fractions = ε·P_acc, b-tag fractions = card values (4σ binomial).

    Reference: the card's efficiencies and tag probabilities.
    """
    n = 20_000
    g = torch.Generator().manual_seed(11)
    for pdg, parton, p_tag in ((5, _parton(100.0, 0.5, 0.0, 4.7), 0.70),
                               (4, _parton(100.0, 1.8, 0.0, 1.5), 0.15),
                               (21, _parton(100.0, -0.5, 0.0), 0.01)):
        out = DET.simulate(*_copies(parton, pdg, n), g)
        j = out.jets
        m = j.mask & (j.parton_index == 0)
        p_det = 1 - float(DET.log_prob_lost(parton, torch.tensor(pdg)).exp())
        k = int(m.sum())
        assert abs(k - n * p_det) < 4 * math.sqrt(n * p_det * (1 - p_det))
        tags = int(j.tag[m].sum())
        assert abs(tags - k * p_tag) < 4 * math.sqrt(k * p_tag * (1 - p_tag)) + 1
    out = DET.simulate(*_copies(_parton(50.0, 2.0, 0.0, 0.000511), 11, n), g)
    eff = DET.card.electrons.efficiency[1]
    k = int(out.electrons.count.sum())
    assert abs(k - n * eff) < 4 * math.sqrt(n * eff * (1 - eff))


def test_jet_multiplicity_fractions_match_card() -> None:
    """n_jets of a 4-quark event = Binomial(4, ε) ⊗ truncated Poisson ISR law (χ²).

    Reference: the card's efficiency and ISR law (Poisson mean 0.6, truncated at 4).
    """
    n = 40_000
    quarks = torch.stack([_parton(150.0, e, f) for e, f in ((0.1, 0), (0.5, 2), (-0.7, -2),
                                                            (1.0, 1))])
    p = quarks.expand(n, 4, 4).clone()
    pdg = torch.tensor([5, -5, 2, -1]).expand(n, 4)
    out = DET.simulate(p, pdg, torch.Generator().manual_seed(5))
    p_det = (1 - DET.log_prob_lost(quarks, pdg[0]).exp()).numpy()
    hard = np.array([1.0])
    for q in p_det:
        hard = np.convolve(hard, [1 - q, q])
    expected = np.convolve(hard, DET.isr_probs.numpy()) * n
    counts = np.bincount(out.jets.count.numpy(), minlength=len(expected))
    keep = expected > 5
    chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    assert stats.chi2.sf(chi2, int(keep.sum()) - 1) > 1e-3
    isr = np.bincount(out.n_isr.numpy(), minlength=5)
    pk = DET.isr_probs.numpy()
    assert np.all(np.abs(isr - n * pk) < 4 * np.sqrt(n * pk * (1 - pk)) + 1)
    assert (counts[5:].sum() > 0.1 * n) and (counts[6:].sum() > 0.01 * n)  # 5, 6+ jets exist


def test_isr_and_met_densities_normalised() -> None:
    """ISR (pt, η, φ) density and MET (pt, φ) density integrate to 1; samples match the mean.

    Reference: analytic Pareto/uniform normalisation and the 2D Gaussian; numeric trapezoid.
    """
    c = DET.card.isr
    pt = torch.logspace(math.log10(c.pt_min * (1 + 1e-12)), 5, 20001, dtype=torch.float64)
    reco = torch.stack([pt, torch.zeros_like(pt), torch.zeros_like(pt)], -1)
    f = DET.log_density_isr(reco).exp() * (2 * c.eta_max) * (2 * math.pi)
    assert float(torch.trapezoid(f, pt)) == pytest.approx(1.0, abs=1e-4)
    mpt = torch.linspace(1e-9, 300, 1501, dtype=torch.float64)
    mphi = torch.linspace(-math.pi, math.pi, 721, dtype=torch.float64)
    gpt, gphi = torch.meshgrid(mpt, mphi, indexing="ij")
    mean, sigma = torch.tensor([30.0, -20.0], dtype=torch.float64), torch.tensor(15.0).double()
    f = ParametricDetector.log_density_met(gpt, gphi, mean, sigma).exp()
    assert float(torch.trapezoid(torch.trapezoid(f, mphi), mpt)) == pytest.approx(1, abs=1e-4)


def test_reason_codes() -> None:
    """Each −inf comes with the documented reason; finite values with reason 0."""
    par = torch.stack([_parton(50.0, 0.0, 0.0), _parton(50.0, 0.0, 0.0), _parton(50.0, 0, 0),
                       torch.zeros(4, dtype=torch.float64), _parton(50.0, 0.0, 0.0)])
    reco = torch.tensor([[50.0, 0.0, 0.0], [5.0, 0.0, 0.0], [50.0, 0.0, 0.0],
                         [50.0, 0.0, 0.0], [math.nan, 0.0, 0.0]], dtype=torch.float64)
    pdg = torch.tensor([21, 21, 12, 21, 21])
    lp, why = DET.log_density(reco, par, pdg, with_reason=True)
    assert why.tolist() == [0, 1, 3, 2, 4]
    assert torch.isfinite(lp[0]) and torch.isneginf(lp[1:]).all()
    assert set(why.tolist()) <= set(REASONS)
    det0 = ParametricDetector(DetectorCard.model_validate({"jets": {"efficiency": [0.0, 0.0]}}))
    assert det0.log_density(reco[:1], par[:1], pdg[:1], with_reason=True)[1].tolist() == [5]


def test_seed_determinism_and_awkward_roundtrip() -> None:
    """Same seed → identical output; another seed differs; records follow CONTRACTS.md."""
    quarks = torch.stack([_parton(80.0, 0.2 * i, i) for i in range(5)]).expand(50, 5, 4)
    pdg = torch.tensor([5, -5, 2, -11, 12]).expand(50, 5)
    a = DET.simulate(quarks, pdg, torch.Generator().manual_seed(1)).to_awkward()
    b = DET.simulate(quarks, pdg, torch.Generator().manual_seed(1)).to_awkward()
    c = DET.simulate(quarks, pdg, torch.Generator().manual_seed(2)).to_awkward()
    assert a.to_list() == b.to_list() and a.to_list() != c.to_list()
    assert set(a.fields) == {"jets", "muons", "electrons", "met"}
    assert {"pt", "eta", "phi", "mass", "btag"} <= set(a.jets.fields)
    pts = a.jets.pt.to_list()
    assert all(row == sorted(row, reverse=True) for row in pts)
    import awkward as ak

    recs = ak.Array({"partons": ak.zip({"E": [[1.0, 2.0], [3.0]], "px": [[0.0, 1.0], [2.0]],
                                        "py": [[0.0, 0.0], [0.0]], "pz": [[1.0, 0.0], [1.0]],
                                        "pdgId": [[1, 2], [13]]})})
    mom, ids = partons_to_tensors(recs)
    assert mom.shape == (2, 2, 4) and ids.tolist() == [[1, 2], [13, 0]]
    recs = ak.with_field(recs, np.array([7, 8]), "event_id")
    out = DET.simulate_records(recs, torch.Generator().manual_seed(0))
    assert out.event_id.to_list() == [7, 8] and len(out.passed) == 2


def test_event_density_is_the_sum_of_its_parts() -> None:
    """log_density_event = Σ matched objects + Σ lost partons + ISR + MET, finite for
    simulated events.

    Reference: the per-object densities summed by hand for one event.
    """
    quarks = torch.stack([_parton(90.0, 0.3, 0.0, 4.7), _parton(20.0, 3.5, 1.0),
                          _parton(40.0, -1.0, 2.0, 0.10566), _parton(30.0, 0.0, -2.0)])
    pdg = torch.tensor([[5, 21, 13, 14]])
    p = quarks.unsqueeze(0)
    out = DET.simulate(p.expand(200, 4, 4), pdg.expand(200, 4), torch.Generator().manual_seed(2))
    lp = DET.log_density_event(out, p.expand(200, 4, 4), pdg.expand(200, 4))
    assert torch.isfinite(lp).all()
    i = int(torch.nonzero(out.n_isr > 0)[0])
    j, mu = out.jets, out.muons
    by_hand = DET.log_density_met(out.met_pt[i], out.met_phi[i], out.met_mean[i],
                                  out.met_sigma[i])
    seen = set()
    for k in range(j.pt.shape[1]):
        if not j.mask[i, k]:
            continue
        r = torch.stack([j.pt[i, k], j.eta[i, k], j.phi[i, k]])
        if j.parton_index[i, k] >= 0:
            a = int(j.parton_index[i, k])
            seen.add(a)
            by_hand = by_hand + DET.log_density(r, quarks[a], pdg[0, a], j.tag[i, k])
        else:
            pm = DET.card.btag.mistag_light[0]
            by_hand = by_hand + DET.log_density_isr(r) + math.log(pm if j.tag[i, k] else 1 - pm)
    for k in range(mu.pt.shape[1]):
        if mu.mask[i, k]:
            a = int(mu.parton_index[i, k])
            seen.add(a)
            r = torch.stack([mu.pt[i, k], mu.eta[i, k], mu.phi[i, k]])
            by_hand = by_hand + DET.log_density(r, quarks[a], pdg[0, a])
    for a in set(range(4)) - seen:
        by_hand = by_hand + DET.log_prob_lost(quarks[a], pdg[0, a])
    by_hand = by_hand + DET.log_prob_n_isr(out.n_isr[i])
    assert float(lp[i]) == pytest.approx(float(by_hand), rel=1e-12, abs=1e-9)


def test_card_errors_name_the_key(tmp_path: Path) -> None:
    """A wrong number of region values is a CardError naming the key."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: detector\njets:\n  efficiency: [0.9]\n")
    with pytest.raises(CardError, match="efficiency"):
        load_card(bad)
    for f in sorted(CARDS.glob("*.yaml")):
        assert ParametricDetector(load_card(f, kind="detector")).isr_probs.sum() == pytest.approx(1)


finite_f = st.floats(-1e6, 1e6, allow_nan=False)
any_f = st.one_of(finite_f, st.sampled_from([0.0, -0.0, 1e-300, 1e300, math.inf, -math.inf,
                                              math.nan, 2.5, -2.5, 2.4999999999, 25.0]))


@settings(max_examples=150, deadline=None)
@given(reco=st.lists(any_f, min_size=3, max_size=3), parton=st.lists(any_f, min_size=4, max_size=4),
       pdg=st.sampled_from([0, 1, -5, 5, 4, 21, 11, -13, 12, 6, 24, 15, 22, 1000022]),
       btag=st.sampled_from([None, 0.0, 1.0, math.nan]))
def test_extreme_kinematics_never_nan(reco: list[float], parton: list[float], pdg: int,
                                      btag: float | None) -> None:
    """Property: any input gives a finite log density with reason 0, or −inf with a reason."""
    r, p = torch.tensor(reco, dtype=torch.float64), torch.tensor(parton, dtype=torch.float64)
    tag = None if btag is None else torch.tensor(btag)
    lp, why = DET.log_density(r, p, torch.tensor(pdg), tag, with_reason=True)
    assert not torch.isnan(lp)
    assert (bool(torch.isfinite(lp)) and int(why) == 0) or (bool(torch.isneginf(lp)) and int(why) > 0)
    lost = DET.log_prob_lost(p, torch.tensor(pdg))
    assert not torch.isnan(lost) and float(lost) <= 0
    if torch.isfinite(p).all():
        out = DET.simulate(p.expand(3, 1, 4), torch.full((3, 1), pdg), torch.Generator().manual_seed(0))
        for t in (out.jets.pt, out.jets.eta, out.muons.pt, out.electrons.pt, out.met_pt):
            assert not torch.isnan(t).any()


def test_kernel_random_streams_are_standard() -> None:
    """The kernel's per-event streams: uniforms U[0, 1) and ziggurat normals N(0, 1), also in the
    tail beyond the ziggurat's base r = 3.654, and the first draws of different events are
    independent.

    Reference: scipy.stats (KS tests, normal tail probabilities), 4σ binomial tolerances.
    """
    key = np.uint64(0x1234_5678_9ABC_DEF0)
    z = normals(key, 3, 400_000)
    assert stats.kstest(z[:200_000], "norm").pvalue > 1e-3
    assert abs(z.mean()) < 4 / math.sqrt(len(z)) and abs(z.var() - 1) < 4 * math.sqrt(2 / len(z))
    for cut in (1.0, 3.6541528853610088, 4.5):
        p = 2 * stats.norm.sf(cut)
        k = int((np.abs(z) > cut).sum())
        assert abs(k - len(z) * p) < 4 * math.sqrt(len(z) * p * (1 - p)) + 1, cut
    u = uniforms(key, 3, 200_000)
    assert stats.kstest(u, "uniform").pvalue > 1e-3 and 0 <= u.min() and u.max() < 1
    first = np.array([[normals(key, i, 1)[0], uniforms(key, i, 1)[0]] for i in range(10_000)])
    assert stats.kstest(first[:, 0], "norm").pvalue > 1e-3
    assert stats.kstest(first[:, 1], "uniform").pvalue > 1e-3
    pairs = np.array([normals(key, i, 2) for i in range(10_000)])
    assert abs(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]) < 4 / math.sqrt(len(pairs))


def test_zero_resolution_detector_returns_lorentz_kinematics() -> None:
    """With every resolution 0 and efficiencies 1, each reco object is its parton: pt, η, φ, m
    from unfoldmem.physics.lorentz, charge −sign(pdg), MET = Σ neutrino pT.

    Reference: unfoldmem.physics.lorentz conversions of the input partons.
    """
    zero2 = [0.0, 0.0]
    card = DetectorCard.model_validate({
        "jets": {"resolution": {"a": zero2, "b": zero2, "c": zero2}, "sigma_eta": zero2,
                 "sigma_phi": zero2, "efficiency": [1.0, 1.0]},
        "muons": {"mass": 0.1056583755, "resolution": {"a": zero2, "b": zero2},
                  "sigma_eta": zero2, "sigma_phi": zero2, "efficiency": [1.0, 1.0]},
        "met": {"noise": 0.0, "noise_sumet": 0.0}, "isr": {"distribution": "none"}})
    det = ParametricDetector(card)
    g = torch.Generator().manual_seed(4)
    n = 500
    v = torch.stack([30 + 100 * torch.rand(n, 3, generator=g, dtype=torch.float64),
                     4 * torch.rand(n, 3, generator=g, dtype=torch.float64) - 2,
                     (2 * torch.rand(n, 3, generator=g, dtype=torch.float64) - 1) * math.pi,
                     torch.tensor([4.7, 0.0, 0.0], dtype=torch.float64).expand(n, 3)], -1)
    p = from_ptetaphim(v)
    pdg = torch.tensor([5, -13, 14]).expand(n, 3)
    out = det.simulate(p, pdg, g)
    assert out.jets.pt.shape == (n, 1) and out.muons.pt.shape == (n, 1)  # widths: 1 jet, 1 μ
    ref = to_ptetaphim(p)
    for block, k in ((out.jets, 0), (out.muons, 1)):
        inside = ref[:, k, 1].abs() < 2.5
        assert torch.equal(block.mask[:, 0], inside) and torch.all(block.parton_index[inside, 0] == k)
        got = torch.stack([block.pt, block.eta, block.phi], -1)[inside, 0]
        assert torch.allclose(got, ref[inside, k, :3], rtol=1e-7, atol=1e-7)  # σ floor 1e-9
    assert torch.allclose(out.jets.mass[out.jets.mask], ref[:, 0, 3][out.jets.mask[:, 0]], rtol=1e-7)
    assert torch.all(out.muons.tag[out.muons.mask] == 1.0)
    met = torch.stack([out.met_pt * torch.cos(out.met_phi), out.met_pt * torch.sin(out.met_phi)], -1)
    assert torch.allclose(met, p[:, 2, 1:3], rtol=1e-7, atol=1e-7)


def test_output_independent_of_thread_count() -> None:
    """Events draw from per-event streams: 1 or 2 threads give bit-identical output."""
    n = 50_000
    p = _parton(60.0, 0.5, 1.0, 4.7).expand(n, 1, 4)
    pdg = torch.full((n, 1), 5)
    threads = torch.get_num_threads()
    try:
        outs = []
        for k in (1, 2):
            torch.set_num_threads(k)
            outs.append(DET.simulate(p, pdg, torch.Generator().manual_seed(9)))
    finally:
        torch.set_num_threads(threads)
    a, b = outs
    for x, y in ((a.jets.pt, b.jets.pt), (a.jets.tag, b.jets.tag), (a.met_pt, b.met_pt),
                 (a.jets.parton_index, b.jets.parton_index), (a.n_isr, b.n_isr)):
        assert torch.equal(x, y)
