r"""Per-event likelihoods over a θ grid: the in-memory record and its ROOT file (``ll.root``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from unfoldmem.errors import (
    BranchTypeError,
    InputFileError,
    MissingBranchError,
    MissingTreeError,
)
from unfoldmem.io.atomic import atomic_path

__all__ = ["PerEventLikelihoods", "read_likelihoods", "write_likelihoods"]

THETA_TREE = "Theta"
EVENT_TREE = "Likelihood"
_THETA_PREFIX = "theta_"


@dataclass
class PerEventLikelihoods:
    r"""Per-event log-likelihoods :math:`\log P(x_i \mid \theta_k)` on a grid of K θ points.

    ``log_p`` is already normalised by the fiducial cross section σ_fid(θ_k), so summing
    ``weight * log_p`` over events gives the unbinned log-likelihood at each grid point.

    Arguments:
        theta_grid: parameter name → (K,) float64 values of the grid points (all the same K).
        log_p: (N, K) float64 per-event log P(x_i | θ_k).
        log_p_err: (N, K) float64 MC-integration standard error of ``log_p``.
        weight: (N,) float64 event weights.
        event_id: (N,) int64 event ids (join key with the event trees).
        flag: (N,) int32; 0 = ok, nonzero = event outside the support (excluded in sums).
        ess: (N, K) effective sample size of each integral, or ``None``.
        log_sigma_fid: (K,) log σ_fid(θ_k) (pb) or ``None``; bookkeeping only.
        log_sigma_fid_err: (K,) its MC error or ``None``.
        log_p_noise: (N, K) a noise replica of ``log_p`` (same MC noise, no signal; see
            :func:`unfoldmem.inference.smoothing.select_degree`) or ``None``; in memory only,
            not written to files.
    """

    theta_grid: dict[str, Tensor]
    log_p: Tensor
    log_p_err: Tensor
    weight: Tensor
    event_id: Tensor
    flag: Tensor
    ess: Tensor | None = None
    log_sigma_fid: Tensor | None = None
    log_sigma_fid_err: Tensor | None = field(default=None)
    log_p_noise: Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        if not self.theta_grid:
            msg = "theta_grid needs at least one parameter"
            raise ValueError(msg)
        self.theta_grid = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in self.theta_grid.items()}
        self.log_p = torch.as_tensor(self.log_p, dtype=torch.float64)
        self.log_p_err = torch.as_tensor(self.log_p_err, dtype=torch.float64)
        self.weight = torch.as_tensor(self.weight, dtype=torch.float64)
        self.event_id = torch.as_tensor(self.event_id, dtype=torch.int64)
        self.flag = torch.as_tensor(self.flag, dtype=torch.int32)
        for name in ("ess", "log_sigma_fid", "log_sigma_fid_err", "log_p_noise"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, torch.as_tensor(value, dtype=torch.float64))
        n, k = self.log_p.shape
        for name, grid in self.theta_grid.items():
            if grid.shape != (k,):
                msg = f"theta_grid['{name}'] has shape {tuple(grid.shape)}, expected ({k},)"
                raise ValueError(msg)
        for name, shape in (("log_p_err", (n, k)), ("weight", (n,)), ("event_id", (n,)),
                            ("flag", (n,)), ("ess", (n, k)), ("log_sigma_fid", (k,)),
                            ("log_sigma_fid_err", (k,)), ("log_p_noise", (n, k))):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                msg = f"{name} has shape {tuple(value.shape)}, expected {shape}"
                raise ValueError(msg)

    @property
    def n_events(self) -> int:
        """N, the number of events (flagged ones included)."""
        return int(self.log_p.shape[0])

    @property
    def n_points(self) -> int:
        """K, the number of θ grid points."""
        return int(self.log_p.shape[1])

    @property
    def names(self) -> list[str]:
        """The parameter names, in grid order."""
        return list(self.theta_grid)

    @property
    def n_flagged(self) -> int:
        """How many events have a nonzero flag (outside the support; excluded)."""
        return int((self.flag != 0).sum())

    def subset(self, index: Tensor) -> PerEventLikelihoods:
        """The events selected by ``index`` (a boolean mask or integer indices), same grid."""
        return replace(
            self,
            log_p=self.log_p[index],
            log_p_err=self.log_p_err[index],
            weight=self.weight[index],
            event_id=self.event_id[index],
            flag=self.flag[index],
            ess=None if self.ess is None else self.ess[index],
            log_p_noise=None if self.log_p_noise is None else self.log_p_noise[index],
        )

    def ok(self) -> PerEventLikelihoods:
        """Only the events with ``flag == 0`` (see :attr:`n_flagged` for how many went)."""
        return self.subset(self.flag == 0)

    def grid_matrix(self) -> Tensor:
        """(K, P) float64 grid points, columns in :attr:`names` order."""
        return torch.stack([self.theta_grid[n] for n in self.names], dim=-1)


def _open(path: Path):
    import uproot

    if not path.is_file():
        raise InputFileError(str(path), "file does not exist")
    try:
        return uproot.open(path)
    except Exception as exc:
        raise InputFileError(str(path), f"not a readable ROOT file ({exc})") from exc


def _tree(file, path: Path, name: str):
    trees = [k.split(";")[0] for k, c in file.classnames().items() if c == "TTree"]
    if name not in trees:
        raise MissingTreeError(str(path), name, trees)
    return file[name]


def _branches(tree, path: Path, name: str, wanted: list[str]) -> dict[str, np.ndarray]:
    keys = list(tree.keys())
    for b in wanted:
        if b not in keys:
            raise MissingBranchError(str(path), name, b, keys)
    try:
        return tree.arrays(wanted, library="np")
    except Exception as exc:
        raise InputFileError(str(path), f"tree '{name}': cannot read branches ({exc})") from exc


def read_likelihoods(path: str | Path) -> PerEventLikelihoods:
    """Read ``ll.root`` (trees ``Theta`` and ``Likelihood``) into :class:`PerEventLikelihoods`.

    Raises:
        InputFileError: missing or unreadable file, or no ``theta_*`` branch.
        MissingTreeError / MissingBranchError: naming the tree or branch and what exists.
        BranchTypeError: ``log_p`` & co. are not fixed-size [K] arrays matching the Theta tree.
    """
    path = Path(path)
    with _open(path) as file:
        ttree = _tree(file, path, THETA_TREE)
        names = [k for k in ttree.keys() if k.startswith(_THETA_PREFIX)]
        if not names:
            raise MissingBranchError(str(path), THETA_TREE, "theta_<name>", ttree.keys())
        theta = _branches(ttree, path, THETA_TREE, [*names, "log_sigma_fid", "log_sigma_fid_err"])
        k = len(theta[names[0]])
        etree = _tree(file, path, EVENT_TREE)
        ev = _branches(etree, path, EVENT_TREE,
                       ["event_id", "weight", "log_p", "log_p_err", "ess", "flag"])
    for b in ("log_p", "log_p_err", "ess"):
        arr = ev[b]
        if arr.dtype == object or arr.ndim != 2 or arr.shape[1] != k:
            found = f"{arr.dtype} with shape {arr.shape}"
            raise BranchTypeError(str(path), b, f"fixed-size float64[{k}] (K from tree Theta)", found)
    if k == 0:
        raise InputFileError(str(path), f"tree '{THETA_TREE}' has no entries (an empty θ grid)")
    return PerEventLikelihoods(
        theta_grid={n[len(_THETA_PREFIX):]: torch.from_numpy(theta[n].astype(np.float64)) for n in names},
        log_p=torch.from_numpy(ev["log_p"].astype(np.float64)),
        log_p_err=torch.from_numpy(ev["log_p_err"].astype(np.float64)),
        weight=torch.from_numpy(ev["weight"].astype(np.float64)),
        event_id=torch.from_numpy(ev["event_id"].astype(np.int64)),
        flag=torch.from_numpy(ev["flag"].astype(np.int32)),
        ess=torch.from_numpy(ev["ess"].astype(np.float64)),
        log_sigma_fid=torch.from_numpy(theta["log_sigma_fid"].astype(np.float64)),
        log_sigma_fid_err=torch.from_numpy(theta["log_sigma_fid_err"].astype(np.float64)),
    )


def write_likelihoods(
    path: str | Path, lik: PerEventLikelihoods, overwrite: bool = False
) -> Path:
    """Write ``lik`` to ``path`` as trees ``Theta`` and ``Likelihood``, atomically.

    Missing optional fields are written as zeros (``log_sigma_fid``) or N_eff = 0 (``ess``).

    Raises:
        OutputExistsError / OutputPathError: from :func:`unfoldmem.io.atomic.atomic_path`.
    """
    import uproot

    n, k = lik.n_events, lik.n_points
    zeros_k = np.zeros(k)
    theta = {f"{_THETA_PREFIX}{name}": v.numpy() for name, v in lik.theta_grid.items()}
    theta["log_sigma_fid"] = zeros_k if lik.log_sigma_fid is None else lik.log_sigma_fid.numpy()
    theta["log_sigma_fid_err"] = (
        zeros_k if lik.log_sigma_fid_err is None else lik.log_sigma_fid_err.numpy()
    )
    events = {
        "event_id": lik.event_id.numpy(),
        "weight": lik.weight.numpy(),
        "log_p": lik.log_p.numpy(),
        "log_p_err": lik.log_p_err.numpy(),
        "ess": np.zeros((n, k)) if lik.ess is None else lik.ess.numpy(),
        "flag": lik.flag.numpy(),
    }
    path = Path(path)
    with atomic_path(path, overwrite) as tmp, uproot.recreate(tmp) as file:
        # mktree, not file[name] = dict: recent uproot writes a bare dict as an RNTuple.
        file.mktree(THETA_TREE, {b: np.float64 for b in theta})
        file[THETA_TREE].extend(theta)
        types = {b: (np.float64, (k,)) if v.ndim == 2 else v.dtype for b, v in events.items()}
        file.mktree(EVENT_TREE, types)
        if n:
            file[EVENT_TREE].extend(events)
    return path
