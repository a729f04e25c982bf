r"""`unfoldmem generate`: parton events, detector and selection from a run card, into one ROOT file."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from unfoldmem.cards import load_card
from unfoldmem.cli._common import console, state
from unfoldmem.io.atomic import check_writable

__all__ = ["register"]


class Chain(str, Enum):
    """Which simulation chain turns partons into detector objects."""

    parametric = "parametric"
    pythia = "pythia"


def generate(
    run_card: Path = typer.Argument(..., help="A run card (cards/runs/*.yaml)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output ROOT file."),
    n_events: int = typer.Option(None, "-n", "--n-events", help="Events (default: the card's)."),
    seed: int = typer.Option(None, "--seed", help="Random seed (default: the card's)."),
    chain: Chain = typer.Option(None, "--chain", help="parametric or pythia (default: card's)."),
    weighted: bool = typer.Option(False, "--weighted", help="Keep weighted events."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Generate parton and detector events from a run card.

    Example: ``unfoldmem generate cards/runs/drell_yan.yaml -n 10000 -o dy.root --seed 3``
    prints ``wrote 10000 events (3757 pass reco), σ = 1542 ± 2.4 pb → dy.root``.
    """
    run = load_card(run_card, "run")
    check_writable(output, overwrite)
    if n_events is not None and n_events <= 0:
        msg = "must be positive"
        raise typer.BadParameter(msg, param_hint="-n")
    n = n_events or run.n_events
    seed_ = run.seed if seed is None else seed
    chain_ = chain.value if chain is not None else run.chain
    config = run.generator.model_copy(update={"weighted": weighted or run.generator.weighted})
    process = load_card(run.process, "process")
    detector = load_card(run.detector, "detector")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from unfoldmem.physics.hadronic import integrand_from_card

    integrand = integrand_from_card(process, theta=run.theta, source=str(run.process))
    meta = {"run_card": str(run_card), "chain": chain_}
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=console, disable=state.quiet, transient=True,
    ) as bar:
        task = bar.add_task("generating", total=n)

        def progress(done: int) -> None:
            bar.update(task, completed=done)

        if chain_ == "pythia":
            from unfoldmem.simulate.pythia_chain import generate_file_pythia

            summary = generate_file_pythia(
                output, integrand, detector, run.selection, n, seed_, config,
                theta=run.theta, overwrite=overwrite, progress=progress, metadata=meta,
            )
        else:
            from unfoldmem.simulate.generator import generate_file

            summary = generate_file(
                output, integrand, detector, run.selection, n, seed_, config,
                theta=run.theta, overwrite=overwrite, progress=progress, metadata=meta,
            )
    typer.echo(
        f"wrote {summary.n_events} events ({summary.n_pass} pass reco), "
        f"σ = {summary.sigma_pb:.4g} ± {summary.sigma_error_pb:.2g} pb → {output}"
    )
    if chain_ == "pythia" and not state.quiet:
        typer.echo(summary.extra["jet_multiplicity"])


def register(app: typer.Typer) -> None:
    """Add ``generate`` to the app."""
    app.command("generate")(generate)
