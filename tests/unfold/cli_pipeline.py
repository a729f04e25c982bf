"""The generate → train → unfold chain of the slow CLI closure tests, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from unfoldmem.cli import app

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: object) -> None:
    """Run ``unfoldmem --quiet ARGS`` in-process; a non-zero exit fails with its output."""
    res = CliRunner().invoke(app, ["--quiet", *[str(a) for a in args]])
    assert res.exit_code == 0, res.output


def generate_train_unfold(tmp_path: Path, run_card: str, n_sim: int, n_data: int,
                          model_card: str, samples: int,
                          *unfold_args: object) -> tuple[dict[str, Any], Path]:
    """Generate a simulation (seed 1) and independent data (seed 101) from ``cards/runs/RUN``,
    train the model card text on the simulation, unfold the data with ``samples`` per event.

    Returns the unfolding's ``summary.json`` and the model directory.
    """
    run = ROOT / "cards/runs" / run_card
    sim, data = tmp_path / "sim.root", tmp_path / "data.root"
    cli("generate", run, "-n", n_sim, "-o", sim, "--seed", 1)
    cli("generate", run, "-n", n_data, "-o", data, "--seed", 101)
    card = tmp_path / "card.yaml"
    card.write_text(model_card)
    model = tmp_path / "model"
    cli("train", card, "--data", sim, "-o", model)
    out = tmp_path / "unfold"
    cli("unfold", data, "--model", model, "-n", samples, "-o", out, "--no-plots", *unfold_args)
    return json.loads((out / "summary.json").read_text()), model
