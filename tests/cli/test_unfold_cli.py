"""`unfoldmem unfold` as a user runs it: outputs, truth overlay only with a parton tree or --truth,
phase-space correction and iterations with --sim, one-line errors (exit 2) that leave no output
behind."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
import uproot

from tests._support.dimuon_toy import MODEL_CARD, make_toy, trained_toy
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
    """--sim gives efficiencies (fiducial; closure against --truth sim.root) and --iterations 1
    reweights, retrains and saves the final model; summary.json records the weight diagnostics
    of the iteration."""
    d, mdir = files
    r = cli("-q", "unfold", d / "data.root", "--model", mdir, "-n", "4", "-o", d / "out",
            "--sim", d / "sim.root", "--phase-space", "fiducial", "--iterations", "1",
            "--retrain-epochs", "1", "--no-plots", "--replicas", "5", "--truth", d / "sim.root")
    assert r.code == 0, r.err
    s = json.loads((d / "out" / "summary.json").read_text())
    assert s["phase_space"] == "fiducial" and "m_ll" in s["efficiencies"]
    assert s["truth_source"] == str(d / "sim.root")
    assert all(np.isfinite(c["chi2"]) for c in s["closure"].values())
    assert len(s["iterations"]) == 2 and s["iterations"][1]["weights"]["ess_ratio"] > 0
    assert (d / "out" / "model" / "weights.pt").is_file()
    assert s["observables"]["m_ll"]["phase_space"] == "fiducial"


def test_refine_with_sim_in_one_pass_and_in_every_iteration(cli, files) -> None:
    """--refine fits the refinement classifier on --sim: summary.json reports its fit and the
    candidates' ESS/N of every unfolded event; with --iterations each iteration's unfolding of
    the data is refined too (its record says so) and the output keeps n·N rows."""
    d, mdir = files
    r = cli("-q", "unfold", d / "data.root", "--model", mdir, "-n", "4", "-o", d / "out",
            "--sim", d / "sim.root", "--refine", "--refine-oversample", "3", "--iterations", "1",
            "--retrain-epochs", "1", "--no-plots", "--replicas", "5")
    assert r.code == 0, r.err
    s = json.loads((d / "out" / "summary.json").read_text())
    ref = s["refinement"]
    assert ref["oversample"] == 3 and ref["features"] > 0
    assert ref["ess_per_candidate"]["event_member_blocks"] == s["events"]
    assert 0 < ref["ess_per_candidate"]["min"] <= ref["ess_per_candidate"]["median"] <= 1
    assert all(it["refinement"]["events"] > 0 for it in s["iterations"])
    with uproot.open(d / "out" / "unfolded.root") as f:
        assert f["Unfolded"].num_entries == s["events"] * 4


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
    r = cli("unfold", d / "data.root", "--model", mdir, "--refine", "-o", d / "o3")
    assert r.code == 2 and "--refine needs the training simulation" in r.err
    assert not (d / "o3").exists()
    (d / "o4").mkdir()
    r = cli("unfold", d / "data.root", "--model", mdir, "-o", d / "o4")
    assert r.code == 2 and "--overwrite" in r.err


def test_independent_truth_file_for_the_closure(cli, files) -> None:
    """--truth: summary.json names the file, a finite χ² per observable; the same-events
    closure is labelled optimistic. Reference: the χ² of the unfolded result against the truth of
    the same events is reduced by their positive correlation, so against three independent
    samples of the same toy (seeds 42–44, as many events) the summed χ² is larger in each.
    Weights honoured: all weights ×2 give the same closure (exact: the scale to the data's yield
    absorbs them)."""
    d, mdir = files
    args = ("-n", "8", "--replicas", "10", "--no-plots")
    r = cli("-q", "unfold", d / "data.root", "--model", mdir, "-o", d / "same", *args)
    assert r.code == 0, r.err
    same = json.loads((d / "same" / "summary.json").read_text())
    assert same["truth_source"] == "data file (same events)"
    assert "optimistic" in same["truth_note"]
    chi2_same = sum(c["chi2"] for c in same["closure"].values())
    independent = {}
    for seed in (42, 43, 44):
        det, par = make_toy(300, seed=seed)
        write_events(d / f"truth{seed}.root", det, par)
        out = d / f"ind{seed}"
        r = cli("-q", "unfold", d / "data.root", "--model", mdir, "-o", out, *args,
                "--truth", d / f"truth{seed}.root")
        assert r.code == 0, r.err
        s = json.loads((out / "summary.json").read_text())
        assert s["truth_source"] == str(d / f"truth{seed}.root") and "truth_note" not in s
        assert set(s["closure"]) == set(s["observables"])
        assert all(np.isfinite(c["chi2"]) and c["ndf"] > 0 for c in s["closure"].values())
        # same generation, as many passing events: the scale to the data's yield is 1
        assert s["truth_scale"] == pytest.approx(1.0)
        assert s["calibration_68"] == same["calibration_68"]  # per event: the data's own truth
        assert sum(c["chi2"] for c in s["closure"].values()) > chi2_same
        independent[seed] = s
    # weights honoured: doubling every weight of a truth halves its scale, the closure is the same
    det, par = make_toy(300, seed=42)
    write_events(d / "w2.root", det, ak.with_field(par, 2.0 * par.weight, "weight"))
    r = cli("-q", "unfold", d / "data.root", "--model", mdir, "-o", d / "w2", *args,
            "--truth", d / "w2.root")
    assert r.code == 0, r.err
    s2 = json.loads((d / "w2" / "summary.json").read_text())
    assert s2["truth_scale"] == pytest.approx(0.5)
    for name, c in s2["closure"].items():
        assert c["chi2"] == pytest.approx(independent[42]["closure"][name]["chi2"], rel=1e-9)
    r = cli("unfold", d / "real.root", "--model", mdir, "-o", d / "real", *args,
            "--truth", d / "truth42.root")
    assert r.code == 0, r.err
    s = json.loads((d / "real" / "summary.json").read_text())
    assert s["truth_available"] and s["truth_source"] == str(d / "truth42.root")
    with uproot.open(d / "real" / "histograms.root") as f:
        assert "truth_m_ll" in f


def test_truth_file_errors_name_the_file_and_tree(cli, files) -> None:
    """A --truth file without a Partons tree, or with other partons (electrons): exit 2, one line
    naming the file and the tree, no output left."""
    d, mdir = files
    r = cli("unfold", d / "data.root", "--model", mdir, "-o", d / "o1", "--truth", d / "real.root")
    assert r.code == 2 and "real.root" in r.err and "'Partons'" in r.err
    assert len(r.err.strip().splitlines()) == 1 and not (d / "o1").exists()
    det, par = make_toy(50, seed=7)
    pdg = ak.where(abs(par.partons.pdgId) == 13, par.partons.pdgId // 13 * 11, par.partons.pdgId)
    par = ak.with_field(par, ak.with_field(par.partons, pdg, "pdgId"), "partons")
    write_events(d / "ee.root", det, par)
    r = cli("unfold", d / "data.root", "--model", mdir, "-o", d / "o2", "--truth", d / "ee.root")
    assert r.code == 2 and "ee.root" in r.err and "'Partons'" in r.err and "process" in r.err
    assert len(r.err.strip().splitlines()) == 1 and not (d / "o2").exists()
