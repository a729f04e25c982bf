r"""Parton records as dense arrays: (E, px, py, pz) momenta and PDG ids per parton slot.

Every layer that needs the partons of :func:`~unfoldmem.io.read_partons` records as numbers
(the detector simulation, the encodings, the unfolding reports, the MEM normalisation) gets
them here, so that the slot order and the padding rule are the same everywhere.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import numpy as np

__all__ = ["parton_arrays"]

_MOMENTUM = ("E", "px", "py", "pz")


def parton_arrays(partons: Any, pad: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Momenta and PDG ids of parton records (``partons.partons.{E,px,py,pz,pdgId}``).

    Arguments:
        partons: awkward records in the io layout.
        pad: pad events with fewer partons than the most with zero four-vectors and PDG id 0;
            without it every event must have the same number of partons.

    Returns:
        (n, k, 4) float64 momenta (E, px, py, pz) GeV and (n, k) int64 PDG ids (0 for a
        padded slot, and everywhere for records without ``pdgId``).

    Raises:
        ValueError: ``pad`` is false and the events have different numbers of partons.
    """
    p = partons.partons
    counts = np.asarray(ak.num(p, axis=1))
    k = int(counts.max(initial=0))
    if not pad and counts.size and (counts != k).any():
        msg = (f"parton records have varying multiplicities {np.unique(counts).tolist()}; "
               "one process per file")
        raise ValueError(msg)

    def dense(field: str) -> np.ndarray:
        col = p[field]
        if pad:
            col = ak.fill_none(ak.pad_none(col, k, axis=1, clip=True), 0)
        return ak.to_numpy(ak.to_regular(col, axis=1)).reshape(len(counts), k)

    mom = np.stack([dense(c).astype(np.float64) for c in _MOMENTUM], -1)
    if "pdgId" not in ak.fields(p):
        return mom, np.zeros(mom.shape[:2], dtype=np.int64)
    return mom, dense("pdgId").astype(np.int64)
