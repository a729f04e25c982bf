r"""What the parametric detector returns: object kinds, pt-sorted object blocks, detector output.

The smearing itself is in :mod:`unfoldmem.simulate.detector` (densities) and
:mod:`unfoldmem.simulate.detector_kernel` (sampling).
"""

from __future__ import annotations

from dataclasses import dataclass

import awkward as ak
import torch
from torch import Tensor

__all__ = [
    "KIND_ELECTRON",
    "KIND_INVISIBLE",
    "KIND_JET",
    "KIND_MUON",
    "KIND_NONE",
    "REASONS",
    "DetectorOutput",
    "ObjectBlock",
    "object_kind",
    "partons_to_tensors",
]

KIND_NONE, KIND_JET, KIND_MUON, KIND_ELECTRON, KIND_INVISIBLE = 0, 1, 2, 3, 4

#: Reason codes returned with ``log_density(..., with_reason=True)`` (0 means finite).
REASONS = {
    0: "ok",
    1: "reco values outside the acceptance (pt <= pt_min or |eta| >= eta_max)",
    2: "degenerate parton (E <= 0, pt = 0, |p| > E or E > 1e100 GeV): nothing to smear around",
    3: "parton type is not reconstructed as an object (neutrino, top, W, padding)",
    4: "non-finite input (NaN or inf in reco or parton values)",
    5: "zero probability (efficiency or b-tag probability is 0 for this object)",
}


def object_kind(pdg: Tensor) -> Tensor:
    """Object type of each parton from its PDG id: jet (q, g, τ, γ), muon, electron, invisible (ν).

    Tops, W, Z, H and padding (id 0) are :data:`KIND_NONE` (intermediate or absent).
    (...) int -> (...) int8 of KIND_* values.
    """
    a = pdg.abs()
    kind = torch.zeros(a.shape, dtype=torch.int8, device=a.device)
    kind[((a >= 1) & (a <= 5)) | (a == 21) | (a == 15) | (a == 22)] = KIND_JET
    kind[a == 13] = KIND_MUON
    kind[a == 11] = KIND_ELECTRON
    kind[(a == 12) | (a == 14) | (a == 16)] = KIND_INVISIBLE
    return kind


@dataclass
class ObjectBlock:
    """One object collection, padded to a common length and sorted by pt (descending).

    The length k is the most objects of this type any event of the call could have (jets: jet
    partons + ISR maximum), at least 1.

    Arguments:
        pt, eta, phi, mass: (n, k) GeV, -, rad, GeV (0 in padding).
        tag: (n, k) b-tag 0/1 for jets, charge ±1 for leptons.
        parton_index: (n, k) int64 index of the source parton in the input, -1 for ISR/padding.
        mask: (n, k) bool, True for real objects (the first ``count`` entries of each row).
    """

    pt: Tensor
    eta: Tensor
    phi: Tensor
    mass: Tensor
    tag: Tensor
    parton_index: Tensor
    mask: Tensor

    @property
    def count(self) -> Tensor:
        """(n,) number of objects per event."""
        return self.mask.sum(-1)

    def to_awkward(self, tag_name: str) -> ak.Array:
        """Jagged records {pt, eta, phi, mass, <tag_name>, parton_index} (numpy-backed)."""
        counts = self.count.numpy()
        m = self.mask
        cols = {
            "pt": self.pt[m], "eta": self.eta[m], "phi": self.phi[m], "mass": self.mass[m],
            tag_name: self.tag[m], "parton_index": self.parton_index[m],
        }
        return ak.unflatten(ak.zip({k: v.numpy() for k, v in cols.items()}), counts)


@dataclass
class DetectorOutput:
    """Reconstructed events from :meth:`ParametricDetector.simulate` (n events).

    Arguments:
        jets, muons, electrons: :class:`ObjectBlock` collections (pt-sorted).
        met_pt, met_phi: (n,) missing transverse momentum, GeV and rad.
        met_mean: (n, 2) expected (MET_x, MET_y) given partons and reco objects, GeV.
        met_sigma: (n,) Gaussian noise per MET component, GeV.
        n_isr: (n,) number of ISR jets added.
        passed: (n,) bool, at least one object was reconstructed.
    """

    jets: ObjectBlock
    muons: ObjectBlock
    electrons: ObjectBlock
    met_pt: Tensor
    met_phi: Tensor
    met_mean: Tensor
    met_sigma: Tensor
    n_isr: Tensor
    passed: Tensor

    def to_awkward(self) -> ak.Array:
        """Records with ``jets``, ``muons``, ``electrons``, ``met`` (CONTRACTS.md layout)."""
        return ak.zip(
            {
                "jets": self.jets.to_awkward("btag"),
                "muons": self.muons.to_awkward("charge"),
                "electrons": self.electrons.to_awkward("charge"),
                "met": ak.zip({"pt": self.met_pt.numpy(), "phi": self.met_phi.numpy()}),
            },
            depth_limit=1,
        )


def partons_to_tensors(partons: ak.Array) -> tuple[Tensor, Tensor]:
    """Parton records (``.partons.{E,px,py,pz,pdgId}``) -> momenta (n, P, 4) GeV, pdg (n, P).

    Events with fewer partons are padded with zero vectors and pdg 0 (:data:`KIND_NONE`).
    """
    from unfoldmem.io.partons import parton_arrays

    mom, pdg = parton_arrays(partons, pad=True)
    return torch.from_numpy(mom), torch.from_numpy(pdg)
