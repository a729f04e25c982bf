"""The generate → train → unfold chain of the slow CLI closure tests, as a user runs it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
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
    return unfold(data, model, tmp_path / "unfold", samples, "--no-plots", *unfold_args), model


def accept_reject(src: Path, dst: Path, weight: Callable[[ak.Array], np.ndarray],
                  seed: int) -> dict[str, Any]:
    """Thin a generated file by a parton-level weight: pseudo-data of a different truth.

    Each generated event of ``src`` (parton tree: every event; detector tree: the passing ones)
    is kept with probability w(partons)/max w; the kept events are distributed as
    w · f_generator and keep the generator's own weights (unit but for its rare overweight
    events, 0.5 % in ``ttbar_small``), like real data. Any bound ≥ max w is exact; the
    sample's own maximum is the most efficient one.

    Returns:
        ``{"generated", "kept", "kept_pass", "w_max"}``.
    """
    from unfoldmem.io import read_detector, read_partons, write_events

    events, partons = read_detector(src), read_partons(src)
    w = np.asarray(weight(partons), dtype=np.float64)
    if w.shape != (len(partons),) or not (np.isfinite(w).all() and (w >= 0).all()):
        msg = "the weight must be one finite, non-negative number per parton event"
        raise ValueError(msg)
    keep = np.random.default_rng(seed).random(len(w)) * w.max() < w
    ids = np.asarray(partons.event_id)[keep]
    keep_ev = np.isin(np.asarray(events.event_id), ids)
    write_events(dst, events[keep_ev], partons[keep])
    return {"generated": len(w), "kept": int(keep.sum()), "kept_pass": int(keep_ev.sum()),
            "w_max": float(w.max())}


def unfold(data: Path, model: Path, out: Path, samples: int, *args: object) -> dict[str, Any]:
    """``unfoldmem unfold DATA --model MODEL -n SAMPLES -o OUT ARGS``; returns ``summary.json``."""
    cli("unfold", data, "--model", model, "-n", samples, "-o", out, *args)
    return json.loads((out / "summary.json").read_text())
