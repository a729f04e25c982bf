"""Per-event likelihood file: round trip and the errors a user sees for broken files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import uproot

from unfoldmem.errors import (
    BranchTypeError,
    InputFileError,
    MissingBranchError,
    MissingTreeError,
    OutputExistsError,
)
from unfoldmem.inference.calibration import LinearGaussianToy, toy_likelihoods
from unfoldmem.inference.likelihood_file import (
    PerEventLikelihoods,
    read_likelihoods,
    write_likelihoods,
)


@pytest.fixture
def lik() -> PerEventLikelihoods:
    toy = LinearGaussianToy.sample(1.0, 2.0, 0.5, 50, seed=3)
    out = toy_likelihoods(toy, {"a": np.linspace(0.5, 1.5, 3), "b": np.linspace(1.5, 2.5, 4)},
                          mc_noise=0.01, seed=1)
    out.flag[[3, 7]] = torch.tensor([1, 2], dtype=torch.int32)
    out.weight[:] = torch.linspace(0.5, 1.5, 50, dtype=torch.float64)
    out.ess = torch.full((50, 12), 123.0, dtype=torch.float64)
    out.log_sigma_fid = torch.linspace(0, 1, 12, dtype=torch.float64)
    return out


def test_round_trip_exact(lik: PerEventLikelihoods, tmp_path) -> None:
    """write → read gives back every field bit for bit (reference: the in-memory record)."""
    path = write_likelihoods(tmp_path / "ll.root", lik)
    back = read_likelihoods(path)
    assert back.names == ["a", "b"]
    for name in lik.names:
        assert torch.equal(back.theta_grid[name], lik.theta_grid[name])
    for field in ("log_p", "log_p_err", "weight", "event_id", "flag", "ess", "log_sigma_fid"):
        assert torch.equal(getattr(back, field), getattr(lik, field)), field
    assert back.n_flagged == 2 and back.ok().n_events == 48
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ll.root"]  # no temporary left


def test_refuses_to_overwrite(lik: PerEventLikelihoods, tmp_path) -> None:
    """An existing output is kept unless overwrite=True."""
    path = write_likelihoods(tmp_path / "ll.root", lik)
    with pytest.raises(OutputExistsError, match=r"ll\.root"):
        write_likelihoods(path, lik)
    write_likelihoods(path, lik.subset(torch.arange(5)), overwrite=True)
    assert read_likelihoods(path).n_events == 5


def _write_raw(path, theta: dict, events: dict) -> None:
    with uproot.recreate(path) as f:
        if theta:
            f.mktree("Theta", {k: v.dtype for k, v in theta.items()})
            f["Theta"].extend(theta)
        if events:
            f.mktree("Likelihood", {k: (v.dtype, v.shape[1:]) if v.ndim == 2 else v.dtype
                                    for k, v in events.items()})
            f["Likelihood"].extend(events)


def _good(k: int = 3, n: int = 4) -> tuple[dict, dict]:
    theta = {"theta_m_t": np.linspace(170, 176, k), "log_sigma_fid": np.zeros(k),
             "log_sigma_fid_err": np.zeros(k)}
    events = {"event_id": np.arange(n, dtype=np.int64), "weight": np.ones(n),
              "log_p": np.zeros((n, k)), "log_p_err": np.zeros((n, k)), "ess": np.ones((n, k)),
              "flag": np.zeros(n, dtype=np.int32)}
    return theta, events


def test_missing_tree_names_what_exists(tmp_path) -> None:
    """No Likelihood tree: the error names the file, the tree and the trees present."""
    theta, _ = _good()
    _write_raw(tmp_path / "x.root", theta, {})
    with pytest.raises(MissingTreeError, match=r"x\.root.*'Likelihood'.*Theta"):
        read_likelihoods(tmp_path / "x.root")


def test_missing_branch_names_closest(tmp_path) -> None:
    """A missing log_p_err branch is named, with the closest branches offered."""
    theta, events = _good()
    events["log_p_er"] = events.pop("log_p_err")
    _write_raw(tmp_path / "x.root", theta, events)
    with pytest.raises(MissingBranchError, match=r"no branch 'log_p_err'.*log_p_er"):
        read_likelihoods(tmp_path / "x.root")


def test_no_theta_branch(tmp_path) -> None:
    """A Theta tree without any theta_<name> branch is refused."""
    theta, events = _good()
    theta["m_t"] = theta.pop("theta_m_t")
    _write_raw(tmp_path / "x.root", theta, events)
    with pytest.raises(MissingBranchError, match="theta_<name>"):
        read_likelihoods(tmp_path / "x.root")


def test_wrong_array_size(tmp_path) -> None:
    """log_p with 4 entries per event against a 3-point grid is a BranchTypeError."""
    theta, events = _good()
    for b in ("log_p", "log_p_err", "ess"):
        events[b] = np.zeros((4, 4))
    _write_raw(tmp_path / "x.root", theta, events)
    with pytest.raises(BranchTypeError, match=r"log_p.*float64\[3\]"):
        read_likelihoods(tmp_path / "x.root")


def test_not_a_root_file(tmp_path) -> None:
    """Missing and non-ROOT files are InputFileErrors naming the path."""
    with pytest.raises(InputFileError, match="does not exist"):
        read_likelihoods(tmp_path / "nope.root")
    (tmp_path / "text.root").write_text("hello")
    with pytest.raises(InputFileError, match="not a readable ROOT file"):
        read_likelihoods(tmp_path / "text.root")


def test_shape_checks() -> None:
    """The record refuses inconsistent shapes (log_p_err not (N, K))."""
    with pytest.raises(ValueError, match="log_p_err"):
        PerEventLikelihoods({"m": torch.zeros(3)}, torch.zeros(2, 3), torch.zeros(2, 2),
                            torch.ones(2), torch.arange(2), torch.zeros(2))
