"""Every shipped card loads; a wrong key, type or missing file names the card, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO
from unfoldmem.cards import CARD_KINDS, load_card
from unfoldmem.errors import CardError

ALL_CARDS = sorted((REPO / "cards").rglob("*.yaml"))


def test_cards_are_shipped():
    kinds = {p.parent.name for p in ALL_CARDS}
    assert {"branchmaps"} <= kinds


@pytest.mark.parametrize("path", ALL_CARDS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_card_loads(path: Path):
    card = load_card(path)
    assert type(card) in CARD_KINDS.values()


def test_unknown_key_names_card_key_and_allowed(tmp_path):
    card = tmp_path / "bm.yaml"
    card.write_text("kind: branchmap\ntree: Events\nmet: {pt: MET_pt, phi: MET_phi}\njetz: {}\n")
    with pytest.raises(CardError) as err:
        load_card(card)
    msg = str(err.value)
    assert str(card) in msg and "'jetz'" in msg and "unknown key" in msg and "jets" in msg


def test_wrong_type_names_key_and_value(tmp_path):
    card = tmp_path / "run.yaml"
    proc = tmp_path / "p.yaml"
    proc.write_text("kind: process\nprocess: drell_yan\n")
    card.write_text(f"kind: run\nprocess: {proc.name}\ndetector: {proc.name}\nn_events: many\n")
    with pytest.raises(CardError) as err:
        load_card(card)
    assert "'n_events'" in str(err.value) and "'many'" in str(err.value)


def test_missing_referenced_file(tmp_path):
    card = tmp_path / "run.yaml"
    card.write_text("kind: run\nprocess: nothere.yaml\ndetector: nothere.yaml\n")
    with pytest.raises(CardError) as err:
        load_card(card, "run")
    assert "'process'" in str(err.value) and "nothere.yaml" in str(err.value)


def test_wrong_kind_and_bad_yaml(tmp_path):
    card = tmp_path / "x.yaml"
    card.write_text("kind: branchmap\n")
    with pytest.raises(CardError, match="expected a process card"):
        load_card(card, "process")
    card.write_text("kind: [unclosed\n")
    with pytest.raises(CardError, match="not valid YAML at line 2: expected ',' or ']'"):
        load_card(card)
    card.write_text("kind: spaceship\n")
    with pytest.raises(CardError, match="expected one of: process"):
        load_card(card)


def test_detector_card_without_isr_changes_only_the_isr_law() -> None:
    """`without_isr` switches the ISR jets off (distribution none) and keeps everything else;
    the original card is not modified."""
    from unfoldmem.cards import load_card

    card = load_card(Path(__file__).resolve().parents[2] / "cards/detectors/default.yaml",
                     "detector")
    assert card.isr.distribution != "none"
    off = card.without_isr()
    assert off.isr.distribution == "none" and card.isr.distribution != "none"
    assert off.model_dump(exclude={"isr"}) == card.model_dump(exclude={"isr"})
    assert off.isr.model_dump(exclude={"distribution"}) == card.isr.model_dump(
        exclude={"distribution"})
