r"""`unfoldmem quality`: score a trained cINN or transfer flow against the truth of a simulation."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from unfoldmem.cli._common import console, state

__all__ = ["register", "quality"]


def quality(
    model: Path = typer.Argument(..., help="Trained model directory (cINN or transfer flow)."),
    data: Path = typer.Option(..., "--data", "-d",
                              help="Simulation ROOT file with Events and Partons trees."),
    output: Path = typer.Option(Path("quality"), "--output", "-o", help="Output directory."),
    n_samples: int = typer.Option(1, "--n-samples", "-n", min=1,
                                  help="Generated samples per event."),
    max_events: int = typer.Option(5000, "--max-events", min=10,
                                   help="Use at most this many passing events."),
    seed: int = typer.Option(0, "--seed", help="Seed of sampling, splits and bootstrap."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Quality report: per-marginal W1/KS/χ², pair χ², C2ST AUC, each beside a perfect model's.

    Writes OUT/quality.json and OUT/marginals.png. A perfect model's scores come from splitting
    the truth in two; metrics more than 5 reference σ above it are flagged.

    Example: ``unfoldmem quality models/cinn --data sim.root -o out/quality``
    """
    import numpy as np

    from unfoldmem.errors import ModelError
    from unfoldmem.flows.model_dir import load_model
    from unfoldmem.io import read_detector, read_partons
    from unfoldmem.io.atomic import atomic_path, check_writable
    from unfoldmem.quality import QualityConfig, model_samples, plot_quality, quality_report

    check_writable(output, overwrite)
    loaded = load_model(model)
    events, partons = read_detector(data), read_partons(data)
    if len(events) < 10:
        raise ModelError(str(model), f"{data} has {len(events)} passing events; need at least 10")
    enc = loaded.card.encoding
    try:
        gen, truth, names, w_gen, w_truth = model_samples(
            loaded.model, events, partons, n_samples, max_events, seed,
            max_jets=enc.max_jets, max_leptons=enc.max_leptons)
    except ValueError as exc:
        raise ModelError(str(model), f"cannot be evaluated on {data}: {exc}") from exc
    report = quality_report(gen, truth, names, QualityConfig(seed=seed), w_gen, w_truth)
    report.update(model_dir=str(model), model_kind=loaded.card.model, data=str(data),
                  n_samples_per_event=n_samples)
    with atomic_path(output, overwrite, directory=True) as tmp:
        (tmp / "quality.json").write_text(json.dumps(report, indent=1, default=float))
        plot_quality(gen, truth, names, str(tmp / "marginals.png"))
    if not state.quiet:
        m, r = report["model"], report["reference"]
        console.print(f"{loaded.card.model} model {model}: {len(truth)} events, "
                      f"{len(gen)} generated, {len(names)} features")
        console.print(f"  C2ST AUC {m['auc']:.4f} ± {m['auc_err']:.4f} "
                      f"(perfect: {r['auc']:.4f} ± {r['auc_err']:.4f})")
        console.print(f"  mean KS {np.mean(m['ks']):.4f} (perfect {np.mean(r['ks']['mean']):.4f})")
        for flag in report["flags"]:
            console.print(f"  FLAG {flag}")
    typer.echo(f"{'ok' if report['ok'] else 'flagged'}: {output / 'quality.json'}")


def register(app: typer.Typer) -> None:
    """Add the ``quality`` command."""
    app.command("quality")(quality)
