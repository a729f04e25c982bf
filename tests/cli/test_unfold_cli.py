"""`unfoldmem unfold` as a user runs it: outputs, truth overlay only with a parton tree, phase-space
correction and iterations with --sim, one-line errors (exit 2) that leave no output behind."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
import uproot

from tests.unfold.test_cinn_unfold import MODEL_CARD, make_toy, trained_toy
from unfoldmem.flows.model_dir import data_hash, save_model
from unfoldmem.io import write_events


@pytest.fixture
def files(tmp_path):
    model, sim, lay = trained_toy()
    mdir = save_model(tmp_path / "cinn", model, MODEL_CARD, data_hash([np.zeros(1)]),
                      extra_meta={"layout": lay.to_dict()})
    det, par = make_toy(300, seed=41)
    write_events(tmp_path / "data.root", det, par)
    write_events(tmp_path / "real.root", det, None)
    write_events(tmp_path / "sim.root", sim.events, sim.partons)
    e_det = ak.with_field(det, det.muons, "electrons")
    write_events(tmp_path / "electrons.root", e_det, None)
    return tmp_path, mdir


def test_unfold_with_truth_then_without_parton_tree(cli, files) -> None:
    """With a parton tree: closure and calibration in summary.json and truth in the plots'
    file; without one (real data): the same outputs, no truth. unfolded.root has n·N rows."""
    d, mdir = files
    r = cli("unfold", d / "data.root", "--model", mdir, "-n", "8", "-o", d / "out", "--replicas", "10")
    assert r.code == 0, r.err
    s = json.loads((d / "out" / "summary.json").read_text())
    assert s["truth_available"] and s["events"] == 300 and s["samples_per_event"] == 8
    assert set(s["closure"]) == set(s["observables"]) and "m_ll" in s["closure"]
    assert all(0 <= v <= 1 for v in s["calibration_68"].values())
    assert (d / "out" / "plots" / "cos_cs.png").stat().st_size > 1000
    with uproot.open(d / "out" / "unfolded.root") as f:
        t = f["Unfolded"]
        assert t.num_entries == 300 * 8
        assert {"event_id", "sample", "weight", "Parton_E", "Parton_pdgId"} <= set(t.keys())
        assert np.isclose(t["weight"].array(library="np").sum(), 300.0)
    with uproot.open(d / "out" / "histograms.root") as f:
        assert "truth_m_ll" in f and "unfolded_m_ll" in f
    r = cli("-q", "unfold", d / "real.root", "--model", mdir, "-n", "4", "-o", d / "out2",
            "--no-plots", "--replicas", "5")
    assert r.code == 0, r.err
    s2 = json.loads((d / "out2" / "summary.json").read_text())
    assert not s2["truth_available"] and "closure" not in s2
    assert not (d / "out2" / "plots").exists()


def test_fiducial_correction_and_iteration_with_sim(cli, files) -> None:
    """--sim gives efficiencies (fiducial) and --iterations 1 reweights, retrains and saves the
    final model; summary.json records the weight diagnostics of the iteration."""
    d, mdir = files
    r = cli("-q", "unfold", d / "data.root", "--model", mdir, "-n", "4", "-o", d / "out",
            "--sim", d / "sim.root", "--phase-space", "fiducial", "--iterations", "1",
            "--retrain-epochs", "1", "--no-plots", "--replicas", "5")
    assert r.code == 0, r.err
    s = json.loads((d / "out" / "summary.json").read_text())
    assert s["phase_space"] == "fiducial" and "m_ll" in s["efficiencies"]
    assert len(s["iterations"]) == 2 and s["iterations"][1]["weights"]["ess_ratio"] > 0
    assert (d / "out" / "model" / "weights.pt").is_file()
    assert s["observables"]["m_ll"]["phase_space"] == "fiducial"


def test_user_errors_are_one_line_and_leave_no_output(cli, files) -> None:
    """Missing model, wrong final state, missing --sim, existing output: exit 2, one line."""
    d, mdir = files
    r = cli("unfold", d / "data.root", "--model", d / "nope", "-o", d / "o1")
    assert r.code == 2 and "not a model directory" in r.err and not (d / "o1").exists()
    r = cli("unfold", d / "electrons.root", "--model", mdir, "-o", d / "o2")
    assert r.code == 2 and "electrons.root" in r.err and "never saw" in r.err
    assert len(r.err.strip().splitlines()) == 1 and not (d / "o2").exists()
    r = cli("unfold", d / "data.root", "--model", mdir, "--phase-space", "full", "-o", d / "o3")
    assert r.code == 2 and "--sim" in r.err and not (d / "o3").exists()
    (d / "o4").mkdir()
    r = cli("unfold", d / "data.root", "--model", mdir, "-o", d / "o4")
    assert r.code == 2 and "--overwrite" in r.err
