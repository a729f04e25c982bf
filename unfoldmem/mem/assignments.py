r"""Reco events in the padded layout, and the parton → reco-object assignments of the exact W.

Assignments (exact W): every lepton parton goes to the reco lepton of the same flavour and
charge; every quark/gluon parton to a distinct reco jet; reco jets left over are ISR. With
``btag_rule="exact"`` all :math:`k!/(k-n_j)!` injective maps of the :math:`n_j` jet partons into
the k reco jets are summed, each weighted by the exact b-tag probabilities (which the learned
flows also model); ``"strict"`` keeps only maps sending b partons to tagged and other partons to
untagged jets (MadWeight/MoMEMta practice). Lost partons are not modelled: an event with fewer
reco objects than partons has no valid assignment and is flagged. The learned W has no explicit
assignment (the flow models the ordered reco event): one "permutation".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unfoldmem.simulate.detector import KIND_ELECTRON, KIND_JET, KIND_MUON, object_kind

__all__ = ["Assignments", "RecoEvents", "build_assignments"]

# Reco type codes of flows.encoding.pad_reco.
_MET, _MUON, _ELECTRON, _JET = 0, 1, 2, 3
_KIND_TO_TYPE = {KIND_MUON: _MUON, KIND_ELECTRON: _ELECTRON, KIND_JET: _JET}


@dataclass
class RecoEvents:
    """Detector events in the padded layout of :func:`unfoldmem.flows.encoding.pad_reco`.

    Arguments:
        objects: (B, slots, 7) float64 (pt GeV, eta, phi, mass GeV, btag, charge, type code);
            slot 0 is the MET.
        mask: (B, slots) bool, True for real objects.
    """

    objects: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return int(self.objects.shape[0])

    def __getitem__(self, index: Any) -> RecoEvents:
        return RecoEvents(self.objects[index], self.mask[index])

    @classmethod
    def from_awkward(cls, events: Any, max_jets: int = 8, max_leptons: int = 2) -> RecoEvents:
        """From detector records (``jets``, ``muons``, ``electrons``, ``met``; see io)."""
        from unfoldmem.flows.encoding import pad_reco

        objects, mask = pad_reco(events, max_jets=max_jets, max_leptons=max_leptons)
        return cls(objects.to(torch.float64), mask)

    def finite(self) -> Tensor:
        """(B,) True where every real object's values are finite."""
        ok = torch.isfinite(self.objects).all(-1) | ~self.mask
        return ok.all(-1)


@dataclass
class Assignments:
    """Allowed parton → reco-slot maps of a batch, padded to P per event.

    Arguments:
        index: (B, P, n) long, reco slot of parton i, −1 for invisible partons.
        valid: (B, P) bool, False for padding.
        n_valid: (B,) number of valid maps (0: no valid assignment).
    """

    index: Tensor
    valid: Tensor
    n_valid: Tensor


def build_assignments(events: RecoEvents, final_state: Sequence[int],
                      btag_rule: str = "exact") -> Assignments:
    """All parton → object maps allowed by flavour, charge and (``strict``) b-tags; see module doc.

    Arguments:
        events: B reco events. final_state: outgoing PDG ids in the process order.
        btag_rule: ``"exact"`` (all injective jet maps) or ``"strict"`` (b ↔ tagged only).

    Returns:
        :class:`Assignments`; the number of maps of an event with k jets and n_j jet partons
        is k!/(k−n_j)! (``exact``), times the ways of pairing identical leptons.
    """
    if btag_rule not in ("exact", "strict"):
        msg = f"btag_rule must be 'exact' or 'strict', got {btag_rule!r}"
        raise ValueError(msg)
    pdg = torch.as_tensor(final_state)
    kinds = object_kind(pdg).tolist()
    per_event: list[list[list[int]]] = []
    obj, msk = events.objects, events.mask
    for b in range(len(events)):
        types, charges, tags = obj[b, :, 6], obj[b, :, 5], obj[b, :, 4]
        slots_of: dict[tuple[int, float], list[int]] = {}
        for s in msk[b].nonzero()[:, 0].tolist():
            t = int(types[s])
            if t in (_MUON, _ELECTRON):
                slots_of.setdefault((t, float(charges[s])), []).append(s)
        jets = [s for s in msk[b].nonzero()[:, 0].tolist() if int(types[s]) == _JET]
        # Leptons: flavour and charge must match, and no reco lepton may be left over.
        lep_choices: list[list[tuple[int, int]]] = []
        used_keys: dict[tuple[int, float], list[int]] = {}
        for i, (k, q) in enumerate(zip(kinds, pdg.tolist(), strict=True)):
            if k in (KIND_MUON, KIND_ELECTRON):
                used_keys.setdefault((_KIND_TO_TYPE[k], float(-math.copysign(1, q))), []).append(i)
        ok = set(used_keys) == set(slots_of) and all(
            len(slots_of[key]) == len(v) for key, v in used_keys.items())
        maps: list[list[int]] = []
        if ok:
            for key, partons in used_keys.items():
                lep_choices.append([tuple(zip(partons, perm, strict=True))
                                    for perm in itertools.permutations(slots_of[key])])
            jet_partons = [i for i, k in enumerate(kinds) if k == KIND_JET]
            for lep in itertools.product(*lep_choices) if lep_choices else [()]:
                for jp in itertools.permutations(jets, len(jet_partons)):
                    if btag_rule == "strict" and any(
                            (abs(int(pdg[i])) == 5) != (float(tags[s]) > 0.5)
                            for i, s in zip(jet_partons, jp, strict=True)):
                        continue
                    m = [-1] * len(kinds)
                    for pairs in lep:
                        for i, s in pairs:
                            m[i] = s
                    for i, s in zip(jet_partons, jp, strict=True):
                        m[i] = s
                    maps.append(m)
        per_event.append(maps)
    p_max = max(1, *(len(m) for m in per_event)) if per_event else 1
    n = len(kinds)
    index = torch.full((len(events), p_max, n), -1, dtype=torch.long)
    valid = torch.zeros(len(events), p_max, dtype=torch.bool)
    for b, maps in enumerate(per_event):
        if maps:
            index[b, : len(maps)] = torch.tensor(maps, dtype=torch.long)
            valid[b, : len(maps)] = True
    return Assignments(index, valid, valid.sum(-1))
