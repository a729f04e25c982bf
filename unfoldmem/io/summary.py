r"""What is in a ROOT file: trees, branches, entries, jet multiplicities and summary statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

from unfoldmem.cards.branchmap import BranchMapCard
from unfoldmem.errors import InputFileError
from unfoldmem.io.events import _why, iterate_detector

__all__ = ["file_summary", "detector_summary"]


def file_summary(path: str | Path) -> dict[str, Any]:
    """Trees of a ROOT file with their entries and branches (name, type)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(str(path), "file does not exist")
    try:
        with uproot.open(path) as f:
            classes = f.classnames(cycle=False)
            trees = {}
            for name, cls in sorted(classes.items()):
                if cls not in ("TTree", "TNtuple"):
                    continue
                t = f[name]
                trees[name] = {
                    "entries": int(t.num_entries),
                    "branches": {b.name: b.typename for b in t.branches},
                }
            others = {k: v for k, v in classes.items() if v not in ("TTree", "TNtuple")}
    except Exception as exc:
        raise InputFileError(str(path), f"not a readable ROOT file ({_why(exc)})") from exc
    return {"file": str(path), "trees": trees, "other_objects": others}


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"n": 0}
    return {
        "n": int(values.size),
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
    }


def detector_summary(
    path: str | Path, tree: str | None = None, branchmap: BranchMapCard | None = None
) -> dict[str, Any]:
    """Jet-multiplicity table and per-object statistics of a detector tree, read in chunks."""
    mult: dict[int, int] = {}
    acc: dict[str, list[np.ndarray]] = {}
    n_events = 0
    sum_w = 0.0
    for chunk in iterate_detector(path, tree, branchmap, on_nan="drop"):
        n_events += len(chunk)
        sum_w += float(ak.sum(chunk.weight))
        nj, counts = np.unique(np.asarray(ak.num(chunk.jets, axis=1)), return_counts=True)
        for k, c in zip(nj.tolist(), counts.tolist(), strict=True):
            mult[k] = mult.get(k, 0) + c
        for coll in ("jets", "muons", "electrons"):
            for field in ("pt", "eta"):
                acc.setdefault(f"{coll}.{field}", []).append(np.asarray(ak.flatten(chunk[coll][field])))
        acc.setdefault("met.pt", []).append(np.asarray(chunk.met.pt))
    if n_events == 0:
        # every event was dropped (all had non-finite values)
        raise InputFileError(str(path), "no events left after dropping non-finite values")
    stats = {k: _stats(np.concatenate(v)) for k, v in acc.items()}
    return {
        "events": n_events,
        "sum_weights": sum_w,
        "jet_multiplicity": {str(k): v for k, v in sorted(mult.items())},
        "statistics": stats,
    }

