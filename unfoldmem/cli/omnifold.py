r"""`unfoldmem omnifold`: OmniFold unfolding with IBU as the binned baseline, plots and a summary."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from unfoldmem.cli._common import console, state

__all__ = ["register", "omnifold"]


def omnifold(
    data: Path = typer.Argument(..., help="Detector-level ROOT file to unfold (Events tree)."),
    sim: Path = typer.Option(..., "--sim", help="Simulation with Events and Partons trees."),
    iterations: int = typer.Option(
        4, "--iterations", "-k", min=1, help="OmniFold/IBU iterations K."
    ),
    observables: list[str] = typer.Option(
        None, "--observables", help="Parton-level observables to histogram (default: all)."
    ),
    output: Path = typer.Option(Path("out"), "--output", "-o", help="Output directory."),
    ensemble: int = typer.Option(1, "--ensemble", min=1, help="Classifier trainings (seeds)."),
    bootstrap: int = typer.Option(
        0, "--bootstrap", min=0,
        help="Poisson bootstrap replicas (data and simulation resampled); without at least 2 the "
        "error bars miss the data's statistics (summary.json 'uncertainty' says so).",
    ),
    features: str = typer.Option("deepset", "--features", help="deepset | mlp (detector level)."),
    epochs: int = typer.Option(40, "--epochs", min=1, help="Maximum classifier epochs."),
    min_epochs: int = typer.Option(
        10, "--min-epochs", min=1,
        help="Epochs every classifier trains before early stopping may pick its best epoch.",
    ),
    batch_size: int = typer.Option(1024, "--batch-size", min=1, help="Classifier batch size."),
    seed: int = typer.Option(0, "--seed", help="Seed of classifiers and bootstrap."),
    fiducial_eta: float = typer.Option(
        None, "--fiducial-lepton-eta", min=0.0,
        help="Unfold into the fiducial phase space where every parton-level charged lepton "
        "has |eta| below this (e.g. the detector's 2.4); default: no fiducial cut.",
    ),
    fiducial_pt: float = typer.Option(
        0.0, "--fiducial-lepton-pt", min=0.0,
        help="With --fiducial-lepton-eta: parton-level lepton pt minimum in GeV.",
    ),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing output directory."
    ),
) -> None:
    """Unfold DATA by OmniFold: OUT/weights.root, histograms.root, plots/, summary.json.

    Example: ``unfoldmem omnifold data.root --sim sim.root --iterations 4 -o out/``
    """
    import numpy as np
    import uproot

    from unfoldmem.histograms import chi2_ndf, weighted_hist
    from unfoldmem.io import PARTON_TREE, has_tree, read_detector, read_partons
    from unfoldmem.io.atomic import atomic_path, check_writable
    from unfoldmem.physics.observables import observables_for
    from unfoldmem.unfold.classifier import ClassifierConfig
    from unfoldmem.unfold.features import (
        lepton_fiducial,
        omnifold_inputs,
        parton_observables,
        reco_observables,
    )
    from unfoldmem.unfold.ibu import unfold_ibu
    from unfoldmem.unfold.omnifold import OmniFoldConfig, omnifold_replicas
    from unfoldmem.unfold.omnifold_uncertainty import (
        chi2_covariance,
        replica_histograms,
        unfolded_covariance,
    )

    t0 = time.perf_counter()
    if features not in ("deepset", "mlp"):
        msg = f"expected deepset or mlp, got {features!r}"
        raise typer.BadParameter(msg, param_hint="--features")
    check_writable(output, overwrite)
    data_ev = read_detector(data)
    sim_ev, sim_pa = read_detector(sim), read_partons(sim)
    fid = None
    if fiducial_eta is not None:
        fid = lepton_fiducial(sim_pa, fiducial_pt, fiducial_eta)
    inp = omnifold_inputs(data_ev, sim_ev, sim_pa, kind=features, fiducial=fid)
    process = inp["process"]
    known = [o.name for o in observables_for(process)]
    names = list(observables) if observables else known
    bad = [n for n in names if n not in known]
    if bad:
        msg = f"unknown observable(s) {bad} for process '{process}'; known: {', '.join(known)}"
        raise typer.BadParameter(msg, param_hint="--observables")
    clf = ClassifierConfig(
        kind=features, epochs=epochs, min_epochs=min(min_epochs, epochs), batch_size=batch_size,
        seed=seed, device=device,
    )
    cfg = OmniFoldConfig(iterations=iterations, classifier=clf)
    if not state.quiet:
        console.print(
            f"OmniFold: {len(inp['data'])} data events, {len(inp['sim_gen'])} simulated "
            f"({int((~inp['pass_reco']).sum())} misses, {int((~inp['pass_gen']).sum())} fakes), "
            f"process {process}, K={iterations}, ensemble {ensemble}, bootstrap {bootstrap}"
        )
    reps = omnifold_replicas(
        inp["data"],
        inp["sim_reco"],
        inp["sim_gen"],
        n_ensemble=ensemble,
        n_bootstrap=bootstrap,
        seed=seed,
        sim_weights=inp["sim_weights"],
        data_weights=inp["data_weights"],
        pass_reco=inp["pass_reco"],
        pass_gen=inp["pass_gen"],
        config=cfg,
    )
    nominal = reps["results"][0]
    final = reps["ensemble"].mean(0).numpy()
    # a replica that diverged carries the weights of an earlier iteration (the prior if it
    # diverged at once): it would widen the band with a failed training, not with the data's
    # or the training's spread
    n_ens = len(reps["ensemble"])
    ens_w = np.stack([r.numpy() for r, res in zip(reps["ensemble"], reps["results"][:n_ens],
                                                  strict=True) if not res.diverged]
                     or [final])
    boot_w = [r.numpy() for r, res in zip(reps["bootstrap"], reps["results"][n_ens:],
                                          strict=True) if not res.diverged]
    boot_w = np.stack(boot_w) if boot_w else np.zeros((0, len(final)))

    # parton-level observables of every simulated event (NaN for fakes)
    gen_idx = inp["gen_index"]
    _, gen_vals = parton_observables(sim_pa, names, process)
    gen_obs = {
        k: np.where(gen_idx >= 0, v[np.maximum(gen_idx, 0)], np.nan) for k, v in gen_vals.items()
    }
    truth = None
    if has_tree(data, PARTON_TREE):
        data_pa = read_partons(data)
        if fiducial_eta is not None:
            data_pa = data_pa[lepton_fiducial(data_pa, fiducial_pt, fiducial_eta)]
        _, truth = parton_observables(data_pa, names, process)
        truth_w = np.asarray(data_pa.weight, dtype=np.float64)
    reco_data = reco_observables(data_ev, process, names)
    reco_sim_all = reco_observables(sim_ev, process, names)
    det_idx = inp["det_index"]
    sw = inp["sim_weights"].numpy()
    pg = inp["pass_gen"].numpy()

    # what the error bars hold: without >= 2 bootstrap replicas the data's own statistics are
    # missing, which a physicist must be told rather than find out from a χ²
    if len(boot_w) >= 2:
        uncertainty = (f"data and simulation statistics ({len(boot_w)} Poisson bootstrap "
                       f"replicas) and training noise ({len(ens_w)} ensemble members)")
    else:
        uncertainty = ("INCOMPLETE: the simulation's sum of w^2"
                       + (f" and the training noise of {len(ens_w)} members" if len(ens_w) >= 2
                          else "")
                       + "; the data's statistical uncertainty is not included "
                       "(use --bootstrap 10 or more)")
        console.print(f"[yellow]warning:[/yellow] OmniFold error bars are {uncertainty}")
    summary: dict[str, Any] = {
        "data": str(data),
        "sim": str(sim),
        "process": process,
        "iterations": iterations,
        "n_data": len(inp["data"]),
        "n_sim": len(inp["sim_gen"]),
        "n_misses": int((~inp["pass_reco"]).sum()),
        "n_fakes": int((~pg).sum()),
        "fiducial": None if fiducial_eta is None else {"lepton_eta_max": fiducial_eta,
                                                       "lepton_pt_min": fiducial_pt},
        "ensemble": ensemble,
        "bootstrap": bootstrap,
        "uncertainty": uncertainty,
        "usable_iteration": nominal.usable_iteration,
        "diverged_iterations": nominal.diverged,
        "replicas_diverged": sum(bool(r.diverged) for r in reps["results"][1:]),
        "diagnostics": nominal.diagnostics,
        "observables": {},
    }
    with atomic_path(output, overwrite, directory=True) as tmp:
        (tmp / "plots").mkdir()
        branches = {
            "event_id": inp["event_id"],
            "pass_reco": inp["pass_reco"].numpy(),
            "pass_gen": pg,
        }
        for k in range(nominal.push.shape[0]):
            branches[f"weight_iter{k}"] = nominal.weights(k).numpy()
        branches["weight"] = final
        with uproot.recreate(tmp / "weights.root") as f:
            # mktree: item assignment writes an RNTuple in uproot >= 5.6
            f.mktree("OmniFold", {k: v.dtype for k, v in branches.items()})
            f["OmniFold"].extend(branches)
        hists: dict[str, Any] = {}
        for name in names:
            obs = next(o for o in observables_for(process) if o.name == name)
            x = gen_obs[name]
            h_of = weighted_hist(x[pg], final[pg], obs.binning, name=name, label=obs.label)
            # the band: ensemble members x data+simulation bootstrap replicas
            # (unfolded_covariance); the histogram's own Σw² is part of it, not added again
            cov = None
            if len(boot_w) >= 2:
                cov = unfolded_covariance(x[pg], ens_w[:, pg], boot_w[:, pg], obs.binning,
                                          inp["pass_reco"][pg])
                h_of.view().variance = np.diag(cov.covariance)
            elif len(ens_w) >= 2:
                # no bootstrap: the simulation's Σw² plus the training noise of the M-member mean
                spread = replica_histograms(x[pg], ens_w[:, pg], obs.binning).var(0, ddof=1)
                h_of.view().variance = h_of.variances() + spread / len(ens_w)
            entry: dict[str, Any] = {
                "omnifold": h_of.values().tolist(),
                "edges": h_of.axes[0].edges.tolist(),
            }
            hists[f"{name}_omnifold"] = h_of
            h_prior = weighted_hist(x[pg], sw[pg], obs.binning, name=name, label=obs.label)
            h_ibu = h_truth = None
            if name in reco_data:
                rs = np.where(det_idx >= 0, reco_sim_all[name][np.maximum(det_idx, 0)], np.nan)
                ibu = unfold_ibu(
                    reco_data[name],
                    rs,
                    x,
                    reco_bins=obs.binning,
                    gen_bins=obs.binning,
                    iterations=iterations,
                    data_weights=inp["data_weights"],
                    sim_weights=sw,
                    pass_reco=inp["pass_reco"],
                    pass_gen=pg,
                    n_bootstrap=max(bootstrap, 20),
                    seed=seed,
                    name=name,
                    label=obs.label,
                )
                h_ibu = ibu.unfolded
                hists[f"{name}_ibu"] = h_ibu
                entry["ibu"] = h_ibu.values().tolist()
            if truth is not None:
                h_truth = weighted_hist(
                    truth[name], truth_w, obs.binning, name=name, label=obs.label
                )
                hists[f"{name}_truth"] = h_truth
                if cov is not None:
                    c2, ndf = chi2_covariance(h_of.values(), cov.covariance, h_truth.values(),
                                              h_truth.variances())
                    c2 = c2 / max(ndf, 1)
                else:
                    c2, ndf = chi2_ndf(h_of, h_truth)
                entry["chi2_ndf_omnifold_vs_truth"] = [c2, ndf]
                if h_ibu is not None:
                    entry["chi2_ndf_ibu_vs_truth"] = list(chi2_ndf(h_ibu, h_truth))
            summary["observables"][name] = entry
            _plot(tmp / "plots" / f"{name}.png", obs.label, h_prior, h_of, h_ibu, h_truth)
        with uproot.recreate(tmp / "histograms.root") as f:
            for key, h in hists.items():
                f[key] = h
        summary["seconds"] = time.perf_counter() - t0
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1, default=_json) + "\n")
    if not state.quiet:
        console.print(
            f"wrote {output}/ (usable iteration {nominal.usable_iteration}"
            f"{', diverged: ' + str(nominal.diverged) if nominal.diverged else ''}) "
            f"in {summary['seconds']:.1f} s"
        )


def _json(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _plot(path: Path, label: str, prior: Any, of: Any, ibu: Any, truth: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    fig, ax = plt.subplots(figsize=(6, 4.5))
    mplhep.histplot(prior, ax=ax, label="simulation (prior)", color="grey", ls=":")
    if truth is not None:
        mplhep.histplot(truth, ax=ax, label="data truth", color="black", histtype="fill", alpha=0.2)
    mplhep.histplot(of, ax=ax, label="OmniFold", color="C0", yerr=True)
    if ibu is not None:
        mplhep.histplot(ibu, ax=ax, label="IBU", color="C1", ls="--", yerr=True)
    ax.set_xlabel(label)
    ax.set_ylabel("events / bin")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def register(app: typer.Typer) -> None:
    """Add ``omnifold`` to the app."""
    app.command("omnifold")(omnifold)
