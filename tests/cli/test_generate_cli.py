"""`unfoldmem generate` as a user runs it: run card in, ROOT file out, errors as one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from unfoldmem.cli import app
from unfoldmem.io import read_detector, read_metadata, read_partons

ROOT = Path(__file__).resolve().parents[2]


def _run_card(tmp_path: Path) -> Path:
    card = tmp_path / "dy.yaml"
    card.write_text(
        "kind: run\n"
        f"process: {ROOT / 'cards/processes/drell_yan.yaml'}\n"
        f"detector: {ROOT / 'cards/detectors/default.yaml'}\n"
        "n_events: 50\nseed: 2\n"
        "selection: {n_leptons_min: 2, lepton_pt_min: 20.0}\n"
        "generator: {neval: 1000, nitn_adapt: 2, n_presample: 3000, chunk_size: 100}\n"
    )
    return card


def test_generate_writes_both_trees(tmp_path: Path) -> None:
    """-n, -o, --seed and --weighted reach the file; pass_reco matches the detector tree."""
    out = tmp_path / "sim.root"
    res = CliRunner().invoke(
        app,
        [
            "--quiet",
            "generate",
            str(_run_card(tmp_path)),
            "-n",
            "250",
            "-o",
            str(out),
            "--seed",
            "9",
            "--weighted",
        ],
    )
    assert res.exit_code == 0, res.output
    partons, det = read_partons(out), read_detector(out)
    assert len(partons) == 250 and int(sum(partons.pass_reco)) == len(det)
    meta = read_metadata(out)
    assert meta["seed"] == 9 and meta["weighted"] is True and meta["chain"] == "parametric"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_existing_output_is_a_one_line_error(tmp_path: Path) -> None:
    """An existing output without --overwrite: exit code 2, message names the file, no work."""
    out = tmp_path / "sim.root"
    out.write_text("keep me")
    res = subprocess.run(
        [sys.executable, "-m", "unfoldmem", "generate", str(_run_card(tmp_path)), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2
    assert "sim.root" in res.stderr and "--overwrite" in res.stderr
    assert out.read_text() == "keep me"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "unfoldmem",
            "generate",
            str(tmp_path / "nope.yaml"),
            "-o",
            str(tmp_path / "x.root"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2 and "nope.yaml" in res.stderr
