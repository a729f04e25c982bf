"""The tt̄ top-pt closure of `unfoldmem unfold` (tests/unfold/test_cinn_unfold_ttbar_closure.py,
examples/ttbar_top_pt_closure.py): generation, accept–reject thinning with the top-p_T weight,
training, one-pass, iterative and held-out unfolding through the CLI, and the χ² tables against
an independent reference (the recipe is in the test module's docstring)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from tests._support.cli_pipeline import ROOT, accept_reject, cli, unfold

PROCESS = "ttbar_semileptonic"
#: the top-pt weight's scale: w = 1 + p_T(t) / PT_SCALE
PT_SCALE = 150.0
#: identically constant at LO (p_T of the tt̄ pair is 0): no calibration, χ² not asserted
CONSTANT = ("pt_tt",)
TOP_PT = ("pt_t_had", "pt_t_lep")
#: generation seed of the (first) data sample
DATA_SEED = 101
#: data pseudo-experiments of the slow closure (thinning uses seed + 1, so odd seeds keep
#: every sample independent): χ²/ndf < 1.5 per observable on ONE sample fails even a perfect
#: unfolding often — with ideal errors P(χ²_ndf/ndf > 1.5) is 0.04–0.07 per observable at
#: ndf 19–30, so all 18 pass together with probability ≈ 0.3 — so the χ² is pooled over five
CLOSURE_DATA_SEEDS = (101, 103, 105, 107, 109)

#: resonance coordinates (p_T(t) is a flow coordinate; W and top decay angles about their
#: flight directions) and a 3-member deep ensemble, whose spread is the reported model
#: uncertainty: the tt̄ default until session 8, kept for the docs' comparison
RESONANCE_CARD = (
    "kind: model\nname: tt_resonances\nmodel: cinn\n"
    "encoding: {max_jets: 6, max_leptons: 2, parton_coordinates: resonances}\n"
    "flow: {transforms: 4, bins: 8, hidden: [64, 64]}\n"
    "condition: {embed: 32, hidden: [64], context: 16}\n"
    "training: {epochs: 20, batch_size: 256, lr: 0.002, patience: 0, seed: 1}\n"
    "uncertainty: {method: ensemble, members: 3}\n"
)
#: the package's tt̄ default (cards/models/cinn_ttbar.yaml): the same with the leptonic top's
#: decay in top-frame lepton coordinates (encoding.leptonic_chain: top_lepton)
CARD = RESONANCE_CARD.replace("parton_coordinates: resonances}",
                              "parton_coordinates: resonances, leptonic_chain: top_lepton}")
#: the on-shell coordinates of test_cinn_unfold_onshell.py (docs' comparison)
ONSHELL_CARD = RESONANCE_CARD.replace("resonances", "onshell")


def top_pt_weight(partons: ak.Array) -> np.ndarray:
    """w = 1 + p_T(t_had)/(150 GeV) per parton event, (n,); ⟨p_T⟩ rises from 126 to 150 GeV."""
    from unfoldmem.unfold.features import parton_observables

    _, obs = parton_observables(partons, ["pt_t_had"], PROCESS)
    return 1.0 + obs["pt_t_had"] / PT_SCALE


@dataclass
class ClosureConfig:
    """Sizes and settings of one closure run (defaults: the slow test's)."""

    n_sim: int = 16000
    n_data_generated: int = 14000
    n_heldout: int = 4000
    n_reference: int = 42000
    card: str = CARD
    samples: int = 30
    iterations: int = 2
    retrain_epochs: int = 40
    plots: bool = False
    extra_unfold: tuple[str, ...] = field(default_factory=tuple)
    #: ``unfold --refine`` (classifier refinement fitted on the simulation) for the held-out,
    #: one-pass and iterative unfoldings alike
    refine: bool = True
    #: seeds of the data pseudo-experiments (generation seed; thinning seed + 1); one model,
    #: one reference and one held-out sample serve them all
    data_seeds: tuple[int, ...] = (DATA_SEED,)


def _values(hist: dict[str, Any]) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in hist], dtype=np.float64)


def _mean(values: np.ndarray, edges: np.ndarray) -> float:
    c = 0.5 * (edges[1:] + edges[:-1])
    return float((values * c).sum() / values.sum())


def truth_histograms(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Parton truth of the events of ``path`` that pass the selection, in every observable's
    binning: ``{name: (Σw, Σw²)}``."""
    from unfoldmem.io import read_partons
    from unfoldmem.physics.observables import observables_for
    from unfoldmem.unfold.features import parton_observables
    from unfoldmem.unfold.uncertainty import edges_of

    pa = read_partons(path)
    pa = pa[np.asarray(pa.pass_reco)]
    w = np.asarray(pa.weight, dtype=np.float64)
    _, vals = parton_observables(pa, None, PROCESS)
    out = {}
    for o in observables_for(PROCESS):
        e = edges_of(o.binning)
        out[o.name] = (np.histogram(vals[o.name], e, weights=w)[0],
                       np.histogram(vals[o.name], e, weights=w * w)[0])
    return out


def chi2_parts(values: np.ndarray, variance: np.ndarray,
               ref: tuple[np.ndarray, np.ndarray], scale: float) -> tuple[float, int]:
    """(χ², ndf) of a histogram (values, variance) against ``scale`` × an independent reference
    (Σw, Σw²). As in the tool's closure (:func:`unfoldmem.unfold.report.closure`) the
    reference's variance is the larger of its observed scale²·Σw² and the scale·value a
    reference agreeing with the histogram would have (Pearson), so that an empty reference
    bin does not get zero variance; bins with zero summed variance are left out."""
    d = values - scale * ref[0]
    den = variance + np.maximum(scale**2 * ref[1], scale * np.abs(values))
    ok = np.isfinite(d) & (den > 0)
    return float((d[ok] ** 2 / den[ok]).sum()), int(ok.sum())


def _pooled(parts: list[tuple[float, int]]) -> float:
    """Σχ²/Σndf of independent (χ², ndf) pairs: one χ² test of all of them."""
    return sum(c for c, _ in parts) / max(sum(n for _, n in parts), 1)


def run_closure(work: Path, cfg: ClosureConfig | None = None) -> dict[str, Any]:
    """Generate, thin, train, unfold (one pass, iterative, held-out); collect the figures.

    Returns:
        ``{"one_pass", "iterative", "heldout"}`` summaries of `unfoldmem unfold`; ``"chi2"``:
        per observable χ²/ndf against the independent reference (scaled to the data's number
        of passing events) of one pass, iterative and the prior (the simulation's truth,
        scaled the same way, with the one-pass errors); ``"mean_pt_t"``: ⟨p_T(t_had)⟩ in
        0–500 GeV of the reference, the data's own truth, prior, one pass and iterative, with
        the reference mean's error, and of the held-out sample (unfolded and truth); ``"thinning"`` and ``"seconds"`` per stage.
    """
    cfg = cfg or ClosureConfig()
    run = ROOT / "cards/runs/ttbar_small.yaml"
    sim, held = work / "sim.root", work / "heldout.root"
    sec: dict[str, float] = {}
    t = time.perf_counter()
    cli("generate", run, "-n", cfg.n_sim, "-o", sim, "--seed", 1)
    cli("generate", run, "-n", cfg.n_heldout, "-o", held, "--seed", 201)
    thin = {}
    samples = [("reference", cfg.n_reference, 301)]
    samples += [(_tag("data", s), cfg.n_data_generated, s) for s in cfg.data_seeds]
    for name, n, seed in samples:
        gen = work / f"{name}_generated.root"
        cli("generate", run, "-n", n, "-o", gen, "--seed", seed)
        thin[name] = accept_reject(gen, work / f"{name}.root", top_pt_weight, seed=seed + 1)
    sec["generate"] = time.perf_counter() - t
    card, model = work / "card.yaml", work / "model"
    card.write_text(cfg.card)
    t = time.perf_counter()
    cli("train", card, "--data", sim, "-o", model)
    sec["train"] = time.perf_counter() - t
    plots = () if cfg.plots else ("--no-plots",)
    common = (*plots, "--phase-space", "reco", *cfg.extra_unfold)
    res: dict[str, Any] = {"thinning": thin, "config": cfg.__dict__, "seconds": sec}
    t = time.perf_counter()
    refine = ("--sim", sim, "--refine") if cfg.refine else ()
    res["heldout"] = unfold(held, model, work / "heldout", cfg.samples, *common, *refine)
    sec["unfold_heldout"] = time.perf_counter() - t
    for seed in cfg.data_seeds:
        data = work / f"{_tag('data', seed)}.root"
        one, it = _tag("one_pass", seed), _tag("iterative", seed)
        t = time.perf_counter()
        res[one] = unfold(data, model, work / one, cfg.samples, *common, *refine)
        sec[one] = time.perf_counter() - t
        t = time.perf_counter()
        res[it] = unfold(data, model, work / it, cfg.samples, *common, *(refine or ("--sim", sim)),
                         "--iterations", cfg.iterations, "--retrain-epochs", cfg.retrain_epochs)
        sec[it] = time.perf_counter() - t
    return analyse(work, res)


def _tag(name: str, seed: int) -> str:
    """File and result names of a data pseudo-experiment: the first seed keeps the plain name
    (``data``, ``one_pass``, ``iterative``), the others get ``_<seed>``."""
    return name if seed == DATA_SEED else f"{name}_{seed}"


def analyse(work: Path, res: dict[str, Any]) -> dict[str, Any]:
    """Add ``"chi2"`` and ``"mean_pt_t"`` (see :func:`run_closure`) to the summaries ``res``
    of a closure run in ``work``.

    With several data pseudo-experiments (``res["config"]["data_seeds"]``) ``"chi2"`` holds
    one χ² over all of them (Σχ²/Σndf; they are independent samples compared with the same
    reference, whose variance is small beside theirs) and ``"chi2_per_seed"`` each one's;
    ``"mean_pt_t"`` averages the data-dependent means over them."""
    sim, held = work / "sim.root", work / "heldout.root"
    thin = res["thinning"]
    seeds = tuple(res["config"].get("data_seeds", (DATA_SEED,)))
    ref = truth_histograms(work / "reference.root")
    prior = truth_histograms(sim)
    per_seed: dict[int, dict[str, dict[str, tuple[float, int]]]] = {}
    means: dict[str, list[float]] = {"data_truth": [], "prior": [], "one_pass": [],
                                     "iterative": []}
    edges = np.asarray(res[_tag("one_pass", seeds[0])]["observables"]["pt_t_had"]["edges"])
    for seed in seeds:
        one, it = res[_tag("one_pass", seed)], res[_tag("iterative", seed)]
        n_pass = one["events"]
        scale = n_pass / thin["reference"]["kept_pass"]
        per_seed[seed] = {}
        for name, (pv, pvar) in prior.items():
            h1, hk = one["observables"][name], it["observables"][name]
            var1, p_scale = _values(h1["total"]) ** 2, n_pass / pv.sum()
            per_seed[seed][name] = {
                "one_pass": chi2_parts(_values(h1["values"]), var1, ref[name], scale),
                "iterative": chi2_parts(_values(hk["values"]), _values(hk["total"]) ** 2,
                                        ref[name], scale),
                "prior": chi2_parts(pv * p_scale, var1 + pvar * p_scale**2, ref[name], scale),
            }
        own = truth_histograms(work / f"{_tag('data', seed)}.root")
        means["data_truth"].append(_mean(own["pt_t_had"][0], edges))
        means["prior"].append(_mean(prior["pt_t_had"][0], edges))
        for k, r in (("one_pass", one), ("iterative", it)):
            means[k].append(_mean(_values(r["observables"]["pt_t_had"]["values"]), edges))
    res["chi2"] = {name: {k: _pooled([per_seed[s][name][k] for s in seeds])
                          for k in ("one_pass", "iterative", "prior")} for name in prior}
    res["chi2_per_seed"] = {s: {name: {k: c / max(n, 1) for k, (c, n) in row.items()}
                                for name, row in per_seed[s].items()} for s in seeds}
    rv = ref["pt_t_had"][0]
    c = 0.5 * (edges[1:] + edges[:-1])
    m = _mean(rv, edges)
    res["mean_pt_t"] = {
        "reference": m,
        "reference_error": float(np.sqrt((rv * (c - m) ** 2).sum() / rv.sum() / rv.sum())),
        **{k: float(np.mean(v)) for k, v in means.items()},
        "heldout": _mean(_values(res["heldout"]["observables"]["pt_t_had"]["values"]), edges),
        "heldout_truth": _mean(truth_histograms(held)["pt_t_had"][0], edges),
    }
    return res


def chi2_table(res: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per observable: χ²/ndf vs the independent reference (one pass / iterative / prior,
    pooled over the data pseudo-experiments), the tool's own χ²/ndf vs the data's truth (same
    events) and vs the held-out simulated events' truth, and the 68 % calibrations (the tool's
    figures of the first pseudo-experiment)."""
    first = res["config"].get("data_seeds", (DATA_SEED,))[0]
    first_one, first_it = res[_tag("one_pass", first)], res[_tag("iterative", first)]
    out = {}
    for name, c in res["chi2"].items():
        out[name] = {
            **c,
            "tool_one_pass": first_one["closure"][name]["chi2_ndf"],
            "tool_iterative": first_it["closure"][name]["chi2_ndf"],
            "heldout": res["heldout"]["closure"][name]["chi2_ndf"],
            "calib_heldout": res["heldout"]["calibration_68"].get(name),
            "calib_one_pass": first_one["calibration_68"].get(name),
            "calib_iterative": first_it["calibration_68"].get(name),
        }
    return out
