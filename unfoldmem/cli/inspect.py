r"""`unfoldmem inspect` and `unfoldmem convert`: look into ROOT files, rewrite them natively."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from unfoldmem.cards import load_card
from unfoldmem.cli._common import console, state
from unfoldmem.io import DETECTOR_TREE, EventWriter, iterate_detector
from unfoldmem.io.summary import detector_summary, file_summary

__all__ = ["register"]


def inspect(
    file: Path = typer.Argument(..., help="A ROOT file."),
    branchmap: Path = typer.Option(None, "--branchmap", "-b", help="Branch-map card for a foreign layout."),
    tree: str = typer.Option(None, help="Detector tree (default: the branch map's, or Events)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of tables."),
) -> None:
    """Trees, branches, entries, jet multiplicities and summary statistics of FILE.

    Example: ``unfoldmem inspect tests/data/uproot-HZZ.root -b cards/branchmaps/cms_hzz.yaml``.
    """
    info = file_summary(file)
    bmap = load_card(branchmap, "branchmap") if branchmap else None
    det_tree = tree or (bmap.tree if bmap else DETECTOR_TREE)
    if det_tree in info["trees"]:
        info["detector"] = detector_summary(file, det_tree, bmap)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    out = Console(width=120)
    for name, t in info["trees"].items():
        out.print(f"{file}:{name}  ({t['entries']} entries)", soft_wrap=True)
        table = Table()
        table.add_column("branch")
        table.add_column("type")
        for b, typ in t["branches"].items():
            table.add_row(b, typ)
        out.print(table)
    det = info.get("detector")
    if det:
        out.print(
            f"detector tree '{det_tree}': {det['events']} events, Σw = {det['sum_weights']:.6g}",
            soft_wrap=True,
        )
        table = Table()
        table.add_column("n jets")
        table.add_column("events", justify="right")
        table.add_column("fraction", justify="right")
        for k, v in det["jet_multiplicity"].items():
            table.add_row(k, str(v), f"{v / det['events']:.3f}")
        stats = Table(title="objects")
        for col in ("quantity", "n", "mean", "std", "min", "max"):
            stats.add_column(col)
        for k, s in det["statistics"].items():
            if s["n"]:
                stats.add_row(k, str(s["n"]), *(f"{s[c]:.4g}" for c in ("mean", "std", "min", "max")))
        out.print(table)
        out.print(stats)


def convert(
    file: Path = typer.Argument(..., help="Input ROOT file."),
    output: Path = typer.Option(..., "--output", "-o", help="Output ROOT file (native layout)."),
    branchmap: Path = typer.Option(None, "--branchmap", "-b", help="Branch-map card of the input."),
    on_nan: str = typer.Option("error", help="error | drop: what to do with NaN/inf values."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
) -> None:
    """Rewrite FILE's detector-level events in unfoldmem's native layout, in chunks.

    Example: ``unfoldmem convert tests/data/uproot-Zmumu.root -b cards/branchmaps/cms_zmumu.yaml -o zmumu.root``.
    """
    if on_nan not in ("error", "drop"):
        msg = f"--on-nan must be 'error' or 'drop', not {on_nan!r}"
        raise typer.BadParameter(msg)
    bmap = load_card(branchmap, "branchmap") if branchmap else None
    with EventWriter(output, overwrite=overwrite, metadata={"source": str(file)}) as w:
        for chunk in iterate_detector(file, None, bmap, on_nan=on_nan):  # type: ignore[arg-type]
            w.write(detector=chunk)
    if not state.quiet:
        console.print(f"wrote {w.n_detector} events to {output}")


def register(app: typer.Typer) -> None:
    """Add ``inspect`` and ``convert`` to ``app``."""
    app.command("inspect")(inspect)
    app.command("convert")(convert)
