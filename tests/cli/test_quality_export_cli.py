"""`unfoldmem quality` and `unfoldmem export` as a user runs them, on a two-jet toy simulation.

Independent references: the file's own truth (Partons / Events trees) for the quality report,
and the torch model itself for the exported graphs.
"""

from __future__ import annotations

import json
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch

from unfoldmem.cards.model import ModelCard
from unfoldmem.flows.cinn import CINN
from unfoldmem.flows.encoding import pad_reco, parton_objects
from unfoldmem.flows.model_dir import save_model
from unfoldmem.flows.transfer import TransferFlow
from unfoldmem.io import read_detector, read_partons, write_events
from unfoldmem.physics.lorentz import from_ptetaphim

SMALL = {"flow": {"transforms": 2, "hidden": [8]},
         "condition": {"embed": 8, "hidden": [8], "context": 4},
         "transfer": {"multiplicities": [2, 3], "classifier_hidden": [8]}}


def _j(x: np.ndarray) -> ak.Array:
    return ak.from_regular(ak.Array(x))


def _write_sim(path: Path, n: int = 600, seed: int = 3) -> None:
    """Two massless partons → two jets (10% pt smearing) + an extra soft jet in 30% of events."""
    rng = np.random.default_rng(seed)
    pt = rng.uniform(40, 120, (n, 2))
    eta, phi = rng.normal(0, 1.2, (n, 2)), rng.uniform(-np.pi, np.pi, (n, 2))
    mom = from_ptetaphim(torch.from_numpy(np.stack([pt, eta, phi, np.zeros((n, 2))], -1)))
    extra = rng.random(n) < 0.3
    jets = []
    for i in range(n):
        k = 3 if extra[i] else 2
        jp = list(pt[i] * (1 + 0.1 * rng.normal(size=2))) + [25.0 + 5 * rng.random()] * (k - 2)
        je = list(eta[i] + 0.05 * rng.normal(size=2)) + [0.3] * (k - 2)
        jf = list(phi[i]) + [1.0] * (k - 2)
        jets.append({"pt": jp, "eta": je, "phi": jf, "mass": list(5 + rng.random(k)),
                     "btag": [0.0] * k})
    empty = ak.unflatten(np.zeros(0), np.zeros(n, dtype=np.int64))
    lep = ak.zip({"pt": empty, "eta": empty, "phi": empty, "mass": empty, "charge": empty})
    ids = np.arange(n, dtype=np.int64)
    det = ak.zip({"event_id": ids, "weight": np.ones(n), "jets": ak.Array(jets), "muons": lep,
                  "electrons": lep,
                  "met": ak.zip({"pt": rng.exponential(10.0, n) + 1, "phi": rng.uniform(-3, 3, n)})},
                 depth_limit=1)
    m = mom.numpy()
    par = ak.zip({"event_id": ids, "weight": np.ones(n), "pass_reco": np.ones(n, bool),
                  "x1": np.full(n, 0.1), "x2": np.full(n, 0.1), "id1": np.full(n, 21, np.int32),
                  "id2": np.full(n, 21, np.int32),
                  "partons": ak.zip({"E": _j(m[..., 0]), "px": _j(m[..., 1]), "py": _j(m[..., 2]),
                                     "pz": _j(m[..., 3]),
                                     "pdgId": _j(np.tile(np.array([1, -1], np.int32), (n, 1)))})},
                 depth_limit=1)
    write_events(path, det, par)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("qe")
    sim = d / "sim.root"
    _write_sim(sim)
    events, partons = read_detector(sim), read_partons(sim)
    reco, mask = pad_reco(events)
    objs = parton_objects(partons)
    torch.manual_seed(0)
    cc = ModelCard(name="c", model="cinn", **SMALL)
    cinn = CINN.from_data(objs, reco, mask, flow=cc.flow, condition=cc.condition)
    save_model(d / "cinn", cinn, cc, "sha256:toy")
    tc = ModelCard(name="t", model="transfer", **SMALL)
    tf = TransferFlow.from_data(objs, reco, mask, config=tc.transfer, flow=tc.flow)
    save_model(d / "transfer", tf, tc, "sha256:toy")
    return {"dir": d, "sim": sim, "cinn": d / "cinn", "transfer": d / "transfer"}


@pytest.mark.parametrize("kind", ["cinn", "transfer"])
def test_quality_writes_report_and_flags_an_untrained_model(cli, setup, kind):
    """Reference: the simulation's truth; an untrained flow (standard-normal features around
    the training means, no reco dependence) must be flagged by the C2ST or a marginal."""
    out = setup["dir"] / f"q_{kind}"
    res = cli("quality", setup[kind], "--data", setup["sim"], "-o", out,
              "--max-events", "300")
    assert res.code == 0, res.err
    assert "flagged" in res.out
    rep = json.loads((out / "quality.json").read_text())
    assert rep["model_kind"] == kind and not rep["ok"] and rep["flags"]
    assert rep["model_dir"] == str(setup[kind]) and "C2ST AUC" in res.err
    assert set(rep["reference"]["pair_chi2_ndf"]) == set(rep["model"]["pair_chi2_ndf"])
    assert (out / "marginals.png").stat().st_size > 0
    if kind == "cinn":
        assert "m_system" in rep["features"] and "p0_pt" in rep["features"]
        assert "p0_m" not in rep["features"]  # massless partons: a constant, dropped
    else:
        assert rep["features"][0] == "n_jets" and "o0_eta" not in rep["features"]  # MET eta = 0
    assert 0.4 < rep["reference"]["auc"] < 0.6  # truth vs truth: a coin toss
    again = cli("quality", setup[kind], "--data", setup["sim"], "-o", out)
    assert again.code == 2 and "exists" in again.err


@pytest.mark.parametrize("kind", ["cinn", "transfer"])
def test_export_torchscript_matches_torch(cli, setup, kind):
    """Reference: the torch model; export.json records the graph-vs-torch deviation < 1e-5."""
    out = setup["dir"] / f"e_{kind}"
    res = cli("export", setup[kind], "--format", "torchscript", "-o", out)
    assert res.code == 0, res.err
    manifest = json.loads((out / "export.json").read_text())
    stem = "cinn_sampler" if kind == "cinn" else "transfer_log_density"
    assert manifest["graphs"][0]["file"] == f"{stem}.pt" and (out / f"{stem}.pt").is_file()
    assert manifest["max_abs_dev"] < 1e-5


def test_bad_inputs_are_one_line_errors(cli, setup, tmp_path):
    res = cli("export", setup["cinn"], "--format", "tflite", "-o", tmp_path / "x")
    assert res.code == 2 and "onnx, torchscript" in res.err
    res = cli("export", tmp_path / "nope", "-o", tmp_path / "y")
    assert res.code == 2 and "not a model directory" in res.err
    res = cli("quality", tmp_path / "nope", "--data", setup["sim"], "-o", tmp_path / "z")
    assert res.code == 2 and "nope" in res.err
