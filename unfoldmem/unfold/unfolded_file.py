r"""``unfolded.root``: posterior samples as a ROOT tree, one entry per (event, sample)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import torch
import uproot

from unfoldmem.io.atomic import atomic_path
from unfoldmem.unfold.posterior import UnfoldedSamples

__all__ = ["UNFOLDED_TREE", "write_unfolded", "read_unfolded"]

#: Tree of ``unfolded.root``: one entry per (event, sample).
UNFOLDED_TREE = "Unfolded"


def _rows(s: UnfoldedSamples) -> dict[str, Any]:
    n_s, n, k, _ = s.momenta.shape
    # event-major order: all samples of an event are adjacent
    mom = s.momenta.permute(1, 0, 2, 3).reshape(n * n_s, k, 4).numpy()
    pdg = s.pdg[:, None, :].expand(n, n_s, k).reshape(n * n_s, k).numpy().astype(np.int32)
    counts = np.full(n * n_s, k)
    parton = {
        c: ak.unflatten(mom[..., i].reshape(-1), counts) for i, c in enumerate("E px py pz".split())
    }
    parton["pdgId"] = ak.unflatten(pdg.reshape(-1), counts)
    return {
        "event_id": np.repeat(s.event_id, n_s),
        "sample": np.tile(np.arange(n_s, dtype=np.int32), n),
        "weight": np.repeat(s.weight / n_s, n_s),
        "Parton": ak.zip(parton),
    }


def write_unfolded(
    path: str | Path,
    chunks: Iterator[UnfoldedSamples] | list[UnfoldedSamples],
    overwrite: bool = False,
) -> int:
    """Write posterior samples to ROOT tree :data:`UNFOLDED_TREE`, atomically.

    Branches: ``event_id`` (int64), ``sample`` (int32), ``weight`` (float64, :math:`w_e/N`, so a
    weighted histogram of the tree is the unfolded distribution), ``nParton``, ``Parton_E``,
    ``Parton_px``, ``Parton_py``, ``Parton_pz`` (float64 GeV), ``Parton_pdgId`` (int32).

    Returns:
        Number of entries written.
    """
    written = 0
    with atomic_path(path, overwrite) as tmp, uproot.recreate(tmp) as f:
        tree = None
        for s in chunks:
            rows = _rows(s)
            if tree is None:
                types = {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in rows.items()}
                tree = f.mktree(UNFOLDED_TREE, types)
            tree.extend(rows)
            written += len(rows["event_id"])
        if tree is None:
            msg = "nothing to write: no unfolded events"
            raise ValueError(msg)
    return written


def read_unfolded(path: str | Path) -> UnfoldedSamples:
    """Read ``unfolded.root`` back into :class:`UnfoldedSamples` (inverse of :func:`write_unfolded`)."""
    from unfoldmem.io import open_tree

    a = open_tree(path, UNFOLDED_TREE).arrays(library="ak")
    n_s = int(ak.max(a["sample"])) + 1
    n = len(a) // n_s
    k = int(ak.max(a["nParton"]))
    mom = np.stack([ak.to_numpy(a[f"Parton_{c}"]) for c in ("E", "px", "py", "pz")], -1)
    mom = torch.from_numpy(mom.reshape(n, n_s, k, 4)).permute(1, 0, 2, 3).contiguous()
    pdg = torch.from_numpy(ak.to_numpy(a["Parton_pdgId"]).reshape(n, n_s, k)[:, 0].astype(np.int64))
    eid = ak.to_numpy(a["event_id"]).reshape(n, n_s)[:, 0]
    w = ak.to_numpy(a["weight"]).reshape(n, n_s).sum(1)
    if not math.isfinite(float(w.sum())):
        msg = f"{path}: non-finite weights in {UNFOLDED_TREE}"
        raise ValueError(msg)
    return UnfoldedSamples(eid, w, mom, pdg)
