"""tt̄ closure of `unfoldmem unfold` against a different truth: a reweighted top-pt spectrum.

Simulation: generated g g, q q̄ → t t̄ → b μ⁺ν b̄ d ū (``cards/runs/ttbar_small.yaml``, seed 1)
through the default parametric detector. Data: an independent generation (seed 101) thinned
by accept–reject with the known weight w = 1 + p_T(t)/(150 GeV) (:func:`top_pt_weight`; at LO
both tops have the same p_T), which raises the mean top p_T by 20 % (126 → 150 GeV) and keeps
the generator's own (unit) weights, like real data. A small cINN (resonance coordinates with the
leptonic top's decay in top-frame lepton coordinates, a 3-member deep ensemble for the model uncertainty) is trained on the simulation
(`unfoldmem train`) and unfolds the data once and with iterative prior removal
(`unfoldmem unfold --iterations 2 --sim`), all through the CLI, every unfolding refined with
`--refine` (a classifier fitted on the simulation corrects the network's summed posterior,
:mod:`unfoldmem.unfold.refine`; without it the leptonic b leaked out of the jet acceptance:
pooled χ²/ndf of p_T(b_lep) 3.15, η(b_lep) 2.31, p_T(q₂) 1.58, held-out calibration of
η(b_lep) 0.748, docs/unfolding.md).

Independent reference: a fourth generation (seed 301), thinned with the same weight, three
times the data's size, scaled to the data's number of passing events; the χ² adds its Poisson
variance to the errors `unfoldmem unfold` reports (bootstrap ⊕ ensemble). The slow test
unfolds five such data samples (:data:`CLOSURE_DATA_SEEDS`) with the same model and pools
their χ² per observable (Σχ²/Σndf, see :data:`CLOSURE_DATA_SEEDS` for why). The tool's own
closure in ``summary.json`` compares with the data's own truth, i.e. the same events, whose
shared fluctuations make that χ² about half as large (reported alongside, not asserted).
Per-event 68 % calibration: a held-out simulated sample (seed 201) with the simulation's truth.
To show the comparison can fail, the prior (the simulation's truth) is compared with the
reference with the one-pass errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests._support.cli_pipeline import ROOT, accept_reject, cli
from tests._support.ttbar_closure import (
    CLOSURE_DATA_SEEDS,
    CONSTANT,
    TOP_PT,
    ClosureConfig,
    chi2_table,
    run_closure,
    top_pt_weight,
)


def test_accept_reject_thins_to_the_reweighted_spectrum(tmp_path: Path) -> None:
    """The thinned file follows w · f_generator (reference: the weighted mean of the whole
    generated sample, exact for accept–reject), keeps unit generator weights and whole events
    (every kept detector event has its parton event and vice versa for passing ones)."""
    from unfoldmem.io import read_detector, read_partons

    gen, out = tmp_path / "gen.root", tmp_path / "thin.root"
    cli("generate", ROOT / "cards/runs/ttbar_small.yaml", "-n", 3000, "-o", gen, "--seed", 11)
    stats = accept_reject(gen, out, top_pt_weight, seed=3)
    pa_all, pa, ev = read_partons(gen), read_partons(out), read_detector(out)
    w = top_pt_weight(pa_all)
    pt_all = w - 1.0  # p_T(t) / 150 GeV
    p = stats["kept"] / stats["generated"]
    expect = w.mean() / w.max()
    assert abs(p - expect) < 4 * np.sqrt(expect * (1 - expect) / len(w)), (p, expect)
    kept = top_pt_weight(pa) - 1.0
    # the kept mean against the w-weighted mean of all events, 4σ of the kept sample's mean
    target = float((w * pt_all).sum() / w.sum())
    assert abs(kept.mean() - target) < 4 * kept.std() / np.sqrt(len(kept)), (kept.mean(), target)
    assert kept.mean() > pt_all.mean() + 4 * kept.std() / np.sqrt(len(kept))
    np.testing.assert_array_equal(np.sort(np.asarray(ev.event_id)),
                                  np.sort(np.asarray(pa.event_id)[np.asarray(pa.pass_reco)]))
    assert stats["kept_pass"] == len(ev)
    assert np.array_equal(np.asarray(pa.weight),
                          np.asarray(pa_all.weight)[np.isin(np.asarray(pa_all.event_id),
                                                            np.asarray(pa.event_id))])


@pytest.fixture(scope="module")
def closure(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    res = run_closure(tmp_path_factory.mktemp("tt_closure"),
                      ClosureConfig(data_seeds=CLOSURE_DATA_SEEDS))
    res["table"] = chi2_table(res)
    for name, row in res["table"].items():
        print(name, {k: None if v is None else round(v, 3) for k, v in row.items()})
    for seed, rows in res["chi2_per_seed"].items():
        print("seed", seed, {n: round(r["iterative"], 2) for n, r in rows.items()})
    print("mean pt_t", res["mean_pt_t"], "seconds", res["seconds"])
    return res


@pytest.mark.slow
def test_ttbar_top_pt_closure_one_pass_vs_iterative(closure: dict[str, Any]) -> None:
    """The reweighted observable: the prior (simulation truth) fails the top-pt χ² against the
    independent reference with the one-pass errors; the one pass is pulled towards the prior
    (⟨p_T(t)⟩ more than 2σ of the reference mean low), iterating shrinks that bias and closes
    (χ²/ndf < 1.5); on held-out simulated events the same network is unbiased in ⟨p_T(t)⟩
    (3σ of their truth mean), so the one-pass bias is the prior's."""
    tab, m = closure["table"], closure["mean_pt_t"]
    assert set(closure["heldout"]["calibration_skipped"]) == set(CONSTANT)
    for name in TOP_PT:
        assert tab[name]["prior"] > 1.5, (name, tab[name])
    bias_one, bias_it = m["one_pass"] - m["reference"], m["iterative"] - m["reference"]
    assert bias_one < -2 * m["reference_error"], m
    assert abs(bias_it) < abs(bias_one), m
    sigma_held = m["reference_error"] * np.sqrt(closure["thinning"]["reference"]["kept_pass"]
                                                / closure["heldout"]["events"])
    assert abs(m["heldout"] - m["heldout_truth"]) < 3 * sigma_held, m


@pytest.mark.slow
def test_ttbar_every_observable_closes(closure: dict[str, Any]) -> None:
    """Issue #8's criterion for every standard tt̄ observable except pt_tt (0 at LO): χ²/ndf < 1.5
    after iterating and per-event 68 % calibration in [0.63, 0.73] on held-out events."""
    bad = {name: (round(row["iterative"], 2), row["calib_heldout"])
           for name, row in closure["table"].items()
           if name not in CONSTANT
           and not (row["iterative"] < 1.5 and 0.63 <= row["calib_heldout"] <= 0.73)}
    assert not bad, bad

