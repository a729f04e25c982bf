"""Every kind of bad input ends in one line naming the file and the problem, exit code 2, and
no output file (or temporary) left behind."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from tests.conftest import DATA, make_detector_events
from unfoldmem.io import write_events


def _native(tmp_path, n=50):
    return write_events(tmp_path / "in.root", make_detector_events(n))


def _assert_clean_failure(res, out_dir, *needles):
    assert res.code == 2, (res.code, res.err)
    lines = [ln for ln in res.err.strip().splitlines() if ln]
    assert len(lines) == 1, res.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not any(p.name.startswith(("out", ".out")) for p in out_dir.iterdir())


def test_not_a_root_file(cli, tmp_path):
    bad = tmp_path / "notes.root"
    bad.write_text("this is not ROOT\n" * 100)
    res = cli("convert", bad, "-o", tmp_path / "out.root")
    _assert_clean_failure(res, tmp_path, str(bad), "not a readable ROOT file")


def test_truncated_real_file(cli, tmp_path):
    src = (DATA / "uproot-HZZ.root").read_bytes()
    cut = tmp_path / "cut.root"
    cut.write_bytes(src[: len(src) // 2])
    res = cli("convert", cut, "-b", "cards/branchmaps/cms_hzz.yaml", "-o", tmp_path / "out.root")
    _assert_clean_failure(res, tmp_path, str(cut))
    assert "truncated" in res.err or "not a readable ROOT file" in res.err


def test_missing_tree(cli, tmp_path):
    path = _native(tmp_path)
    res = cli("convert", path, "-b", "cards/branchmaps/delphes_flat.yaml", "-o", tmp_path / "out.root")
    _assert_clean_failure(res, tmp_path, str(path), "no tree 'Delphes'", "Events")


def test_missing_branch_lists_closest(cli, tmp_path):
    det = make_detector_events(20)
    path = tmp_path / "in.root"
    with uproot.recreate(path) as f:
        f.mktree("Events", {"MET_Pt": "float64", "MET_phi": "float64"})
        f["Events"].extend({"MET_Pt": np.asarray(det.met.pt), "MET_phi": np.asarray(det.met.phi)})
    res = cli("convert", path, "-o", tmp_path / "out.root")
    _assert_clean_failure(res, tmp_path, str(path), "no branch 'MET_pt'", "MET_Pt")


def test_wrong_dtype(cli, tmp_path):
    card = tmp_path / "strmap.yaml"
    card.write_text("kind: branchmap\ntree: events\nmet: {pt: Type, phi: px1}\n")
    res = cli("convert", DATA / "uproot-Zmumu.root", "-b", card, "-o", tmp_path / "out.root")
    _assert_clean_failure(res, tmp_path, "uproot-Zmumu.root", "branch 'Type'", "numeric")


def test_jagged_where_flat_expected(cli, tmp_path):
    path = tmp_path / "in.root"
    with uproot.recreate(path) as f:
        data = {"MET": ak.zip({"pt": ak.Array([[1.0], [2.0, 3.0]]), "phi": ak.Array([[0.0], [0.1, 0.2]])})}
        f.mktree("Events", {k: v.type for k, v in data.items()})
        f["Events"].extend(data)
    res = cli("convert", path, "-o", tmp_path / "out.root")
    _assert_clean_failure(res, tmp_path, str(path), "MET_pt", "flat")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_values_error_by_default_and_drop_on_request(cli, tmp_path, value):
    det = make_detector_events(40)
    met = np.asarray(det.met.pt).copy()
    met[[3, 7, 11]] = value
    det = ak.with_field(det, ak.zip({"pt": met, "phi": det.met.phi}), "met")
    path = write_events(tmp_path / "in.root", det)
    res = cli("convert", path, "-o", tmp_path / "out.root")
    _assert_clean_failure(res, tmp_path, str(path), "'MET_pt'", "3 non-finite")
    res = cli("--quiet", "convert", path, "-o", tmp_path / "out.root", "--on-nan", "drop")
    assert res.code == 0, res.err
    from unfoldmem.io import read_detector

    assert len(read_detector(tmp_path / "out.root")) == 37


def test_empty_tree(cli, tmp_path):
    path = tmp_path / "in.root"
    with uproot.recreate(path) as f:
        f.mktree("Events", {"MET_pt": "float64", "MET_phi": "float64"})
    res = cli("convert", path, "-o", tmp_path / "out.root")
    _assert_clean_failure(res, tmp_path, str(path), "no entries")


def test_output_directory_missing(cli, tmp_path):
    path = _native(tmp_path)
    target = tmp_path / "nowhere" / "out.root"
    res = cli("convert", path, "-o", target)
    assert res.code == 2 and "does not exist" in res.err and str(target) in res.err
    assert not (tmp_path / "nowhere").exists()


def test_existing_output_refused_unless_overwrite(cli, tmp_path):
    path = _native(tmp_path)
    out = tmp_path / "out.root"
    out.write_text("precious")
    res = cli("convert", path, "-o", out)
    assert res.code == 2 and "--overwrite" in res.err and str(out) in res.err
    assert out.read_text() == "precious"
    res = cli("--quiet", "convert", path, "-o", out, "--overwrite")
    assert res.code == 0
    assert out.read_bytes()[:4] == b"root"
