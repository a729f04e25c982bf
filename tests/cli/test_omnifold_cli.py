"""`unfoldmem omnifold` as a user runs it, on a small Drell–Yan-like toy with misses and fakes.

Independent reference: the toy's own data truth (parton tree of the data file), against which
the unfolded histograms must agree better than the simulation prior does.
"""

from __future__ import annotations

import json
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch
import uproot
from typer.testing import CliRunner

from unfoldmem.cli import app
from unfoldmem.io import write_events
from unfoldmem.physics.lorentz import from_ptetaphim


def _j(x: np.ndarray) -> ak.Array:
    return ak.from_regular(ak.Array(x))


def _sample(path: Path, n: int, pt_mean: float, seed: int, id0: int) -> None:
    """μ⁺μ⁻ pairs (pt ~ N(pt_mean, 8) GeV) smeared 5% in pt; reco needs pt > 25, |η| < 2.4."""
    rng = np.random.default_rng(seed)
    pt = np.abs(rng.normal(pt_mean, 8.0, (n, 2))) + 1.0
    eta = rng.normal(0.0, 1.3, (n, 2))
    phi = rng.uniform(-np.pi, np.pi, (n, 2))
    m = np.full((n, 2), 0.10566)
    mom = from_ptetaphim(torch.from_numpy(np.stack([pt, eta, phi, m], -1))).numpy()
    ids = np.arange(id0, id0 + n, dtype=np.int64)
    rpt = pt * (1 + 0.05 * rng.normal(size=(n, 2)))
    reco = np.all((rpt > 25) & (np.abs(eta) < 2.4), axis=1)
    n_fake = n // 20  # detector-only events: fakes
    fpt = rng.uniform(25, 60, (n_fake, 2))
    feta = rng.normal(0, 1, (n_fake, 2))
    fphi = rng.uniform(-np.pi, np.pi, (n_fake, 2))

    def muons(p: np.ndarray, e: np.ndarray, f: np.ndarray) -> ak.Array:
        k = len(p)
        return ak.zip(
            {
                "pt": _j(p),
                "eta": _j(e),
                "phi": _j(f),
                "mass": _j(np.full((k, 2), 0.10566)),
                "charge": _j(np.tile([-1.0, 1.0], (k, 1))),
            }
        )

    mu = ak.concatenate([muons(rpt[reco], eta[reco], phi[reco]), muons(fpt, feta, fphi)])
    nd = len(mu)
    empty = ak.unflatten(np.zeros(0), np.zeros(nd, dtype=np.int64))
    jets = ak.zip({"pt": empty, "eta": empty, "phi": empty, "mass": empty, "btag": empty})
    ele = ak.zip({"pt": empty, "eta": empty, "phi": empty, "mass": empty, "charge": empty})
    det = ak.zip(
        {
            "event_id": np.concatenate([ids[reco], np.arange(10**7 + id0, 10**7 + id0 + n_fake)]),
            "weight": np.ones(nd),
            "jets": jets,
            "muons": mu,
            "electrons": ele,
            "met": ak.zip({"pt": rng.exponential(5.0, nd), "phi": rng.uniform(-3, 3, nd)}),
        },
        depth_limit=1,
    )
    par = ak.zip(
        {
            "event_id": ids,
            "weight": np.ones(n),
            "pass_reco": reco,
            "x1": np.full(n, 0.1),
            "x2": np.full(n, 0.1),
            "id1": np.full(n, 2, np.int32),
            "id2": np.full(n, -2, np.int32),
            "partons": ak.zip(
                {
                    "E": _j(mom[..., 0]),
                    "px": _j(mom[..., 1]),
                    "py": _j(mom[..., 2]),
                    "pz": _j(mom[..., 3]),
                    "pdgId": _j(np.tile(np.array([13, -13], np.int32), (n, 1))),
                }
            ),
        },
        depth_limit=1,
    )
    write_events(path, det, par)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("of")
    _sample(d / "data.root", 1500, 45.0, 1, 0)
    _sample(d / "sim.root", 3000, 40.0, 2, 100_000)
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
    assert s["n_fakes"] == 150 and s["n_sim"] == n_fid(sim) + 150
    with uproot.open(out / "histograms.root") as f:
        h = f["m_ll_truth"]
        n_truth = h.values(flow=True).sum()
    assert n_truth == n_fid(data) < 1500
