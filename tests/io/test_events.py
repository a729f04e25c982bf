"""ROOT round trips and reading real files through branch maps."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from tests.conftest import DATA, REPO, make_detector_events
from unfoldmem.cards import load_card
from unfoldmem.io import (
    EventWriter,
    has_tree,
    iterate_detector,
    read_detector,
    read_metadata,
    read_partons,
    write_events,
)


def _partons(n: int) -> ak.Array:
    rng = np.random.default_rng(3)
    counts = np.full(n, 2)
    four = {k: ak.unflatten(rng.normal(size=2 * n), counts) for k in ("E", "px", "py", "pz")}
    four["pdgId"] = ak.unflatten(np.tile([13, -13], n).astype(np.int32), counts)
    return ak.zip(
        {
            "event_id": np.arange(n, dtype=np.int64),
            "weight": np.ones(n),
            "pass_reco": rng.random(n) < 0.7,
            "x1": rng.random(n),
            "x2": rng.random(n),
            "id1": np.full(n, 2, dtype=np.int32),
            "id2": np.full(n, -2, dtype=np.int32),
            "partons": ak.zip(four),
            "theta": ak.zip({"m_Z": np.full(n, 91.1876)}),
        },
        depth_limit=1,
    )


def test_round_trip_is_exact(tmp_path):
    det, par = make_detector_events(300), _partons(400)
    path = write_events(tmp_path / "sim.root", det, par, metadata={"process": "drell_yan"})
    det2, par2 = read_detector(path), read_partons(path)
    assert ak.to_list(det2) == ak.to_list(det)
    assert ak.to_list(par2) == ak.to_list(par)
    assert read_metadata(path)["process"] == "drell_yan"
    assert read_metadata(path)["n_partons"] == 400
    assert has_tree(path, "Partons") and not has_tree(path, "Nope")
    with uproot.open(path) as f:
        assert f.classnames()["Events;1"] == "TTree"


def test_streamed_chunks_equal_one_write(tmp_path):
    det = make_detector_events(1000)
    with EventWriter(tmp_path / "a.root") as w:
        for i in range(0, 1000, 250):
            w.write(detector=det[i : i + 250])
    chunks = list(iterate_detector(tmp_path / "a.root", step_size=300))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    assert ak.to_list(ak.concatenate(chunks)) == ak.to_list(det)


def test_writer_failure_leaves_nothing(tmp_path):
    out = tmp_path / "x.root"
    with pytest.raises(RuntimeError, match="boom"), EventWriter(out) as w:
        w.write(detector=make_detector_events(10))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_real_cms_zmumu_through_branch_map():
    """Real CMS 2010 dimuons: the invariant mass we compute equals the file's own `M` branch."""
    bmap = load_card(REPO / "cards/branchmaps/cms_zmumu.yaml")
    ev = read_detector(DATA / "uproot-Zmumu.root", branchmap=bmap)
    assert len(ev) == 2304
    assert ak.all(ak.num(ev.muons) == 2)
    import vector

    mu = vector.zip({k: ev.muons[k] for k in ("pt", "eta", "phi", "mass")})
    m = (mu[:, 0] + mu[:, 1]).mass
    with uproot.open(DATA / "uproot-Zmumu.root") as f:
        m_file = f["events"]["M"].array(library="np")
    np.testing.assert_allclose(np.asarray(m), m_file, rtol=1e-6, atol=1e-6)


def test_real_cms_hzz_through_branch_map():
    """CMS tutorial sample: jet pt from (px, py) equals hypot of the file's branches."""
    bmap = load_card(REPO / "cards/branchmaps/cms_hzz.yaml")
    ev = read_detector(DATA / "uproot-HZZ.root", branchmap=bmap)
    with uproot.open(DATA / "uproot-HZZ.root") as f:
        t = f["events"]
        px, py = t["Jet_Px"].array(), t["Jet_Py"].array()
        w = t["EventWeight"].array(library="np")
    np.testing.assert_allclose(ak.flatten(ev.jets.pt), ak.flatten(np.hypot(px, py)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ev.weight), w, rtol=1e-7)
    assert len(ev) == 2421
