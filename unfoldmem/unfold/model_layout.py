r"""What a cINN was trained on: the parton slots, their PDG ids and the reco multiplicities.

The model directory (:mod:`unfoldmem.flows.model_dir`) says how to encode the reco objects;
the :class:`ModelLayout` adds what the unfolding needs to know about the training data: the
PDG id of every parton slot and the reco multiplicities it was trained on, so data the model was
not trained for is refused with a :class:`~unfoldmem.errors.ModelError`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import torch
from torch import Tensor

from unfoldmem.errors import ModelError
from unfoldmem.io.atomic import atomic_path
from unfoldmem.io.partons import parton_arrays
from unfoldmem.physics import lorentz

__all__ = [
    "LAYOUT_FILE",
    "ModelLayout",
    "parton_slots",
    "load_layout",
    "check_data",
    "event_pdg",
]

#: Side file of a model directory holding its :class:`ModelLayout` (written by iterative runs).
LAYOUT_FILE = "layout.json"
_COLLECTIONS = ("jets", "muons", "electrons")


def parton_slots(partons: ak.Array, min_pt: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Which parton slots the cINN models, and their PDG ids, as in ``parton_objects``.

    A slot is kept when its pt exceeds ``min_pt`` in some event (incoming partons along the
    beam are dropped), the same rule as :func:`unfoldmem.flows.encoding.parton_objects`.

    Arguments:
        partons: parton records (``partons.{E,px,py,pz,pdgId}``), equal multiplicity.

    Returns:
        keep: (k_all,) bool; pdg: (k,) int64, the most frequent PDG id of each kept slot.
    """
    four, pdg = parton_arrays(partons)
    keep = (lorentz.pt(torch.from_numpy(four)) > min_pt).any(0).numpy()
    mode = []
    for col in pdg[:, keep].T:
        vals, counts = np.unique(col, return_counts=True)
        mode.append(int(vals[np.argmax(counts)]))
    return keep, np.asarray(mode, dtype=np.int64)


@dataclass
class ModelLayout:
    """What a cINN was trained on, beyond its encodings.

    Attributes:
        parton_pdg: PDG id of each modelled parton slot (k,).
        multiplicity: per reco collection (jets, muons, electrons) the [min, max] number of
            objects per event in the training data.
        met: whether the training events had a non-zero MET.
        process: observable-registry key (:mod:`unfoldmem.physics.observables`), or None.
        sign_varies: slots whose PDG id sign changes between training events (charge-flipped
            final states); their sign is set per event from the reco lepton charge.
    """

    parton_pdg: list[int]
    multiplicity: dict[str, list[int]] = field(default_factory=dict)
    met: bool = True
    process: str | None = None
    sign_varies: list[int] = field(default_factory=list)

    @classmethod
    def from_training(
        cls, partons: ak.Array, events: ak.Array, process: str | None = None
    ) -> ModelLayout:
        """Layout of training data: parton records of the reco-passing events and their reco records."""
        keep, pdg = parton_slots(partons)
        ids = ak.to_numpy(partons.partons.pdgId)[:, keep]
        flips = [int(i) for i in range(ids.shape[1]) if len(np.unique(np.sign(ids[:, i]))) > 1]
        mult = {}
        for c in _COLLECTIONS:
            n = ak.to_numpy(ak.num(events[c], axis=1))
            mult[c] = [int(n.min()), int(n.max())] if len(n) else [0, 0]
        met = bool(np.any(ak.to_numpy(events.met.pt) != 0))
        if process is None:
            from unfoldmem.physics.observables import guess_process

            try:
                process = guess_process(pdg)
            except ValueError:
                process = None
        return cls(pdg.tolist(), mult, met, process, flips)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelLayout:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)

    def save(self, model_dir: str | Path) -> Path:
        """Write ``layout.json`` into a model directory (atomically)."""
        path = Path(model_dir) / LAYOUT_FILE
        with atomic_path(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1))
        return path


def load_layout(model_dir: str | Path, meta: dict[str, Any] | None = None) -> ModelLayout | None:
    """The layout of a model: ``meta.json['layout']`` or ``layout.json``; None if neither exists."""
    if meta and isinstance(meta.get("layout"), dict):
        return ModelLayout.from_dict(meta["layout"])
    path = Path(model_dir) / LAYOUT_FILE
    if path.is_file():
        try:
            return ModelLayout.from_dict(json.loads(path.read_text()))
        except (TypeError, ValueError) as exc:
            raise ModelError(
                str(model_dir), f"{LAYOUT_FILE} is not a valid layout ({exc})"
            ) from exc
    return None


def check_data(layout: ModelLayout, events: ak.Array, model_dir: str, data: str) -> None:
    """Refuse detector data the model was not trained for.

    Raises:
        ModelError: a reco collection the model was trained with is absent from the data (no
            object in any event: a missing branch or branch-map entry), the data hold objects of
            a collection never seen in training, some events have fewer objects than every
            training event, or MET is missing. The message names the data file, the collection
            and the multiplicities on both sides.
    """
    problems = []
    for c, (lo, hi) in layout.multiplicity.items():
        n = ak.to_numpy(ak.num(events[c], axis=1))
        if hi > 0 and n.max(initial=0) == 0:
            problems.append(
                f"no {c} in any event, but the model was trained with {lo}..{hi} "
                f"{c} per event (missing branches or branch-map entry?)"
            )
        elif hi == 0 and n.max(initial=0) > 0:
            problems.append(
                f"{int((n > 0).sum())} event(s) have {c}, which the model never saw "
                "in training (wrong model for this final state?)"
            )
        elif (n < lo).any():
            problems.append(
                f"{int((n < lo).sum())} of {len(n)} event(s) have fewer than {lo} "
                f"{c} (the minimum in training); data range {n.min()}..{n.max()}"
            )
    if layout.met and not np.any(ak.to_numpy(events.met.pt) != 0):
        problems.append(
            "MET is zero in every event (no MET branches?), the model was trained with MET"
        )
    if problems:
        raise ModelError(
            model_dir, f"data {data} do not match the training data: " + "; ".join(problems)
        )


def event_pdg(layout: ModelLayout, events: ak.Array) -> Tensor:
    """PDG ids of the parton slots in every event: (n, k) int64.

    The layout's ids, with the charge-flipped slots (``layout.sign_varies``) set per event from
    the charge of its leading reco lepton.
    """
    pdg = torch.tensor(layout.parton_pdg, dtype=torch.int64).expand(len(events), -1).clone()
    ref_lep = [
        layout.parton_pdg[i]
        for i in layout.sign_varies
        if abs(layout.parton_pdg[i]) in (11, 13, 15)
    ]
    if not ref_lep:
        return pdg
    # A charge-conjugated final state flips every varying slot together; which one an event is
    # follows the charge of its leading reco lepton (a negative lepton has a positive PDG id).
    leps = ak.concatenate([events.muons, events.electrons], axis=1)
    leps = leps[ak.argsort(leps.pt, axis=1, ascending=False)]
    q = torch.from_numpy(np.sign(ak.to_numpy(ak.fill_none(ak.firsts(leps.charge), 0.0)))).long()
    flip = torch.where(q == 0, 1, -q * int(np.sign(ref_lep[0])))
    idx = torch.tensor(layout.sign_varies)
    pdg[:, idx] = pdg[:, idx] * flip[:, None]
    return pdg
