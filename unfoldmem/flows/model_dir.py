r"""Model directories: weights, model card, encoding statistics, versions and training-data hash.

Layout of ``models/NAME/`` (written atomically, all or nothing)::

    weights.pt      state_dict (torch.save); read back with torch.load(weights_only=True)
    card.yaml       the model card the network was built and trained from
    encoding.json   encoding layouts and standardisation statistics (plain JSON)
    meta.json       format version, package versions, sha256 of the training data, n events,
                    creation time (UTC), training summary
    history.json    per-epoch train/validation loss and learning rate (if trained here)
    loss.png        the loss curve (if trained here)

:func:`load_model` rebuilds the network from ``card.yaml`` + ``encoding.json``, loads the
weights strictly and checks them against the JSON statistics, a card the caller expects and the
hash of the data the caller has: any mismatch is a :class:`~unfoldmem.errors.ModelError` that
names the directory, the file and what differs.

Example:
    >>> import tempfile, pathlib
    >>> card = ModelCard(name="demo", flow={"transforms": 1, "hidden": [4]},
    ...                  condition={"embed": 4, "hidden": [4], "context": 2})
    >>> objs = torch.rand(8, 2, 4) + 1.0
    >>> reco = torch.zeros(8, 3, 7); reco[..., :4] = torch.rand(8, 3, 4) + 1.0
    >>> mask = torch.ones(8, 3, dtype=torch.bool)
    >>> model = CINN.from_data(objs, reco, mask, flow=card.flow, condition=card.condition)
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "m"
    >>> h = data_hash({"partons": objs})
    >>> _ = save_model(out, model, card, h)
    >>> loaded = load_model(out, card=card, data_hash=h)
    >>> type(loaded.model).__name__, loaded.card.name
    ('CINN', 'demo')
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from unfoldmem.cards.base import validate_card
from unfoldmem.cards.model import ModelCard
from unfoldmem.errors import CardError, ModelError
from unfoldmem.flows.bayesian import BayesianFlow, DeepEnsemble
from unfoldmem.flows.cinn import CINN
from unfoldmem.flows.encoding import ObjectEncoding, RecoEncoding
from unfoldmem.flows.parametrization import parton_encoding_from_dict
from unfoldmem.flows.training import TrainResult, plot_loss
from unfoldmem.flows.transfer import TransferFlow
from unfoldmem.io.atomic import atomic_path

__all__ = [
    "FORMAT_VERSION",
    "LoadedModel",
    "data_hash",
    "encodings_of",
    "build_model",
    "core_of",
    "save_model",
    "load_model",
    "versions",
]

FORMAT_VERSION = 2
_FILES = ("weights.pt", "card.yaml", "encoding.json", "meta.json")


@dataclass
class LoadedModel:
    """A model read back from a directory."""

    model: nn.Module
    card: ModelCard
    encodings: dict[str, Any]
    meta: dict[str, Any]
    path: Path
    history: dict[str, list[float]] = field(default_factory=dict)


def data_hash(data: Mapping[str, Any] | Sequence[Any]) -> str:
    """sha256 over tensors/arrays (dtype, shape, bytes), keys sorted: the training-data hash."""
    h = hashlib.sha256()
    items = sorted(data.items()) if isinstance(data, Mapping) else list(enumerate(data))
    for key, value in items:
        arr = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
        arr = np.ascontiguousarray(arr)
        h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return "sha256:" + h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of Python and of the packages a model depends on."""
    out = {"python": platform.python_version()}
    for pkg in ("unfoldmem", "torch", "zuko", "pyro-ppl", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def core_of(model: nn.Module) -> nn.Module:
    """The plain CINN or TransferFlow inside a Bayesian or ensemble wrapper (or the model)."""
    if isinstance(model, BayesianFlow):
        return model.base
    if isinstance(model, DeepEnsemble):
        return model.ensemble[0]
    return model


def encodings_of(model: nn.Module) -> dict[str, Any]:
    """Plain-JSON encodings of a CINN or TransferFlow (also inside a Bayesian/ensemble wrapper)."""
    core = core_of(model)
    if isinstance(core, CINN):
        return {"model": "cinn", "parton": core.parton_encoding.to_dict(),
                "reco": core.reco_encoding.to_dict()}
    if isinstance(core, TransferFlow):
        return {"model": "transfer", "parton": core.parton_encoding.to_dict(),
                "reco": [e.to_dict() for e in core.reco_encodings],
                "fixed_types": core.fixed_types.tolist()}
    msg = f"cannot describe the encodings of a {type(core).__name__}"
    raise TypeError(msg)


def build_model(card: ModelCard, encodings: Mapping[str, Any]) -> nn.Module:
    """Build the (untrained) network a card describes, with the given encodings.

    Arguments:
        card: which model, its architecture and uncertainty method.
        encodings: from :func:`encodings_of` (or a directory's ``encoding.json``).
    """
    if encodings.get("model") != card.model:
        msg = f"the encodings are for a '{encodings.get('model')}' model, the card asks for '{card.model}'"
        raise ValueError(msg)

    def one() -> nn.Module:
        if card.model == "cinn":
            # the parametrisation is in encoding.json ("objects" where it has none)
            return CINN(parton_encoding_from_dict(encodings["parton"]),
                        RecoEncoding.from_dict(encodings["reco"]), card.flow, card.condition)
        penc = ObjectEncoding.from_dict(encodings["parton"])
        renc = [ObjectEncoding.from_dict(d) for d in encodings["reco"]]
        return TransferFlow(penc, renc, card.transfer, card.flow,
                            torch.tensor(encodings["fixed_types"]))

    unc = card.uncertainty
    if unc.method == "bayesian":
        return BayesianFlow(one(), unc.prior_var, unc.init_logvar, unc.members)
    if unc.method == "ensemble":
        return DeepEnsemble(one, unc.members)
    return one()


def save_model(
    path: str | Path,
    model: nn.Module,
    card: ModelCard,
    data_hash: str,
    result: TrainResult | None = None,
    n_events: int | None = None,
    overwrite: bool = False,
    extra_meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model directory atomically (see the module docstring for the layout).

    Arguments:
        path: the directory to create.
        model: the trained network (CINN, TransferFlow or a Bayesian/ensemble wrapper).
        card: the model card it was built from.
        data_hash: :func:`data_hash` of the training data.
        result: the training result (history and summary), if any.
        n_events: number of training events, for the record.
        overwrite: replace an existing directory.
        extra_meta: more JSON-able entries for ``meta.json`` (e.g. the unfolding ``layout``).
    """
    path = Path(path)
    meta = {
        "format_version": FORMAT_VERSION, "model_class": type(model).__name__,
        "versions": versions(), "data_hash": data_hash, "n_events": n_events,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "training": None if result is None else
        {k: v for k, v in result.to_dict().items() if k != "history"},
        **(extra_meta or {}),
    }
    with atomic_path(path, overwrite=overwrite, directory=True) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "weights.pt")
        (tmp / "card.yaml").write_text(yaml.safe_dump(card.model_dump(mode="json"), sort_keys=False))
        (tmp / "encoding.json").write_text(json.dumps(encodings_of(model), indent=1))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        if result is not None:
            (tmp / "history.json").write_text(json.dumps(result.history, indent=1))
            plot_loss(result.history, tmp / "loss.png", title=card.name)
    return path


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: model has {a!r}, card has {b!r}"]


def load_model(
    path: str | Path,
    card: ModelCard | None = None,
    data_hash: str | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load a model directory and check it.

    Arguments:
        path: the model directory.
        card: the card the caller expects; everything but ``training`` and ``name`` must match.
        data_hash: the hash of data the model must have been trained on (``None``: no check).
        device: where to put the model.

    Raises:
        ModelError: missing files, unreadable weights, a card, encoding or data hash that does
        not match.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelError(str(path), "not a model directory (it does not exist or is a file)")
    missing = [f for f in _FILES if not (path / f).is_file()]
    if missing:
        raise ModelError(str(path), f"missing {', '.join(missing)}; a model directory has "
                         f"{', '.join(_FILES)}")
    try:
        raw_card = yaml.safe_load((path / "card.yaml").read_text())
        if isinstance(raw_card, dict) and isinstance(raw_card.get("encoding"), dict):
            # models written before parton_coordinates existed used per-object coordinates
            raw_card["encoding"].setdefault("parton_coordinates", "objects")
        stored = validate_card(ModelCard, raw_card, path / "card.yaml")
    except CardError as exc:
        raise ModelError(str(path), f"card.yaml is not a valid model card: {exc}") from exc
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        # 2: the condition network's object MLP takes atanh(φ/π) as a 12th input
        raise ModelError(str(path), f"written in model format {meta.get('format_version')}, this "
                         f"unfoldmem reads format {FORMAT_VERSION}; retrain the model")
    encodings = json.loads((path / "encoding.json").read_text())
    if card is not None:
        skip = {"training", "name"}
        a = {k: v for k, v in stored.model_dump(mode="json").items() if k not in skip}
        b = {k: v for k, v in card.model_dump(mode="json").items() if k not in skip}
        diffs = _diff(a, b)
        if diffs:
            raise ModelError(str(path), "card does not match the model's card.yaml: "
                             + "; ".join(diffs[:5]) + (" ..." if len(diffs) > 5 else ""))
    if data_hash is not None and meta.get("data_hash") != data_hash:
        raise ModelError(str(path), f"trained on data {meta.get('data_hash')}, but the data "
                         f"given hash to {data_hash}")
    try:
        model = build_model(stored, encodings)
        state = torch.load(path / "weights.pt", weights_only=True, map_location="cpu")
        model.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelError(str(path), f"weights.pt does not fit card.yaml + encoding.json: {exc}"
                         ) from exc
    rebuilt = encodings_of(model)
    if json.loads(json.dumps(rebuilt)) != encodings:
        raise ModelError(str(path), "encoding.json does not match the statistics in weights.pt")
    hist_file = path / "history.json"
    history = json.loads(hist_file.read_text()) if hist_file.is_file() else {}
    model.to(device).eval()
    return LoadedModel(model, stored, encodings, meta, path, history)
