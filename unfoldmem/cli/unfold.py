r"""`unfoldmem unfold`: cINN unfolding of detector events, with uncertainties, plots and a summary."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, get_args

import typer

from unfoldmem.cli._common import console, state

__all__ = ["register", "unfold"]


def unfold(
    data: Path = typer.Argument(..., help="Detector-level ROOT file to unfold."),
    model: Path = typer.Option(..., "--model", "-m", help="Trained cINN model directory."),
    n_samples: int = typer.Option(100, "-n", "--samples", min=1, help="Posterior samples per event."),
    output: Path = typer.Option(Path("out"), "--output", "-o", help="Output directory."),
    iterations: int = typer.Option(0, "--iterations", "-k", min=0,
                                   help="Iterative prior removal: reweight + retrain K times (needs --sim)."),
    sim: Path = typer.Option(None, "--sim", help="The training simulation (ROOT with Events and Partons)."),
    retrain_epochs: int = typer.Option(None, "--retrain-epochs", min=1,
                                       help="Epochs of each iterative retraining (default: the card's)."),
    iteration_reference: str = typer.Option(
        "truth", "--iteration-reference",
        help="What the unfolded data are compared with to reweight the simulation: truth (its "
        "partons) | unfolded (the network's unfolding of its detector events, robust to the "
        "network's own inaccuracy)."),
    refine: bool = typer.Option(
        False, "--refine/--no-refine",
        help="Refine the posterior samples with a classifier fitted on the simulation (needs "
        "--sim): the network's summed posterior of the simulation's events is reweighted to "
        "their partons, per event by resampling (see docs/unfolding.md)."),
    refine_oversample: int = typer.Option(4, "--refine-oversample", min=1,
                                          help="Candidates drawn per kept sample when refining."),
    phase_space: str = typer.Option("reco", "--phase-space",
                                    help="reco (passing events, no correction) | fiducial | full (need --sim)."),
    branchmap: Path = typer.Option(None, "--branchmap", "-b", help="Branch-map card of the data file."),
    process: str = typer.Option(None, "--process", help="Observable set (default: from the model)."),
    replicas: int = typer.Option(100, "--replicas", min=2, help="Bootstrap replicas."),
    members: int = typer.Option(None, "--members", min=2, help="Bayesian draws / ensemble members."),
    chunk_size: int = typer.Option(2000, "--chunk-size", min=1, help="Events per sampling chunk."),
    seed: int = typer.Option(0, "--seed", help="Seed of sampling, bootstrap and iterations."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    truth: Path = typer.Option(
        None, "--truth",
        help="Independent parton-level truth for the closure χ² and plot overlay: a ROOT file "
             "with a Partons tree of the same process (weights honoured), normalised to the "
             "data's yield (×Σw_data/Σw_pass_reco), its Σw² added to the errors. Default: the "
             "data file's own Partons tree if any (same events: an optimistic χ²)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write plots/<observable>.png."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
) -> None:
    """Unfold DATA with a trained cINN: OUT/unfolded.root, histograms.root, plots/, summary.json.

    Example: ``unfoldmem unfold data.root --model models/cinn -n 100 -o out/``
    (add ``--sim sim.root --phase-space full`` for the efficiency correction,
    ``--iterations 3 --sim sim.root`` for iterative prior removal, ``--refine --sim sim.root``
    to correct the network's own error with a classifier fitted on the simulation,
    ``--truth truth.root`` for a closure test against an independent truth sample).
    """
    import awkward as ak
    import numpy as np
    import torch

    from unfoldmem.cards import load_card
    from unfoldmem.errors import ModelError
    from unfoldmem.flows.model_dir import load_model, save_model
    from unfoldmem.io import PARTON_TREE, has_tree, read_detector, read_partons
    from unfoldmem.io.atomic import atomic_path, check_writable
    from unfoldmem.physics.observables import guess_process, observables_for
    from unfoldmem.unfold.acceptance import PHASE_SPACES, FiducialCuts, efficiencies
    from unfoldmem.unfold.cinn_unfold import unfold as run_unfold
    from unfoldmem.unfold.iterative import IterativeConfig, Simulation, iterate
    from unfoldmem.unfold.model_layout import ModelLayout, check_data, load_layout
    from unfoldmem.unfold.refine import RefineConfig, fit_refinement
    from unfoldmem.unfold.report import (
        calibration,
        independent_truth,
        truth_histograms,
        truth_values,
        unfolded_histograms,
        write_outputs,
    )
    from unfoldmem.weights import weight_diagnostics

    t0 = time.perf_counter()
    if phase_space not in PHASE_SPACES:
        msg = f"expected one of {', '.join(PHASE_SPACES)}, got {phase_space!r}"
        raise typer.BadParameter(msg, param_hint="--phase-space")
    references = get_args(IterativeConfig.model_fields["reference"].annotation)
    if iteration_reference not in references:
        msg = f"expected one of {', '.join(references)}, got {iteration_reference!r}"
        raise typer.BadParameter(msg, param_hint="--iteration-reference")
    if (iterations > 0 or refine or phase_space != "reco") and sim is None:
        what = ("--iterations" if iterations > 0 else "--refine" if refine
                else f"--phase-space {phase_space}")
        msg = f"{what} needs the training simulation: pass --sim sim.root"
        raise typer.BadParameter(msg, param_hint="--sim")
    check_writable(output, overwrite)
    bmap = load_card(branchmap, "branchmap") if branchmap else None
    loaded = load_model(model, device=device)
    if loaded.card.model != "cinn":
        raise ModelError(str(model), f"is a '{loaded.card.model}' model; unfolding needs a cINN")
    simulation = None
    if sim is not None:
        simulation = Simulation(read_detector(sim), read_partons(sim))
    layout = load_layout(model, loaded.meta)
    if layout is None:
        if simulation is None:
            raise ModelError(str(model), "has no layout (meta.json 'layout' or layout.json): "
                             "pass --sim with the training simulation to derive it")
        layout = ModelLayout.from_training(simulation.partons[simulation.pass_index], simulation.events)
    n_slots = loaded.model.parton_encoding.n_objects if hasattr(loaded.model, "parton_encoding") \
        else len(layout.parton_pdg)
    if n_slots != len(layout.parton_pdg):
        raise ModelError(str(model), f"the layout has {len(layout.parton_pdg)} parton slots, "
                         f"the network models {n_slots}")
    proc = process or layout.process or guess_process(layout.parton_pdg)
    obs = observables_for(proc)
    events = read_detector(data, branchmap=bmap)
    check_data(layout, events, str(model), str(data))
    enc = loaded.card.encoding
    quiet = state.quiet
    net: Any = loaded.model
    iter_summary: list[dict[str, Any]] = []
    cuts = FiducialCuts()
    independent = None
    if truth is not None:  # before the (long) sampling, so that a wrong --truth fails at once
        data_yield = float(np.sum(ak.to_numpy(events.weight).astype(np.float64)))
        independent = independent_truth(read_partons(truth), str(truth), layout.parton_pdg,
                                         data_yield, obs, phase_space, cuts)
    refine_cfg = RefineConfig(oversample=refine_oversample, seed=seed) if refine else None
    refinement = None
    with atomic_path(output, overwrite, directory=True) as tmp:
        if iterations > 0:
            assert simulation is not None
            res = iterate(net, loaded.card, events, simulation, layout, obs,
                          IterativeConfig(iterations=iterations, epochs=retrain_epochs, seed=seed,
                                          reference=iteration_reference, refine=refine_cfg),
                          quiet=quiet, device=device)
            net, iter_summary, refinement = res.model, res.summary(), res.refinement
            # the final network, trained on the reweighted simulation, for reuse
            save_model(tmp / "model", net, loaded.card, loaded.meta.get("data_hash", ""),
                       n_events=len(simulation.events), extra_meta={"layout": layout.to_dict()})
        if refine_cfg is not None and refinement is None:
            assert simulation is not None
            refinement = fit_refinement(
                net, simulation.events, simulation.momenta()[simulation.pass_index],
                simulation.weight[simulation.pass_index], layout, refine_cfg,
                max_jets=enc.max_jets, max_leptons=enc.max_leptons, device=device, quiet=quiet)
        if refinement is not None:
            refinement.ess = []  # report the final unfolding's candidates only
        samples = run_unfold(net, events, layout, obs, n_samples, output=tmp / "unfolded.root",
                             cuts=cuts, members=members, max_jets=enc.max_jets,
                             max_leptons=enc.max_leptons, chunk_size=chunk_size, seed=seed,
                             device=device, quiet=quiet, refine=refinement)
        effs = None
        if phase_space != "reco":
            assert simulation is not None
            # original weights: the iterative reweighting is defined for passing events only
            w = simulation.weight
            effs = efficiencies(simulation.momenta(), torch.tensor(layout.parton_pdg), w,
                                ak.to_numpy(simulation.partons.pass_reco), obs, phase_space, cuts)
        hists = unfolded_histograms(samples, obs, phase_space, effs, replicas, seed)
        truth_hists = None
        extra: dict[str, Any] = {"truth_source": None}
        per_count = None
        if has_tree(data, PARTON_TREE):
            truth_sim = Simulation(events, read_partons(data))
            mom = truth_sim.momenta()
            pdg = torch.tensor(layout.parton_pdg)
            truth_hists = truth_histograms(mom, pdg, truth_sim.weight,
                                           ak.to_numpy(truth_sim.partons.pass_reco), obs,
                                           phase_space, cuts)
            # per-event calibration needs the same events: always the data's own truth
            extra["calibration_68"] = calibration(
                samples, truth_values(mom[truth_sim.pass_index], pdg, obs))
            extra["truth_source"] = "data file (same events)"
            extra["truth_note"] = ("closure χ² against the truth of the same events: correlated "
                                   "with the unfolded result, so optimistic; pass --truth with "
                                   "an independent sample for a fair closure test")
        if independent is not None:
            truth_hists, scale, per_count = independent
            extra["truth_source"] = str(truth)
            extra["truth_scale"] = scale
            extra.pop("truth_note", None)
        summary = {
            "data": str(data), "model": str(model), "process": proc, "events": len(events),
            "samples_per_event": samples.n_samples, "members": samples.members,
            "phase_space": phase_space, "fiducial_cuts": cuts.model_dump(),
            "unfolded_entries": samples.entries, "bootstrap_replicas": replicas, "seed": seed,
            "data_weights": weight_diagnostics(np.asarray(samples.weight)),
            "truth_available": truth_hists is not None, "iterations": iter_summary,
            "refinement": refinement.diagnostics() if refinement is not None else None, **extra,
        }
        label = "truth (same events)" if truth is None else "truth (independent)"
        result = write_outputs(tmp, hists, truth_hists, effs, summary, plots=plots,
                               variance_per_count=per_count, truth_label=label)
        result["seconds"] = time.perf_counter() - t0
        import json

        (tmp / "summary.json").write_text(json.dumps(result, indent=1))
    if not quiet:
        _print(result, output)


def _print(result: dict[str, Any], output: Path) -> None:
    from rich.table import Table

    table = Table(title=f"unfolded ({result['phase_space']}), {result['events']} events, "
                        f"{result['samples_per_event']} samples/event")
    for col in ("observable", "Σ unfolded", "rel. stat", "rel. total", "χ²/ndf vs truth"):
        table.add_column(col)
    clos = result.get("closure", {})
    for name, h in result["observables"].items():
        vals = [v for v in h["values"] if v is not None]
        tot = sum(vals)
        stat = sum(s for s in h["stat"] if s is not None)
        total = sum(s for s in h["total"] if s is not None)
        c = clos.get(name, {}).get("chi2_ndf")
        table.add_row(name, f"{tot:.4g}", f"{stat / tot:.3f}" if tot else "-",
                      f"{total / tot:.3f}" if tot else "-", "-" if c is None else f"{c:.2f}")
    console.print(table)
    if result.get("truth_source"):
        console.print(f"truth: {result['truth_source']}"
                      + (f" ({result['truth_note']})" if result.get("truth_note") else ""))
    console.print(f"wrote {output}/unfolded.root, histograms.root, plots/, summary.json "
                  f"in {result['seconds']:.1f} s")


def register(app: typer.Typer) -> None:
    """Add ``unfold`` to the app."""
    app.command("unfold")(unfold)
