"""`unfoldmem likelihood` as a user runs it: DY events in, ll.root out; bad input gives exit 2."""

from __future__ import annotations

import math
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch
import uproot

from tests._support.mem_events import dy_setup
from tests.conftest import REPO
from unfoldmem.inference.likelihood_file import read_likelihoods
from unfoldmem.io import write_events

torch.set_num_threads(1)

PROCESS = REPO / "cards/processes/drell_yan.yaml"


@pytest.fixture(scope="module")
def dy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five DY events with two muons; the last one has a NaN muon pt (must be flagged)."""
    had, det, _ = dy_setup()
    g = torch.Generator().manual_seed(5)
    u = torch.rand(3000, had.dim, generator=g, dtype=torch.float64)
    pt = had(u)
    keep = torch.rand(len(u), generator=g, dtype=torch.float64) < pt.weight / pt.weight.max()
    p_out = pt.p_out[keep]
    out = det.simulate(p_out, torch.tensor(had.process.final_state).expand(len(p_out), 2), g)
    sel = ((out.muons.count == 2) & (out.electrons.count == 0)).numpy()
    rec = out.to_awkward()[sel][:5]
    n = len(rec)
    muons = rec.muons
    pts = ak.to_list(muons.pt)
    pts[-1][0] = float("nan")
    muons = ak.zip(
        {
            "pt": ak.Array(pts),
            "eta": muons.eta,
            "phi": muons.phi,
            "mass": muons.mass,
            "charge": muons.charge,
        }
    )
    jets = ak.zip({k: rec.jets[k] for k in ("pt", "eta", "phi", "mass", "btag")})
    ele = ak.zip({k: rec.electrons[k] for k in ("pt", "eta", "phi", "mass", "charge")})
    records = ak.zip(
        {
            "event_id": np.arange(100, 100 + n, dtype=np.int64),
            "weight": np.ones(n),
            "jets": jets,
            "muons": muons,
            "electrons": ele,
            "met": rec.met,
        },
        depth_limit=1,
    )
    path = tmp_path_factory.mktemp("mem") / "dy.root"
    write_events(path, detector=records)
    return path


def test_likelihood_cli_writes_ll_root(cli, dy_file: Path, tmp_path: Path) -> None:
    """Grid of 3 m_Z points, exact W: finite log P and errors for good events, flag for the NaN
    event, per-permutation tree whose entries sum to the total (one assignment in DY)."""
    out = tmp_path / "ll.root"
    r = cli(
        "-q",
        "likelihood",
        dy_file,
        "--process",
        PROCESS,
        "--theta",
        "m_z=90.5:92:3",
        "--precision",
        "0.05",
        "--n-max",
        "2048",
        "--per-permutation",
        "-o",
        out,
    )
    assert r.code == 0, r.err
    lik = read_likelihoods(out)
    assert lik.n_points == 3 and lik.n_events == 5
    assert lik.theta_grid["m_z"].tolist() == pytest.approx([90.5, 91.25, 92.0])
    assert lik.event_id.tolist() == [100, 101, 102, 103, 104]
    assert lik.flag.tolist() == [0, 0, 0, 0, 1]
    good = lik.flag == 0
    assert torch.isfinite(lik.log_p[good]).all() and (lik.log_p_err[good] < 0.1).all()
    assert not torch.isnan(lik.log_p).any() and torch.isneginf(lik.log_p[~good]).all()
    assert (lik.ess[good] > 10).all()
    with uproot.open(out) as f:
        perm = f["Permutations"].arrays(library="np")
    lp = perm["log_p_perm"].reshape(5, 3, -1)
    total = np.logaddexp.reduce(lp, axis=-1)
    assert np.allclose(total[:4], lik.log_p[:4].numpy(), rtol=0, atol=1e-10)
    assert math.isinf(total[4, 0])
    r2 = cli("-q", "likelihood", dy_file, "--process", PROCESS, "--theta", "m_z=91", "-o", out)
    assert r2.code == 2 and "--overwrite" in r2.err


def _run(cli, dy_file: Path, out: Path, *extra: object):
    r = cli("-q", "likelihood", dy_file, "--process", PROCESS, "--theta", "m_z=90.5:92:3",
            "--precision", "0.1", "--n-max", "512", "--chunk-size", "2", "-o", out, *extra)
    assert r.code == 0, r.err
    return read_likelihoods(out)


def test_likelihood_cli_dask_equals_local(cli, dy_file: Path, tmp_path: Path) -> None:
    """--workers 2 (a local cluster of 2 worker processes) and --scheduler ADDRESS (a running
    cluster) give the single-process result to 1e-12 relative (reference: the local run, same
    chunks of 2 events: 3 chunks, one of them with the flagged event)."""
    from distributed import LocalCluster

    local = _run(cli, dy_file, tmp_path / "local.root")
    dask = _run(cli, dy_file, tmp_path / "dask.root", "--workers", "2")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster:
        remote = _run(cli, dy_file, tmp_path / "remote.root", "--scheduler",
                      cluster.scheduler_address)
    good = local.flag == 0
    assert int(good.sum()) == 4
    for other in (dask, remote):
        assert torch.equal(other.flag, local.flag)
        assert torch.equal(other.event_id, local.event_id)
        np.testing.assert_allclose(other.log_p[good].numpy(), local.log_p[good].numpy(),
                                   rtol=1e-12, atol=0)
        np.testing.assert_allclose(other.log_p_err[good].numpy(), local.log_p_err[good].numpy(),
                                   rtol=1e-12, atol=0)
        assert torch.isneginf(other.log_p[~good]).all()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--theta", "m_z=91", "--workers", "2", "--scheduler", "tcp://x:1"], "not both"),
        (["--theta", "m_z=91", "--workers", "0"], "must be >= 1"),
        (["--theta", "m_z=91", "--chunk-size", "0"], "must be >= 1"),
        (["--theta", "m_z=90:92"], "NAME=START:STOP:NPOINTS"),
        (["--theta", "m_t=170:176:3"], "not a parameter of 'drell_yan'"),
        (["--theta", "m_z=91", "--tf", "magic"], "'exact' or 'learned'"),
        (["--theta", "m_z=91", "--tf", "learned"], "--transfer"),
    ],
)
def test_likelihood_cli_bad_input(
    cli, dy_file: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    """User mistakes exit with code 2 and a one-line message naming the option."""
    r = cli("likelihood", dy_file, "--process", PROCESS, *args, "-o", tmp_path / "x.root")
    assert r.code == 2
    assert needle in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "x.root").exists()
