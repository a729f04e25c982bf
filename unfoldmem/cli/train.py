r"""`unfoldmem train`: train a cINN or transfer-function flow from a model card and a simulation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from unfoldmem.cli._common import console, state

__all__ = ["register", "train"]


def _training_tensors(data: Path, card: Any) -> tuple[Any, Any, Any, Any, Any, Any]:
    """Reco-passing events joined by event_id: partons (n,k,4), reco (n,S,7), mask, weight."""
    import awkward as ak
    import numpy as np
    import torch

    from unfoldmem.errors import InputFileError
    from unfoldmem.flows.encoding import pad_reco, parton_objects
    from unfoldmem.io import read_detector, read_partons

    events = read_detector(data)
    partons = read_partons(data)
    partons = partons[ak.to_numpy(partons.pass_reco)]
    ids_d = ak.to_numpy(events.event_id)
    ids_p = ak.to_numpy(partons.event_id)
    common, i_d, i_p = np.intersect1d(ids_d, ids_p, return_indices=True)
    if len(common) == 0:
        raise InputFileError(str(data), "no event_id is both in 'Events' and among the "
                             "pass_reco events of 'Partons'")
    events, partons = events[i_d], partons[i_p]
    try:
        v = parton_objects(partons)
    except ValueError as exc:
        raise InputFileError(str(data), f"tree 'Partons': {exc}") from exc
    enc = card.encoding
    reco, mask = pad_reco(events, max_jets=enc.max_jets, max_leptons=enc.max_leptons)
    weight = torch.from_numpy(ak.to_numpy(partons.weight).astype(np.float64))
    return events, partons, v, reco, mask, weight


def train(
    card_path: Path = typer.Argument(..., help="Model card (cards/models/X.yaml)."),
    data: Path = typer.Option(..., "--data", "-d", help="Simulation ROOT file (Events + Partons)."),
    output: Path = typer.Option(..., "--output", "-o", help="Model directory to write."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUTPUT.ckpt if present."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Override the card's epochs."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUTPUT."),
) -> None:
    """Train the network a model card describes on the reco-passing events of DATA.

    Checkpoints go to OUTPUT.ckpt (every ``training.checkpoint_every`` steps and at the end);
    ``--resume`` continues from there exactly. The model directory holds weights, the card,
    the encoding statistics, versions, the training-data hash and loss.png.

    Example: ``unfoldmem train cards/models/cinn_demo.yaml --data sim.root -o models/cinn``
    """
    import torch

    from unfoldmem.cards import load_card
    from unfoldmem.errors import CardError
    from unfoldmem.flows.model_dir import build_model, data_hash, encodings_of, save_model
    from unfoldmem.flows.training import train as run_train
    from unfoldmem.io.atomic import check_writable

    card = load_card(card_path, "model")
    if epochs is not None:
        card = card.model_copy(update={"training": card.training.model_copy(
            update={"epochs": epochs})})
    check_writable(output, overwrite)
    if device.startswith("cuda") and not torch.cuda.is_available():
        msg = "--device cuda asked for, but no CUDA device is available"
        raise typer.BadParameter(msg, param_hint="--device")
    events, partons, v, reco, mask, weight = _training_tensors(data, card)
    torch.manual_seed(card.training.seed)
    if card.model == "cinn":
        from unfoldmem.flows.cinn import CINN
        from unfoldmem.unfold.model_layout import parton_slots

        core = CINN.from_data(v, reco, mask, weight, card.flow, card.condition, card.encoding,
                              pdg=parton_slots(partons)[1].tolist())
    else:
        from unfoldmem.flows.transfer import TransferFlow

        try:
            core = TransferFlow.from_data(v, reco, mask, weight, card.transfer, card.flow,
                                          card.encoding)
        except ValueError as exc:
            raise CardError(str(card_path), "transfer.multiplicities",
                            f"does not fit the training data: {exc}") from exc
    model = build_model(card, encodings_of(core))
    if card.model == "transfer":
        core.copy_pairing(model)  # pairing buffers are no encodings: build_model has none
    prep = core.prepare(v, reco, mask, weight)
    h = data_hash({"partons": v, "reco": reco, "mask": mask, "weight": weight})
    ckpt = output.with_name(output.name + ".ckpt")
    if not state.quiet:
        console.print(f"training {card.model} '{card.name}' on {len(weight)} events "
                      f"({sum(p.numel() for p in model.parameters() if p.requires_grad)} parameters)")
    result = run_train(model, prep, card.training, checkpoint=ckpt, resume=resume, device=device,
                       quiet=state.quiet)
    extra: dict[str, Any] = {}
    if card.model == "cinn":
        try:
            from unfoldmem.unfold.model_layout import ModelLayout

            extra["layout"] = ModelLayout.from_training(partons, events).to_dict()
        except (ImportError, AttributeError, ValueError):
            pass
    save_model(output, model.cpu(), card, h, result, n_events=len(weight), overwrite=overwrite,
               extra_meta=extra)
    ckpt.unlink(missing_ok=True)
    typer.echo(f"{output}: best validation NLL {result.best_val:.4f} at epoch "
               f"{result.best_epoch + 1}/{result.epochs_run}, {result.events_per_second:.0f} events/s")


def register(app: typer.Typer) -> None:
    """Add ``train`` to the app."""
    app.command("train")(train)
