"""Tests of the Pythia 8 chain: shower, hadronisation, anti-kt jets, then parametric smearing."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest

from unfoldmem.cards import load_card
from unfoldmem.cards.run import GeneratorConfig, SelectionConfig
from unfoldmem.io import read_detector, read_metadata, read_partons
from unfoldmem.physics.hadronic import integrand_from_card
from unfoldmem.simulate.pythia_chain import generate_file_pythia, pythia_settings

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, n: int) -> tuple[Path, object]:
    integrand = integrand_from_card(load_card(ROOT / "cards/processes/ttbar_semileptonic.yaml"))
    det = load_card(ROOT / "cards/detectors/default.yaml")
    out = tmp_path / "pythia.root"
    summary = generate_file_pythia(
        out, integrand, det, SelectionConfig(n_leptons_min=1), n, 5, GeneratorConfig(chunk_size=100)
    )
    return out, summary


@pytest.mark.pythia
def test_pythia_chain_ttbar_200(tmp_path: Path) -> None:
    """200 showered t tbar -> mu + jets events: the hard record is b mu+ nu bbar d ubar, jets
    are many (shower ISR/FSR), most events have an isolated muon; prints the multiplicity table.

    Reference: Pythia 8's own hard process and decay table (forced W+ -> mu+ nu, W- -> d ubar).
    """
    out, summary = _run(tmp_path, 200)
    print(summary.extra["jet_multiplicity"])
    partons = read_partons(out)
    assert len(partons) == 200
    ids = ak.to_list(partons.partons.pdgId)
    # t -> s W, d W (|V_ts|, |V_td|) replace a b quark now and then
    match = [sorted(row) == sorted([5, -13, 14, -5, 1, -2]) for row in ids]
    assert np.mean(match) > 0.95 and all(len(row) == 6 for row in ids)
    assert np.all((partons.x1.to_numpy() > 0) & (partons.x1.to_numpy() < 1))
    det = read_detector(out)
    n_jets = ak.num(det.jets, axis=1).to_numpy()
    assert 0.5 * 200 < len(det) <= 200  # an isolated muon in most events
    assert n_jets.mean() > 3.0 and (n_jets >= 5).mean() > 0.1  # shower jets: 4, 5, 6+
    assert ak.all(ak.num(det.muons, axis=1) >= 1)
    # σ(tt) × BR(W -> mu nu) × BR(W -> d ubar) at LO with Pythia's PDF: 10-30 pb
    assert 8 < summary.sigma_pb < 40
    assert summary.extra["jet_multiplicity"].count("\n") == 9
    assert read_metadata(out)["chain"] == "pythia"


def test_pythia_settings_reject_unknown_process() -> None:
    """A process without a Pythia equivalent is refused with its name in the message."""
    with pytest.raises(ValueError, match="nonexistent"):
        pythia_settings("nonexistent", {}, 13000.0, {})
    s = pythia_settings("drell_yan", {}, 13000.0, {"m_ll_min": 60.0, "m_ll_max": 120.0})
    assert "PhaseSpace:mHatMin = 60.0" in s and "PhaseSpace:mHatMax = 120.0" in s


@pytest.mark.slow
@pytest.mark.pythia
def test_pythia_chain_ttbar_2000(tmp_path: Path) -> None:
    """2000 events: jet multiplicity spread over 4, 5, 6+ and b-tags on ≈ two b jets.

    Reference: Pythia 8 shower (ISR/FSR) multiplicities; card b-tag efficiency 0.7 per b jet.
    """
    out, summary = _run(tmp_path, 2000)
    print(summary.extra["jet_multiplicity"])
    det = read_detector(out)
    n_jets = ak.num(det.jets, axis=1).to_numpy()
    for k in (4, 5):
        assert (n_jets == k).mean() > 0.05
    assert (n_jets >= 6).mean() > 0.05
    n_b = ak.sum(det.jets.btag, axis=1).to_numpy()
    assert 0.8 < n_b.mean() < 1.6
