r"""Detector and parton trees ↔ awkward records, read in chunks and written atomically.

The on-disk layout (NanoAOD-style) is described in ``docs/data-model.md``: a detector tree
``Events`` (``nJet``, ``Jet_pt``, ..., ``MET_pt``, ``event_id``, ``weight``) and a parton tree
``Partons`` (``Parton_E``, ..., ``pass_reco``, ``x1``, ``x2``, ``theta_<name>``), joined by
``event_id``. Other layouts are read through a :class:`~unfoldmem.cards.BranchMapCard`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import awkward as ak
import numpy as np
import uproot

from unfoldmem.cards.branchmap import BranchMapCard, CollectionMap
from unfoldmem.errors import (
    BranchTypeError,
    InputFileError,
    MissingBranchError,
    MissingTreeError,
    NonFiniteValueError,
)
from unfoldmem.io.atomic import atomic_path

__all__ = [
    "DETECTOR_TREE",
    "PARTON_TREE",
    "NANOAOD",
    "EventWriter",
    "has_tree",
    "iterate_detector",
    "open_tree",
    "read_detector",
    "read_metadata",
    "read_partons",
    "write_events",
]

log = logging.getLogger("unfoldmem")

DETECTOR_TREE = "Events"
PARTON_TREE = "Partons"
OnNan = Literal["error", "drop"]

NANOAOD = BranchMapCard(
    tree=DETECTOR_TREE,
    jets=CollectionMap(
        fields={"pt": "Jet_pt", "eta": "Jet_eta", "phi": "Jet_phi", "mass": "Jet_mass", "btag": "Jet_btag"}
    ),
    muons=CollectionMap(
        fields={"pt": "Muon_pt", "eta": "Muon_eta", "phi": "Muon_phi", "mass": "Muon_mass", "charge": "Muon_charge"}
    ),
    electrons=CollectionMap(
        fields={
            "pt": "Electron_pt",
            "eta": "Electron_eta",
            "phi": "Electron_phi",
            "mass": "Electron_mass",
            "charge": "Electron_charge",
        }
    ),
    met={"pt": "MET_pt", "phi": "MET_phi"},
    event_id="event_id",
    weight="weight",
)
"""The native layout written by :class:`EventWriter`."""

_COLLECTION_FIELDS = {
    "jets": ("pt", "eta", "phi", "mass", "btag"),
    "muons": ("pt", "eta", "phi", "mass", "charge"),
    "electrons": ("pt", "eta", "phi", "mass", "charge"),
}
_PREFIX = {"jets": "Jet", "muons": "Muon", "electrons": "Electron"}


def open_tree(path: str | Path, tree: str) -> Any:
    """Open ``tree`` in the ROOT file ``path``.

    Raises:
        InputFileError: the file is missing, not a ROOT file, or unreadable (truncated).
        MissingTreeError: no such tree; the message lists the trees in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(str(path), "file does not exist")
    try:
        file = uproot.open(path)
        classes = file.classnames(cycle=False)
    except Exception as exc:
        raise InputFileError(str(path), f"not a readable ROOT file ({_why(exc)})") from exc
    trees = sorted(k for k, c in classes.items() if c in ("TTree", "TNtuple"))
    if tree not in classes or classes[tree] not in ("TTree", "TNtuple"):
        raise MissingTreeError(str(path), tree, trees)
    try:
        return file[tree]
    except Exception as exc:
        raise InputFileError(str(path), f"tree '{tree}' is unreadable ({_why(exc)})") from exc


def has_tree(path: str | Path, tree: str) -> bool:
    """Whether the ROOT file at ``path`` holds a tree named ``tree`` (file errors still raise)."""
    try:
        open_tree(path, tree)
    except MissingTreeError:
        return False
    return True


def _why(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:200]


def _plan(tree: Any, path: Path, bmap: BranchMapCard) -> dict[str, tuple[str, bool]]:
    """Branches to read: {branch: (role, jagged)}; checks existence, dtype and jaggedness."""
    names = set(tree.keys())
    wanted: dict[str, bool] = {}
    for coll in _COLLECTION_FIELDS:
        cmap: CollectionMap | None = getattr(bmap, coll)
        if cmap is None:
            continue
        if cmap.fields is not None:
            if bmap is NANOAOD and not any(n.startswith(_PREFIX[coll] + "_") for n in names):
                continue  # a native file without this collection at all
            for branch in cmap.fields.values():
                wanted[branch] = True
        else:
            for obj in cmap.numbered or []:
                for branch in obj.values():
                    wanted[branch] = False
    for branch in (bmap.met or {}).values():
        wanted[branch] = False
    for branch in (bmap.event_id, bmap.weight, bmap.selection):
        if branch is not None and (branch in names or bmap is not NANOAOD):
            wanted[branch] = False
    for branch, jagged in wanted.items():
        if branch not in names:
            raise MissingBranchError(str(path), tree.name, branch, names)
        _check_branch(tree[branch], path, jagged)
    return {b: (b, j) for b, j in wanted.items()}


def _check_branch(branch: Any, path: Path, jagged: bool) -> None:
    interp = branch.interpretation
    is_jagged = isinstance(interp, uproot.AsJagged)
    inner = interp.content if is_jagged else interp
    dtype = getattr(inner, "to_dtype", None)
    if dtype is None or np.dtype(dtype).kind not in "fiub":
        raise BranchTypeError(str(path), branch.name, "a numeric branch", f"{branch.typename}")
    if jagged and not is_jagged:
        raise BranchTypeError(str(path), branch.name, "a jagged (per-object) branch", f"flat {branch.typename}")
    if not jagged and is_jagged:
        raise BranchTypeError(str(path), branch.name, "a flat (per-event) branch", f"jagged {branch.typename}")


def _finite_mask(arrays: ak.Array, branches: list[str], path: Path, on_nan: OnNan) -> ak.Array | None:
    keep = None
    for b in branches:
        arr = arrays[b]
        if arr.ndim > 1:
            bad_per_event = ak.sum(~np.isfinite(arr), axis=1)
        else:
            bad_per_event = ~np.isfinite(arr)
        n_bad = int(ak.sum(bad_per_event))
        if n_bad == 0:
            continue
        if on_nan == "error":
            raise NonFiniteValueError(str(path), b, n_bad)
        log.warning("%s: branch '%s' has %d non-finite value(s); dropping those events", path, b, n_bad)
        good = bad_per_event == 0
        keep = good if keep is None else keep & good
    return keep


def _collection(arrays: ak.Array, cmap: CollectionMap, fields: tuple[str, ...]) -> ak.Array:
    if cmap.fields is not None:
        raw = {k: arrays[v] for k, v in cmap.fields.items()}
    else:
        objs = cmap.numbered or []
        raw = {
            k: ak.from_regular(
                ak.concatenate([ak.singletons(arrays[o[k]]) for o in objs], axis=1)
            )
            for k in objs[0]
        }
    counts = ak.num(next(iter(raw.values())), axis=1)
    out: dict[str, ak.Array] = {}
    if "pt" not in raw:
        # Cartesian input: the conversion is vector's, so no kinematics formula lives in io/.
        import vector

        v = vector.zip({k: ak.values_astype(raw[k], np.float64) for k in ("px", "py", "pz", "E")})
        raw.update(pt=v.pt, eta=v.eta, phi=v.phi, mass=v.mass)
    for f in fields:
        if f in raw:
            out[f] = ak.values_astype(raw[f], np.float64)
        elif f in cmap.constant:
            out[f] = ak.values_astype(ak.broadcast_arrays(cmap.constant[f], raw["pt"])[0], np.float64)
        else:
            out[f] = ak.unflatten(np.zeros(int(ak.sum(counts))), counts)
    return ak.zip(out)


def _records(arrays: ak.Array, bmap: BranchMapCard, entry0: int) -> ak.Array:
    n = len(arrays)
    names = set(arrays.fields)
    out: dict[str, Any] = {}
    if bmap.event_id is not None and bmap.event_id in names:
        out["event_id"] = ak.values_astype(arrays[bmap.event_id], np.int64)
    else:
        out["event_id"] = ak.Array(np.arange(entry0, entry0 + n, dtype=np.int64))
    if bmap.weight is not None and bmap.weight in names:
        out["weight"] = ak.values_astype(arrays[bmap.weight], np.float64)
    else:
        out["weight"] = ak.Array(np.ones(n))
    empty = ak.Array(np.zeros(n, dtype=np.int64))
    for coll, fields in _COLLECTION_FIELDS.items():
        cmap = getattr(bmap, coll)
        usable = cmap is not None and (
            cmap.numbered is not None or all(b in names for b in (cmap.fields or {}).values())
        )
        if usable:
            out[coll] = _collection(arrays, cmap, fields)
        else:
            out[coll] = ak.zip(
                {f: ak.unflatten(np.zeros(0), empty) for f in fields}
            )
    met = bmap.met or {}
    if "pt" in met:
        out["met"] = ak.zip(
            {"pt": ak.values_astype(arrays[met["pt"]], np.float64), "phi": ak.values_astype(arrays[met["phi"]], np.float64)}
        )
    elif "px" in met:
        px = np.asarray(arrays[met["px"]], dtype=np.float64)
        py = np.asarray(arrays[met["py"]], dtype=np.float64)
        out["met"] = ak.zip({"pt": np.hypot(px, py), "phi": np.arctan2(py, px)})
    else:
        out["met"] = ak.zip({"pt": np.zeros(n), "phi": np.zeros(n)})
    return ak.zip(out, depth_limit=1)


def iterate_detector(
    path: str | Path,
    tree: str | None = None,
    branchmap: BranchMapCard | None = None,
    on_nan: OnNan = "error",
    step_size: int | str = "100 MB",
) -> Iterator[ak.Array]:
    """Yield detector-level records chunk by chunk, so memory stays flat as files grow.

    Arguments:
        path: ROOT file.
        tree: tree name (default: the branch map's, ``Events`` for the native layout).
        branchmap: how to read a foreign layout; ``None`` reads the native one.
        on_nan: ``error`` raises on any NaN/inf naming the branch; ``drop`` drops those events.
        step_size: entries per chunk, or a memory size such as ``"100 MB"``.

    Yields:
        awkward records with ``event_id``, ``weight``, ``jets``, ``muons``, ``electrons``, ``met``
        (momenta GeV, angles rad).
    """
    path = Path(path)
    bmap = branchmap or NANOAOD
    t = open_tree(path, tree or bmap.tree)
    if t.num_entries == 0:
        raise InputFileError(str(path), f"tree '{t.name}' has no entries")
    plan = _plan(t, path, bmap)
    branches = list(plan)
    entry0 = 0
    try:
        chunks = t.iterate(branches, step_size=step_size, library="ak")
        for arrays in chunks:
            n_chunk = len(arrays)
            records = _records(arrays, bmap, entry0)
            keep = _finite_mask(arrays, [b for b in branches if b != bmap.selection], path, on_nan)
            if bmap.selection is not None:
                sel = ak.values_astype(arrays[bmap.selection], bool)
                keep = sel if keep is None else keep & sel
            entry0 += n_chunk
            yield records if keep is None else records[keep]
    except (InputFileError, NonFiniteValueError):
        raise
    except Exception as exc:
        raise InputFileError(str(path), f"cannot read tree '{t.name}': file truncated or corrupt ({_why(exc)})") from exc


def read_detector(
    path: str | Path,
    tree: str | None = None,
    branchmap: BranchMapCard | None = None,
    on_nan: OnNan = "error",
) -> ak.Array:
    """Read all detector-level records (see :func:`iterate_detector`)."""
    chunks = list(iterate_detector(path, tree, branchmap, on_nan, step_size="200 MB"))
    return chunks[0] if len(chunks) == 1 else ak.concatenate(chunks)


_PARTON_FLAT = {"event_id": np.int64, "weight": np.float64, "pass_reco": bool, "x1": np.float64,
                "x2": np.float64, "id1": np.int32, "id2": np.int32}
_PARTON_JAGGED = {"E": np.float64, "px": np.float64, "py": np.float64, "pz": np.float64, "pdgId": np.int32}


def read_partons(path: str | Path, tree: str = PARTON_TREE) -> ak.Array:
    """Read the parton tree: ``event_id``, ``weight``, ``pass_reco``, ``x1``, ``x2``, ``id1``,
    ``id2``, ``partons.{E,px,py,pz,pdgId}`` (GeV) and ``theta.{name}`` (GeV)."""
    path = Path(path)
    t = open_tree(path, tree)
    names = set(t.keys())
    needed = {**{k: False for k in _PARTON_FLAT}, **{f"Parton_{k}": True for k in _PARTON_JAGGED}}
    for b, jagged in needed.items():
        if b not in names:
            raise MissingBranchError(str(path), tree, b, names)
        _check_branch(t[b], path, jagged)
    theta_names = sorted(n for n in names if n.startswith("theta_"))
    try:
        a = t.arrays([*needed, *theta_names], library="ak")
    except Exception as exc:
        raise InputFileError(str(path), f"cannot read tree '{tree}': file truncated or corrupt ({_why(exc)})") from exc
    out: dict[str, Any] = {k: ak.values_astype(a[k], dt) for k, dt in _PARTON_FLAT.items()}
    out["partons"] = ak.zip({k: ak.values_astype(a[f"Parton_{k}"], dt) for k, dt in _PARTON_JAGGED.items()})
    if theta_names:
        out["theta"] = ak.zip({n[len("theta_"):]: ak.values_astype(a[n], np.float64) for n in theta_names})
    return ak.zip(out, depth_limit=1)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata a writer stored (process, θ, seed, versions); ``{}`` if none."""
    path = Path(path)
    try:
        with uproot.open(path) as f:
            if "metadata" not in f.keys(cycle=False):
                return {}
            return json.loads(str(f["metadata"]))
    except (OSError, ValueError) as exc:
        raise InputFileError(str(path), f"unreadable metadata ({_why(exc)})") from exc


def _detector_branches(events: ak.Array) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event_id": np.asarray(events.event_id, dtype=np.int64),
        "weight": np.asarray(events.weight, dtype=np.float64),
    }
    for coll, fields in _COLLECTION_FIELDS.items():
        c = events[coll]
        out[_PREFIX[coll]] = ak.zip({f: ak.values_astype(c[f], np.float64) for f in fields})
    out["MET_pt"] = np.asarray(events.met.pt, dtype=np.float64)
    out["MET_phi"] = np.asarray(events.met.phi, dtype=np.float64)
    return out


def _parton_branches(partons: ak.Array) -> dict[str, Any]:
    out: dict[str, Any] = {k: np.asarray(partons[k], dtype=dt) for k, dt in _PARTON_FLAT.items()}
    p = partons.partons
    out["Parton"] = ak.zip({k: ak.values_astype(p[k], dt) for k, dt in _PARTON_JAGGED.items()})
    if "theta" in partons.fields:
        for name in partons.theta.fields:
            out[f"theta_{name}"] = np.asarray(partons.theta[name], dtype=np.float64)
    return out


class EventWriter:
    """Stream detector and parton records into one ROOT file, atomically.

    The file appears at ``path`` only when the ``with`` block ends without error; until then
    it is a hidden temporary beside it, removed on failure.

    Example:
        >>> with EventWriter("sim.root", overwrite=True) as w:  # doctest: +SKIP
        ...     for det, par in chunks:
        ...         w.write(detector=det, partons=par)
    """

    def __init__(self, path: str | Path, overwrite: bool = False, metadata: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.metadata = metadata or {}
        self.n_detector = 0
        self.n_partons = 0

    def __enter__(self) -> EventWriter:
        self._ctx = atomic_path(self.path, self.overwrite)
        tmp = self._ctx.__enter__()
        self._file = uproot.recreate(tmp)
        self._trees: dict[str, Any] = {}
        return self

    def write(self, detector: ak.Array | None = None, partons: ak.Array | None = None) -> None:
        """Append a chunk of detector and/or parton records (empty chunks are skipped)."""
        for name, arr, conv in (
            (DETECTOR_TREE, detector, _detector_branches),
            (PARTON_TREE, partons, _parton_branches),
        ):
            if arr is None or len(arr) == 0:
                continue
            data = conv(arr)
            if name not in self._trees:
                # mktree, not item assignment: uproot >= 5.6 writes RNTuples for `file[name] = ...`
                types = {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in data.items()}
                self._trees[name] = self._file.mktree(name, types)
            self._trees[name].extend(data)
            if name == DETECTOR_TREE:
                self.n_detector += len(arr)
            else:
                self.n_partons += len(arr)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                meta = {**self.metadata, "n_detector": self.n_detector, "n_partons": self.n_partons}
                self._file["metadata"] = json.dumps(meta)
        finally:
            self._file.close()
            self._ctx.__exit__(exc_type, exc, tb)


def write_events(
    path: str | Path,
    detector: ak.Array | None = None,
    partons: ak.Array | None = None,
    overwrite: bool = False,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write detector and parton records to ``path`` in one go (atomically); returns ``path``."""
    with EventWriter(path, overwrite=overwrite, metadata=metadata) as w:
        w.write(detector=detector, partons=partons)
    return Path(path)
