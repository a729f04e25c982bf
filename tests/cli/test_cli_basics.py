"""Global options, card commands, inspect on our own and on a real file, and honest stubs."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DATA, make_detector_events
from unfoldmem import __version__
from unfoldmem.cli import app
from unfoldmem.io import write_events


def test_version(cli):
    res = cli("--version")
    assert res.code == 0 and res.out.strip() == f"unfoldmem {__version__}"


def test_cards_list_and_check(cli):
    res = cli("cards", "list", "cards")
    assert res.code == 0 and "branchmap  cards/branchmaps/cms_hzz.yaml" in res.out
    res = cli("cards", "check", "cards/branchmaps/cms_hzz.yaml", "--kind", "branchmap")
    assert res.code == 0 and res.out.startswith("ok")


def test_cards_check_bad_card_one_line(cli, tmp_path):
    bad = tmp_path / "b.yaml"
    bad.write_text("kind: branchmap\ntree: 3.5e+\nmet: 1\n")
    res = cli("cards", "check", bad)
    assert res.code == 2 and str(bad) in res.err and "'met'" in res.err
    assert len(res.err.strip().splitlines()) == 1


def test_inspect_our_file_json(cli, tmp_path):
    det = make_detector_events(200)
    path = write_events(tmp_path / "x.root", det)
    res = cli("inspect", path, "--json")
    info = json.loads(res.out)
    assert info["trees"]["Events"]["entries"] == 200
    mult = info["detector"]["jet_multiplicity"]
    assert sum(mult.values()) == 200
    import awkward as ak
    import numpy as np

    nj, counts = np.unique(np.asarray(ak.num(det.jets)), return_counts=True)
    assert mult == {str(k): int(c) for k, c in zip(nj, counts, strict=True)}


def test_inspect_real_file_tables(cli):
    res = cli("inspect", DATA / "uproot-HZZ.root", "-b", "cards/branchmaps/cms_hzz.yaml")
    assert res.code == 0
    assert "2421 events" in res.out and "Jet_Px" in res.out and "n jets" in res.out


STUBS = [c.name for c in app.registered_commands if (c.callback.__doc__ or "").endswith("(not yet available).")]


@pytest.mark.parametrize("verb", STUBS or ["<none>"])
def test_stub_verbs_say_not_available(cli, verb):
    if verb == "<none>":
        return
    res = cli(verb, "anything")
    assert res.code == 2 and "not yet available" in res.err and res.out == ""


def test_xsec_unknown_sampler_is_a_usage_error(cli):
    res = cli("xsec", "cards/processes/drell_yan.yaml", "--sampler", "magic", "--neval", "100", "--nitn", "1")
    assert res.code == 2 and "--sampler must be 'vegas' or 'flow'" in res.err
