r"""Efficiency and acceptance corrections from (weighted) simulation: reco → fiducial or full phase space.

The cINN is trained on, and applied to, events that pass the reco selection, so its unfolded
histogram :math:`\hat N^{\text{pass}}_i` estimates the parton distribution of *passing* events.
With the parton tree of the simulation (every generated event, ``pass_reco`` flag, weights
:math:`w_e`), the bin-by-bin efficiency in parton bin :math:`i` is

.. math::
    \varepsilon_i = \frac{\sum_{e \in i,\ \text{pass}} w_e}{\sum_{e \in i} w_e}
    \quad\text{(full)},\qquad
    \varepsilon^{\text{fid}}_i = \frac{\sum_{e \in i,\ \text{pass},\ \text{fid}} w_e}
    {\sum_{e \in i,\ \text{fid}} w_e}\quad\text{(fiducial)},

and the corrected histogram is :math:`\hat N_i = \hat N^{\text{pass}}_i / \varepsilon_i`. For the
fiducial phase space the unfolded *samples* outside the fiducial region are dropped first
(event by event, per sample), so passing events that migrate in from outside the fiducial
region are removed without a binned purity factor. The statistical error of
:math:`\varepsilon_i` from the finite simulation (weighted binomial)

.. math:: \sigma_{\varepsilon_i}^2 = \frac{(1-\varepsilon_i)^2 \sum_{\text{pass}} w_e^2
    + \varepsilon_i^2 \sum_{\text{fail}} w_e^2}{(\sum_{e\in i} w_e)^2}

enters the result as :math:`\sigma_{\text{eff},i} = \hat N_i\,\sigma_{\varepsilon_i}/\varepsilon_i`.
The correction assumes the efficiency within a bin does not depend on how the simulation's
parton distribution differs from the data's inside that bin (use fine bins, or the
reweighted simulation of an iterative run). A bin with no passing simulated event cannot be
corrected: its value is NaN and it is listed, never filled in.

References:
    G. Cowan, "Statistical Data Analysis", Oxford (1998), ch. 11 (bin-by-bin correction);
    T. Ullrich, Z. Xu, "Treatment of errors in efficiency calculations",
    arXiv:physics/0701199 (binomial errors).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from unfoldmem.cards.base import StrictModel
from unfoldmem.physics import lorentz
from unfoldmem.physics.observables import Observable
from unfoldmem.unfold.uncertainty import UnfoldedHist, edges_of

__all__ = [
    "PHASE_SPACES",
    "PhaseSpace",
    "FiducialCuts",
    "fiducial_mask",
    "Efficiency",
    "efficiency",
    "efficiencies",
    "correct",
]

PhaseSpace = Literal["reco", "fiducial", "full"]
#: ``reco``: passing events as unfolded (no correction); ``fiducial``; ``full``.
PHASE_SPACES = ("reco", "fiducial", "full")

_CHARGED_LEPTONS = (11, 13, 15)
_NEUTRINOS = (12, 14, 16)
_QUARKS = (1, 2, 3, 4, 5, 21)


class FiducialCuts(StrictModel):
    """Parton-level fiducial region: every visible final-state parton inside these cuts.

    Charged leptons and quarks/gluons must pass their pt and |η| cuts; neutrinos and any
    other ids (tops, W, Z) are not cut on. The defaults follow the default detector card.
    """

    lepton_pt_min: float = Field(15.0, ge=0, description="charged-lepton pt > this, GeV")
    lepton_eta_max: float = Field(2.4, gt=0, description="charged-lepton |η| < this")
    jet_pt_min: float = Field(25.0, ge=0, description="quark/gluon pt > this, GeV")
    jet_eta_max: float = Field(2.5, gt=0, description="quark/gluon |η| < this")


def fiducial_mask(momenta: Tensor, pdg: Tensor, cuts: FiducialCuts | None = None) -> Tensor:
    """Whether each event (or sample) is in the fiducial region.

    Arguments:
        momenta: (..., k, 4) GeV (E, px, py, pz).
        pdg: (k,) or (..., k) PDG ids.
        cuts: the region (defaults of :class:`FiducialCuts`).

    Returns:
        (...) bool.
    """
    cuts = cuts or FiducialCuts()
    pdg = torch.as_tensor(pdg, device=momenta.device).abs()
    pdg = pdg.expand(momenta.shape[:-1])
    pt, eta = lorentz.pt(momenta), lorentz.eta(momenta)
    lep = torch.isin(pdg, torch.tensor(_CHARGED_LEPTONS, device=pdg.device))
    jet = torch.isin(pdg, torch.tensor(_QUARKS, device=pdg.device))
    ok_lep = (pt > cuts.lepton_pt_min) & (eta.abs() < cuts.lepton_eta_max)
    ok_jet = (pt > cuts.jet_pt_min) & (eta.abs() < cuts.jet_eta_max)
    ok = torch.where(lep, ok_lep, torch.where(jet, ok_jet, torch.ones_like(ok_lep)))
    return ok.all(-1)


@dataclass
class Efficiency:
    """Binned efficiency of one observable from simulation.

    Attributes:
        name: observable; phase_space: ``fiducial`` or ``full``.
        edges: (n_bins + 1,); passed, total: (n_bins,) Σw of passing / all events in the
        region; passed_w2, failed_w2: Σw² of passing / failing events.
        eff: (n_bins,) ε (NaN where ``total`` is 0); eff_err: binomial error of ε.
    """

    name: str
    phase_space: str
    edges: np.ndarray
    passed: np.ndarray
    total: np.ndarray
    passed_w2: np.ndarray
    failed_w2: np.ndarray

    @property
    def eff(self) -> np.ndarray:
        """ε per bin, NaN where no simulated event falls in the bin."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.total != 0, self.passed / self.total, np.nan)

    @property
    def eff_err(self) -> np.ndarray:
        """Weighted binomial error of ε (see the module docstring)."""
        e = self.eff
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt((1 - e) ** 2 * self.passed_w2 + e**2 * self.failed_w2) / np.abs(
                self.total
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (NaN as None)."""

        def lst(a: np.ndarray) -> list[float | None]:
            return [float(x) if np.isfinite(x) else None for x in a]

        return {
            "name": self.name,
            "phase_space": self.phase_space,
            "edges": lst(self.edges),
            "eff": lst(self.eff),
            "eff_err": lst(self.eff_err),
        }


def _hist(values: np.ndarray, w: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.histogram(values, bins=edges, weights=w)[0].astype(np.float64)


def efficiency(
    values: Any,
    weights: Any,
    passed: Any,
    edges: np.ndarray,
    name: str = "x",
    phase_space: str = "full",
    region: Any | None = None,
) -> Efficiency:
    """Efficiency of one observable from simulated truth values.

    Arguments:
        values: (n,) parton-level observable of every simulated event (passing or not).
        weights: (n,) event weights; passed: (n,) bool ``pass_reco``.
        edges: bin edges; name: observable name.
        phase_space: ``full`` or ``fiducial``.
        region: (n,) bool, events inside the fiducial region (needed for ``fiducial``).
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    p = np.asarray(passed, dtype=bool)
    if phase_space == "fiducial":
        if region is None:
            msg = "the fiducial efficiency needs the fiducial region mask"
            raise ValueError(msg)
        keep = np.asarray(region, dtype=bool)
        v, w, p = v[keep], w[keep], p[keep]
    elif phase_space != "full":
        msg = f"phase_space must be 'fiducial' or 'full', got {phase_space!r}"
        raise ValueError(msg)
    edges = np.asarray(edges, dtype=np.float64)
    return Efficiency(
        name,
        phase_space,
        edges,
        _hist(v[p], w[p], edges),
        _hist(v, w, edges),
        _hist(v[p], w[p] ** 2, edges),
        _hist(v[~p], w[~p] ** 2, edges),
    )


def efficiencies(
    momenta: Tensor,
    pdg: Tensor,
    weights: Any,
    passed: Any,
    observables: Sequence[Observable],
    phase_space: str,
    cuts: FiducialCuts | None = None,
) -> dict[str, Efficiency]:
    """Efficiencies of every observable from the parton tree of a simulation.

    Arguments:
        momenta: (n, k, 4) GeV, the modelled parton slots of every generated event.
        pdg: (k,) or (n, k) PDG ids; weights: (n,); passed: (n,) bool ``pass_reco``.
        observables: from :func:`unfoldmem.physics.observables.observables_for`.
        phase_space: ``fiducial`` or ``full``.
        cuts: fiducial region (``fiducial`` only).

    Returns:
        ``{name: Efficiency}``.
    """
    region = fiducial_mask(momenta, pdg, cuts).numpy() if phase_space == "fiducial" else None
    out = {}
    for o in observables:
        vals = o(momenta, pdg).numpy()
        out[o.name] = efficiency(
            vals, weights, passed, edges_of(o.binning), o.name, phase_space, region
        )
    return out


def correct(h: UnfoldedHist, eff: Efficiency) -> UnfoldedHist:
    """Divide an unfolded histogram (values, stat, model) by ε and add the ε error.

    The histogram must already hold only fiducial samples for a fiducial correction
    (see :func:`fiducial_mask` and :func:`~unfoldmem.unfold.uncertainty.bin_fractions`).
    Bins with ε NaN or 0 become NaN.
    """
    if not np.allclose(h.edges, eff.edges):
        msg = f"{h.name}: histogram and efficiency binnings differ"
        raise ValueError(msg)
    e = eff.eff
    good = np.isfinite(e) & (e > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = np.where(good, 1.0 / e, np.nan)
        values = h.values * inv
        rel = np.where(good, eff.eff_err / e, np.nan)
    return dataclasses.replace(
        h,
        values=values,
        stat=h.stat * inv,
        model=h.model * inv,
        eff=np.abs(values) * rel,
        stat_cov=h.stat_cov * np.outer(inv, inv),
        phase_space=eff.phase_space,
        member_values=[m * inv for m in h.member_values],
        sumw2=None if h.sumw2 is None else h.sumw2 * inv * inv,
    )
