r"""The detector card as lookup tables by object kind and |η| bin: resolutions, efficiencies,
acceptance, b-tag probabilities and the ISR multiplicity law, shared by the sampler
(:mod:`~unfoldmem.simulate.detector_kernel`) and the exact densities
(:class:`~unfoldmem.simulate.detector.ParametricDetector`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from unfoldmem.cards.detector import DetectorCard
from unfoldmem.simulate.detector_objects import KIND_ELECTRON, KIND_INVISIBLE, KIND_JET, KIND_MUON

__all__ = ["SIGMA_FLOOR", "DetectorTables", "detector_tables"]

#: Resolutions of 0 are clamped to this, so densities stay finite (a near-delta).
SIGMA_FLOOR = 1e-9


@dataclass(frozen=True)
class DetectorTables:
    """A detector card as arrays; "fine" |η| bins are the union of all the card's regions.

    Arguments:
        kind_lut, flav_lut: (26,) int64 object kind (``KIND_*``) / b-tag flavour (0 light, 1 c,
            2 b) by |pdg|.
        tab: (5 n_fine, 7) rows kind·n_fine + fine bin; columns A, B, C, D of
            σ² = A X + B + C X² + D X⁴ (X = E for jets, pt for leptons, GeV), σ_η, σ_φ (rad), ε.
        edges: (n_fine - 1,) inner fine |η| edges; a parton with |η| in (e_i, e_i+1] is in bin
            i + 1 (``torch.bucketize``).
        btag: (3 n_fine,) tag probability, rows flavour·n_fine + fine bin.
        pt_min, eta_max, lep_mass: (5,) reco acceptance and lepton mass by kind, GeV.
        isr_probs: (k_max + 1,) P(n_isr = k), the card's law truncated and renormalised.
        isr_cum: (k + 1,) cumulative P(n_isr ≤ k) up to the largest possible k.
        scalars: (5,) ISR pt_min (GeV), −1/(index − 1), ISR eta_max, MET noise² (GeV²),
            noise_sumet² (GeV).
    """

    kind_lut: np.ndarray
    flav_lut: np.ndarray
    tab: np.ndarray
    edges: np.ndarray
    btag: np.ndarray
    pt_min: np.ndarray
    eta_max: np.ndarray
    lep_mass: np.ndarray
    isr_probs: np.ndarray
    isr_cum: np.ndarray
    scalars: np.ndarray

    @property
    def n_fine(self) -> int:
        """Number of fine |η| bins."""
        return len(self.edges) + 1

    @property
    def k_isr(self) -> int:
        """Most ISR jets an event can have."""
        return len(self.isr_cum) - 1


def _isr_probs(card: DetectorCard) -> np.ndarray:
    isr = card.isr
    k = np.arange(isr.max_jets + 1, dtype=np.float64)
    if isr.distribution == "none" or isr.mean == 0:
        pk = (k == 0).astype(np.float64)
    elif isr.distribution == "poisson":
        pk = np.exp(k * math.log(isr.mean) - isr.mean - np.array([math.lgamma(x + 1) for x in k]))
    else:
        pk = (isr.mean / (1 + isr.mean)) ** k
    return pk / pk.sum()


def detector_tables(card: DetectorCard) -> DetectorTables:
    """Lookup tables of a :class:`~unfoldmem.cards.detector.DetectorCard`."""
    j, mu, el, bt = card.jets, card.muons, card.electrons, card.btag
    edges = sorted({*j.eta_edges, *mu.eta_edges, *el.eta_edges, *bt.eta_edges} - {0.0})
    mids = np.array([0.5 * (lo + hi) for lo, hi in zip([0.0, *edges[:-1]], edges, strict=True)])

    def region(eds: list[float]) -> list[int]:
        return np.searchsorted(np.array(eds[1:-1]), mids, side="left").tolist()

    n_fine = len(mids)
    tab = np.zeros((5 * n_fine, 7))
    for i, r in enumerate(region(j.eta_edges)):
        res = j.resolution
        tab[KIND_JET * n_fine + i] = [res.a[r] ** 2, res.b[r] ** 2, res.c[r] ** 2, 0.0,
                                      j.sigma_eta[r], j.sigma_phi[r], j.efficiency[r]]
    for kind, c in ((KIND_MUON, mu), (KIND_ELECTRON, el)):
        for i, r in enumerate(region(c.eta_edges)):
            res = c.resolution
            tab[kind * n_fine + i] = [0.0, 0.0, res.a[r] ** 2, res.b[r] ** 2,
                                      c.sigma_eta[r], c.sigma_phi[r], c.efficiency[r]]
    tab[:, 4:6] = tab[:, 4:6].clip(min=SIGMA_FLOOR)
    rb = region(bt.eta_edges)
    btag = np.array([v[r] for v in (bt.mistag_light, bt.mistag_c, bt.efficiency) for r in rb])
    kind_lut = np.zeros(26, dtype=np.int64)
    kind_lut[[1, 2, 3, 4, 5, 15, 21, 22]] = KIND_JET
    kind_lut[13], kind_lut[11] = KIND_MUON, KIND_ELECTRON
    kind_lut[[12, 14, 16]] = KIND_INVISIBLE
    flav_lut = np.zeros(26, dtype=np.int64)
    flav_lut[4], flav_lut[5] = 1, 2
    probs = _isr_probs(card)
    isr, met = card.isr, card.met
    return DetectorTables(
        kind_lut=kind_lut, flav_lut=flav_lut, tab=tab, edges=np.array(edges[:-1]), btag=btag,
        pt_min=np.array([math.inf, j.pt_min, mu.pt_min, el.pt_min, math.inf]),
        eta_max=np.array([0.0, j.eta_max, mu.eta_max, el.eta_max, 0.0]),
        lep_mass=np.array([0.0, 0.0, mu.mass, el.mass, 0.0]),
        isr_probs=probs, isr_cum=np.cumsum(probs[:int(np.flatnonzero(probs).max()) + 1]),
        scalars=np.array([isr.pt_min, -1.0 / (isr.index - 1), isr.eta_max, met.noise**2,
                          met.noise_sumet**2]))
