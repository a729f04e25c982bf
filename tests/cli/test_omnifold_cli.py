"""`unfoldmem omnifold` as a user runs it, on a small Drell–Yan-like toy with misses and fakes.

Independent reference: the toy's own data truth (parton tree of the data file), against which
the unfolded histograms must agree better than the simulation prior does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import uproot
from typer.testing import CliRunner

from tests._support.omnifold_toy import write_dimuon_omnifold_file
from unfoldmem.cli import app


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("of")
    write_dimuon_omnifold_file(d / "data.root", 1500, 45.0, 1, 0)
    write_dimuon_omnifold_file(d / "sim.root", 3000, 40.0, 2, 100_000)
    return d / "data.root", d / "sim.root"


def test_cli_writes_everything_and_moves_toward_truth(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    data, sim = files
    out = tmp_path / "out"
    args = [
        "-q",
        "omnifold",
        str(data),
        "--sim",
        str(sim),
        "-k",
        "1",
        "-o",
        str(out),
        "--observables",
        "pt_lminus",
        "--observables",
        "m_ll",
        "--features",
        "mlp",
        "--epochs",
        "10",
        "--batch-size",
        "128",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} == {
        "weights.root",
        "histograms.root",
        "plots",
        "summary.json",
    }
    s = json.loads((out / "summary.json").read_text())
    assert s["n_fakes"] == 150 and s["n_misses"] > 50 and s["usable_iteration"] == 1
    # no bootstrap: the summary says the band lacks the data's statistics
    assert s["bootstrap"] == 0 and s["uncertainty"].startswith("INCOMPLETE")
    assert "--bootstrap" in s["uncertainty"]
    pt = s["observables"]["pt_lminus"]
    assert set(pt) >= {"omnifold", "ibu", "chi2_ndf_omnifold_vs_truth", "chi2_ndf_ibu_vs_truth"}
    with uproot.open(out / "weights.root") as f:
        t = f["OmniFold"]
        assert {"event_id", "weight", "weight_iter0", "weight_iter1", "pass_reco"} <= set(t.keys())
        w = t["weight"].array(library="np")
        g = t["pass_gen"].array(library="np")
    assert np.all(np.isfinite(w)) and np.all(w[g] > 0)
    assert (out / "plots" / "pt_lminus.png").stat().st_size > 1000
    # the unfolded mean pt is closer to the data truth's than the prior's is
    edges = np.asarray(pt["edges"])
    c = 0.5 * (edges[1:] + edges[:-1])
    mean_of = float((c * np.asarray(pt["omnifold"])).sum() / np.sum(pt["omnifold"]))
    assert abs(mean_of - 45.0) < abs(40.0 - 45.0) / 2


def test_cli_refuses_existing_output_and_bad_observable(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    data, sim = files
    out = tmp_path / "exists"
    out.mkdir()
    r = CliRunner().invoke(app, ["omnifold", str(data), "--sim", str(sim), "-o", str(out)])
    assert r.exit_code != 0 and "exists" in str(r.exception) + r.output
    r = CliRunner().invoke(
        app,
        [
            "omnifold",
            str(data),
            "--sim",
            str(sim),
            "-o",
            str(tmp_path / "n"),
            "--observables",
            "m_tt",
        ],
    )
    assert r.exit_code != 0 and "m_ll" in r.output


def test_cli_fiducial_phase_space(files: tuple[Path, Path], tmp_path: Path) -> None:
    """``--fiducial-lepton-eta 2.4``: simulated parton events with a muon at |η| ≥ 2.4 leave the
    parton level (none of them is reconstructed in this toy, whose reco needs |η| < 2.4, so they
    are dropped, and the fakes stay the 150 detector-only events); the truth is restricted the
    same way; two bootstrap replicas give the histograms a band. Reference: the counts
    recomputed here from the files' parton trees."""
    from unfoldmem.io import read_partons
    from unfoldmem.physics.lorentz import eta as lorentz_eta
    from unfoldmem.unfold.features import parton_momenta

    data, sim = files
    out = tmp_path / "fid"
    args = ["-q", "omnifold", str(data), "--sim", str(sim), "-k", "1", "-o", str(out),
            "--observables", "m_ll", "--features", "mlp", "--epochs", "3", "--batch-size", "256",
            "--fiducial-lepton-eta", "2.4", "--bootstrap", "2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())

    def n_fid(path: Path) -> int:
        mom, _ = parton_momenta(read_partons(path))
        return int((lorentz_eta(mom).abs() < 2.4).all(-1).sum())

    assert s["fiducial"] == {"lepton_eta_max": 2.4, "lepton_pt_min": 0.0}
    assert s["uncertainty"].startswith("data and simulation statistics (2 Poisson")
    assert s["n_fakes"] == 150 and s["n_sim"] == n_fid(sim) + 150
    with uproot.open(out / "histograms.root") as f:
        h = f["m_ll_truth"]
        n_truth = h.values(flow=True).sum()
    assert n_truth == n_fid(data) < 1500
