"""Tests of the parton-level generator (VEGAS + unweighting) and the full generation to a file."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch
from scipy import stats

from unfoldmem.cards import load_card
from unfoldmem.cards.run import GeneratorConfig, SelectionConfig
from unfoldmem.io import read_detector, read_metadata, read_partons
from unfoldmem.physics import lorentz
from unfoldmem.physics.hadronic import integrand_from_card
from unfoldmem.physics.xsec import cross_section
from unfoldmem.simulate.generator import EventGenerator, generate_file

ROOT = Path(__file__).resolve().parents[2]
SMALL = GeneratorConfig(neval=2000, nitn_adapt=3, n_presample=10_000, batch=10_000, chunk_size=3000)


@pytest.fixture(scope="module")
def dy() -> object:
    return integrand_from_card(load_card(ROOT / "cards/processes/drell_yan.yaml"))


def _observables(momenta: torch.Tensor) -> dict[str, np.ndarray]:
    lm, lp = momenta[:, 0], momenta[:, 1]  # mu-, mu+ (the process' final_state order)
    q = lm + lp
    return {
        "m_ll": lorentz.mass(q).numpy(),
        "y_ll": lorentz.rapidity(q).numpy(),
        "pt_mu": lorentz.pt(lm).numpy(),
        "eta_mu": lorentz.eta(lm).numpy(),
        "cos_cs": lorentz.cos_theta_cs(lm, lp).numpy(),
    }


def _chi2_two_sample(a: np.ndarray, wa: np.ndarray, b: np.ndarray, edges: np.ndarray) -> float:
    """p-value of a weighted vs an unweighted histogram (shapes, unit-normalised)."""
    sw, _ = np.histogram(a, edges, weights=wa)
    sw2, _ = np.histogram(a, edges, weights=wa**2)
    nb, _ = np.histogram(b, edges)
    pa, pb = sw / wa.sum(), nb / len(b)
    var = sw2 / wa.sum() ** 2 + nb / len(b) ** 2
    keep = var > 0
    chi2 = float(((pa - pb)[keep] ** 2 / var[keep]).sum())
    return float(stats.chi2.sf(chi2, int(keep.sum()) - 1))


def test_unweighted_reproduce_weighted_distributions(dy: object) -> None:
    """Unweighted events follow the weighted distribution of 5 observables (χ² two-sample).

    Reference: the weighted sample itself (the exact integrand density, importance-sampled).
    """
    gen_w = EventGenerator(dy, SMALL, seed=11)
    w = next(iter(gen_w.generate(3000, weighted=True)))
    gen_u = EventGenerator(dy, SMALL, seed=12)
    u = next(iter(gen_u.generate(3000)))
    assert torch.all(u.weight >= 1.0) and float(u.weight.mean()) < 1.01
    assert float(w.weight.mean()) == pytest.approx(1.0, abs=0.1)
    ow, ou = _observables(w.momenta), _observables(u.momenta)
    edges = {
        "m_ll": np.linspace(60, 120, 13),
        "y_ll": np.linspace(-3, 3, 13),
        "pt_mu": np.linspace(0, 70, 15),
        "eta_mu": np.linspace(-5, 5, 11),
        "cos_cs": np.linspace(-1, 1, 11),
    }
    for name, e in edges.items():
        p = _chi2_two_sample(ow[name], w.weight.numpy(), ou[name], e)
        assert p > 1e-3, (name, p)
    assert set(zip(u.id1.tolist(), u.id2.tolist(), strict=True)) <= set(dy.process.channels)
    assert torch.all(u.id1 == -u.id2)


def test_sigma_matches_xsec_integrator(dy: object) -> None:
    """Generator σ (presample and generation trials) = VEGAS `xsec` σ within 4σ.

    Reference: unfoldmem.physics.xsec.cross_section (stratified VEGAS, independent seed).
    """
    ref = cross_section(dy, neval=3000, nitn_adapt=3, nitn=3, seed=5)
    gen = EventGenerator(dy, SMALL, seed=3)
    gen.adapt()
    assert abs(gen.sigma - ref.sigma) < 4 * np.hypot(gen.sigma_error, ref.error)
    for _ in gen.generate(1000):
        pass
    s, e = gen.generation_sigma()
    assert abs(s - ref.sigma) < 4 * np.hypot(e, ref.error)
    assert 0 < gen.efficiency <= 1


def test_generate_file_seed_determinism(dy: object, tmp_path: Path) -> None:
    """Same seed → identical trees; different seed → different events; pass_reco consistent."""
    det = load_card(ROOT / "cards/detectors/default.yaml")
    sel = SelectionConfig(n_leptons_min=2, lepton_pt_min=20.0)
    cfg = SMALL.model_copy(update={"chunk_size": 150, "n_presample": 4000, "neval": 1000})
    paths = [tmp_path / f"{i}.root" for i in range(3)]
    for p, seed in zip(paths, (4, 4, 5), strict=True):
        generate_file(p, dy, det, sel, 400, seed, cfg)
    d = [read_detector(p) for p in paths]
    par = [read_partons(p) for p in paths]
    assert ak.to_list(d[0]) == ak.to_list(d[1]) and ak.to_list(par[0]) == ak.to_list(par[1])
    assert ak.to_list(par[0].partons) != ak.to_list(par[2].partons)
    assert len(par[0]) == 400 and list(par[0].event_id) == list(range(400))
    assert int(ak.sum(par[0].pass_reco)) == len(d[0])
    assert set(d[0].event_id.to_list()) == set(par[0].event_id[par[0].pass_reco].to_list())
    assert ak.all(ak.num(d[0].muons, axis=1) >= 2)
    meta = read_metadata(paths[0])
    assert meta["seed"] == 4 and meta["sigma_pb"] > 0
    assert np.allclose(par[0].theta.m_z.to_numpy(), 91.1876)


@pytest.mark.slow
def test_ttbar_unweighted_reproduce_weighted() -> None:
    """t tbar -> b mu nu bbar d ubar: unweighted vs weighted on m(b mu nu), m(bbar d ubar),
    pt(top), y(top) and the muon pt (χ² two-sample, p > 1e-3).

    Reference: the weighted sample (importance-sampled exact integrand).
    """
    integ = integrand_from_card(load_card(ROOT / "cards/processes/ttbar_semileptonic.yaml"))
    cfg = GeneratorConfig(neval=10_000, nitn_adapt=6, n_presample=100_000, chunk_size=20_000)
    w = next(iter(EventGenerator(integ, cfg, seed=1).generate(20_000, weighted=True)))
    u = next(iter(EventGenerator(integ, cfg, seed=2).generate(20_000)))

    def obs(m: torch.Tensor) -> dict[str, np.ndarray]:
        t, tb = m[:, 0] + m[:, 1] + m[:, 2], m[:, 3] + m[:, 4] + m[:, 5]
        return {"m_t": lorentz.mass(t).numpy(), "m_tbar": lorentz.mass(tb).numpy(),
                "pt_t": lorentz.pt(t).numpy(), "y_t": lorentz.rapidity(t).numpy(),
                "pt_mu": lorentz.pt(m[:, 1]).numpy()}

    ow, ou = obs(w.momenta), obs(u.momenta)
    edges = {"m_t": np.linspace(165, 180, 11), "m_tbar": np.linspace(165, 180, 11),
             "pt_t": np.linspace(0, 400, 11), "y_t": np.linspace(-2.5, 2.5, 11),
             "pt_mu": np.linspace(0, 200, 11)}
    for name, e in edges.items():
        p = _chi2_two_sample(ow[name], w.weight.numpy(), ou[name], e)
        assert p > 1e-3, (name, p)


@pytest.mark.slow
def test_ttbar_small_card_unweighting_is_seed_independent() -> None:
    """The OmniFold/cINN closures' generator settings (``cards/runs/ttbar_small.yaml``: a light
    VEGAS adaptation, w_max from 20 000 presampled points, so each seed has its own map and
    w_max): 12 samples of 20 000 unweighted events with different seeds, as 6 disjoint pairs.
    Per observable (top pt, m_tt, y_tt, cos θ*) the pairs' summed χ² (weights and Σw², shapes)
    follows χ²(Σ ndf): p > 1e-3 (measured on 20 disjoint pairs of 40 000: mean χ²/ndf
    0.94-1.02, docs/omnifold.md).

    Reference: the χ² of independent samples of one law (a seed-dependent bias of the
    unweighting, e.g. from w_max or the adaptation, would differ between the pairs' members).
    """
    from unfoldmem.physics.observables import evaluate, observables_for

    run = load_card(ROOT / "cards/runs/ttbar_small.yaml", "run")
    integ = integrand_from_card(load_card(run.process, "process"), theta=run.theta)
    names = ("pt_t_had", "m_tt", "y_tt", "cos_theta_star")
    bins = {o.name: o.binning for o in observables_for("ttbar_semileptonic")}

    def sample(seed: int) -> dict[str, np.ndarray]:
        gen = EventGenerator(integ, run.generator, seed=seed, theta=run.theta)
        parts = list(gen.generate(20_000))
        out = {k: np.concatenate([evaluate("ttbar_semileptonic", c.momenta, c.pdg[0], [k])[k]
                                  .numpy() for c in parts]) for k in names}
        out["w"] = np.concatenate([c.weight.numpy() for c in parts])
        return out

    def chi2(a: dict[str, np.ndarray], b: dict[str, np.ndarray], name: str) -> tuple[float, int]:
        n, lo, hi = bins[name]
        e = np.linspace(lo, hi, n + 1)
        ha, hb = (np.histogram(s[name], e, weights=s["w"])[0] / s["w"].sum() for s in (a, b))
        va, vb = (np.histogram(s[name], e, weights=s["w"] ** 2)[0] / s["w"].sum() ** 2
                  for s in (a, b))
        k = (va + vb) > 0
        return float(((ha - hb)[k] ** 2 / (va + vb)[k]).sum()), int(k.sum()) - 1

    samples = [sample(s) for s in range(101, 113)]
    for name in names:
        pairs = [chi2(samples[2 * i], samples[2 * i + 1], name) for i in range(6)]
        c, ndf = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
        assert stats.chi2.sf(c, ndf) > 1e-3, (name, c, ndf)
