"""Tests of unfoldmem.flows.model_dir (and `unfoldmem train`, which writes model directories)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, write_random_sim_file
from unfoldmem.cards import load_card
from unfoldmem.cards.model import ConditionConfig, FlowConfig, ModelCard, TransferConfig
from unfoldmem.errors import ModelError
from unfoldmem.flows.cinn import CINN
from unfoldmem.flows.model_dir import (
    build_model,
    data_hash,
    encodings_of,
    load_model,
    save_model,
)
from unfoldmem.flows.training import TrainResult
from unfoldmem.flows.transfer import TransferFlow

FLOW = {"transforms": 2, "hidden": [8], "bins": 4}
COND = {"embed": 8, "hidden": [8], "context": 4}


def _toy(n: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    partons = torch.rand(n, 2, 4, generator=g, dtype=torch.float64) + torch.tensor(
        [20.0, 0, 0, 1.0], dtype=torch.float64
    )
    reco = torch.zeros(n, 4, 7, dtype=torch.float64)
    reco[..., :4] = partons[:, :1] + torch.rand(n, 4, 4, generator=g, dtype=torch.float64)
    reco[..., 6] = 3.0
    mask = torch.ones(n, 4, dtype=torch.bool)
    mask[: n // 2, 3] = False
    reco[~mask] = 0.0
    return partons, reco, mask


@pytest.mark.parametrize("kind", ["cinn", "transfer", "bayesian", "ensemble"])
def test_round_trip(tmp_path: Path, kind: str) -> None:
    """save -> load gives the same class and identical log densities (reference: the saved model)."""
    partons, reco, mask = _toy()
    model_kind = "transfer" if kind == "transfer" else "cinn"
    unc = {"method": kind if kind in ("bayesian", "ensemble") else "none", "members": 2}
    card = ModelCard(
        name="t",
        model=model_kind,
        flow=FLOW,
        condition=COND,
        uncertainty=unc,
        transfer=TransferConfig(multiplicities=[3, 4], classifier_hidden=[4]),
    )
    if model_kind == "cinn":
        core = CINN.from_data(partons, reco, mask, flow=card.flow, condition=card.condition)
    else:
        core = TransferFlow.from_data(partons, reco, mask, config=card.transfer, flow=card.flow)
    model = build_model(card, encodings_of(core))
    h = data_hash({"p": partons, "r": reco})
    res = TrainResult(history={"train": [2.0, 1.0], "val": [2.5, 1.5], "lr": [1e-3, 1e-4]})
    out = save_model(tmp_path / "m", model, card, h, res, n_events=64)
    assert sorted(p.name for p in out.iterdir()) == [
        "card.yaml",
        "encoding.json",
        "history.json",
        "loss.png",
        "meta.json",
        "weights.pt",
    ]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["data_hash"] == h and "torch" in meta["versions"] and meta["n_events"] == 64
    loaded = load_model(out, card=card, data_hash=h)
    assert type(loaded.model) is type(model) and loaded.history["train"] == [2.0, 1.0]
    args = (partons,) if model_kind == "transfer" else (reco, mask)
    probe = (reco, mask) if model_kind == "transfer" else (model_core_x(core, partons),)
    torch.manual_seed(4)
    a = model(*args).log_prob(*probe)
    torch.manual_seed(4)
    b = loaded.model(*args).log_prob(*probe)
    assert torch.equal(a, b)


def model_core_x(core: CINN, partons: torch.Tensor) -> torch.Tensor:
    return core.encode_partons(partons)[0]


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, ModelCard, str]:
    partons, reco, mask = _toy()
    card = ModelCard(name="t", flow=FLOW, condition=COND)
    model = CINN.from_data(partons, reco, mask, flow=card.flow, condition=card.condition)
    h = data_hash([partons, reco])
    return save_model(tmp_path / "m", model, card, h), card, h


def test_mismatched_card(saved: tuple[Path, ModelCard, str]) -> None:
    """A card with another architecture is refused, naming the key; training/name may differ."""
    path, card, _ = saved
    other = card.model_copy(update={"flow": FlowConfig(transforms=3, hidden=[8], bins=4)})
    with pytest.raises(ModelError, match=r"flow\.transforms: model has 2, card has 3"):
        load_model(path, card=other)
    renamed = card.model_copy(
        update={"name": "other", "training": card.training.model_copy(update={"epochs": 1})}
    )
    assert load_model(path, card=renamed).card.name == "t"


def test_mismatched_data_and_encoding(saved: tuple[Path, ModelCard, str]) -> None:
    """Another data hash, edited encoding statistics or a truncated weights file: ModelError."""
    path, _, _ = saved
    with pytest.raises(ModelError, match="trained on data"):
        load_model(path, data_hash=data_hash([torch.zeros(3)]))
    enc = json.loads((path / "encoding.json").read_text())
    enc["parton"]["mean"][0] += 0.5
    (path / "encoding.json").write_text(json.dumps(enc))
    with pytest.raises(ModelError, match=r"encoding\.json does not match"):
        load_model(path)
    enc["parton"]["mean"] = enc["parton"]["mean"][:-1]
    (path / "encoding.json").write_text(json.dumps(enc))
    with pytest.raises(ModelError, match=r"weights\.pt does not fit"):
        load_model(path)


def test_old_format_refused(saved: tuple[Path, ModelCard, str]) -> None:
    """A model directory of another format version (format 1: 11-input condition MLP) is a
    ModelError that says to retrain, not a shape error deep inside load_state_dict."""
    path, _, _ = saved
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] = 1
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"model format 1.*retrain"):
        load_model(path)


def test_missing_pieces(tmp_path: Path, saved: tuple[Path, ModelCard, str]) -> None:
    """A missing directory or file is a ModelError naming it; a failed save leaves nothing."""
    with pytest.raises(ModelError, match="not a model directory"):
        load_model(tmp_path / "nope")
    path, card, h = saved
    (path / "meta.json").unlink()
    with pytest.raises(ModelError, match=r"missing meta\.json"):
        load_model(path)
    with pytest.raises(TypeError):
        save_model(tmp_path / "bad", torch.nn.Linear(2, 2), card, h)
    assert not (tmp_path / "bad").exists()
    assert not list(tmp_path.glob(".bad*"))


def test_shipped_model_cards_build() -> None:
    """Every card under cards/models loads and builds its network (small fake encodings)."""
    partons, reco, mask = _toy()
    cards = sorted((REPO / "cards" / "models").glob("*.yaml"))
    assert len(cards) >= 5
    for path in cards:
        card = load_card(path, "model")
        if card.model == "cinn":
            core = CINN.from_data(
                partons,
                reco,
                mask,
                flow=FlowConfig(transforms=1, hidden=[2]),
                condition=ConditionConfig(embed=2, hidden=[2], context=2),
            )
        else:
            r = reco.clone()
            r[:, 0, 6] = 0.0  # one MET-like object, the rest jets: 0..3 jets per event
            cfg = TransferConfig(multiplicities=[2, 3], classifier_hidden=[2])
            core = TransferFlow.from_data(
                partons, r, mask, config=cfg, flow=FlowConfig(transforms=1, hidden=[2])
            )
            card = card.model_copy(update={"transfer": cfg})
        model = build_model(card, encodings_of(core))
        assert sum(p.numel() for p in model.parameters()) > 0, path


def test_cli_train_and_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`unfoldmem train` as a user runs it writes a loadable model; --resume after a finished run
    and a wrong card kind are handled."""
    from unfoldmem.cli import main

    sim = write_random_sim_file(tmp_path / "sim.root")
    card = REPO / "cards" / "models" / "cinn_demo.yaml"

    def run(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["unfoldmem", "-q", *map(str, args)])
        try:
            main()
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    assert run("train", card, "--data", sim, "-o", tmp_path / "m", "--epochs", "1") == 0
    loaded = load_model(tmp_path / "m")
    assert loaded.card.name == "cinn_demo" and loaded.card.training.epochs == 1
    assert loaded.model.parton_encoding.n_objects == 2  # the beam partons were dropped
    assert not (tmp_path / "m.ckpt").exists()
    capsys.readouterr()
    assert run("train", card, "--data", sim, "-o", tmp_path / "m") == 2
    assert "exists" in capsys.readouterr().err
    detector_card = next((REPO / "cards" / "detectors").glob("*.yaml"), None)
    if detector_card is not None:
        assert run("train", detector_card, "--data", sim, "-o", tmp_path / "x") == 2
        assert "model card" in capsys.readouterr().err
