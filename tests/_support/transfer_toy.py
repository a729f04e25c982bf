r"""Four-quark detector toy of the transfer-function tests: partons, reco jets, exact log W.

Used by ``tests/flows/test_transfer.py`` and ``tests/mem/test_transfer.py``.
"""

from __future__ import annotations

import math

import torch

from unfoldmem.cards.detector import DetectorCard
from unfoldmem.physics import lorentz
from unfoldmem.simulate.detector import ParametricDetector

__all__ = ["PDG", "detector_toy", "wide_detector_card"]

PDG = torch.tensor([1, 2, 1, 2])


def wide_detector_card() -> DetectorCard:
    """Default resolutions; acceptance and efficiency that keep every parton (pt > 5, |η| < 6)."""
    return DetectorCard.model_validate({
        "jets": {"pt_min": 5.0, "eta_max": 6.0, "efficiency": [1.0, 1.0]},
        "isr": {"distribution": "poisson", "mean": 0.6, "max_jets": 2, "pt_min": 25.0,
                "eta_max": 2.5},
    })


def detector_toy(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Four massless quarks through the parametric detector; reco jets in parton order + ISR.

    Returns partons (n', 4, 4) (pt, eta, phi, m), reco (n', 6, 7), mask, the exact log W and the
    four-vectors; events where a parton left no jet (rare: acceptance is wide) are dropped.
    """
    g = torch.Generator().manual_seed(seed)
    pt = torch.exp(math.log(60) + 0.4 * torch.randn(n, 4, generator=g, dtype=torch.float64))
    eta = torch.randn(n, 4, generator=g, dtype=torch.float64).clamp(-2.2, 2.2)
    phi = (2 * torch.rand(n, 4, generator=g, dtype=torch.float64) - 1) * math.pi
    v = torch.stack([pt, eta, phi, torch.zeros_like(pt)], -1)
    p4 = lorentz.from_ptetaphim(v)
    det = ParametricDetector(wide_detector_card())
    out = det.simulate(p4, PDG.expand(n, 4), g)
    jets = out.jets
    matched = jets.mask & (jets.parton_index >= 0)
    keep = matched.sum(-1) == 4
    # parton order for matched jets, then ISR jets pt-ordered (key: index, ISR after)
    key = torch.where(matched, jets.parton_index.double(), 10.0 + 1.0 / (1.0 + jets.pt))
    key = torch.where(jets.mask, key, 100.0)
    order = torch.argsort(key, -1)
    cols = [torch.gather(c, -1, order) for c in (jets.pt, jets.eta, jets.phi, jets.mass)]
    msk = torch.gather(jets.mask, -1, order)
    k = cols[0].shape[-1]
    reco = torch.zeros(n, max(k, 6), 7, dtype=torch.float64)
    reco[:, :k, :4] = torch.stack(cols, -1)
    reco[:, :k, 6] = 3.0 * msk
    mask = torch.zeros(n, max(k, 6), dtype=torch.bool)
    mask[:, :k] = msk
    reco, mask = reco[:, :6], mask[:, :6]
    n_isr = out.n_isr
    exact = det.log_density(reco[:, :4, :3], p4, PDG).sum(-1)
    exact = exact - torch.log(-torch.expm1(det.log_prob_lost(p4, PDG))).sum(-1)
    isr = mask[:, 4:]
    exact = exact + torch.where(isr, det.log_density_isr(reco[:, 4:, :3]), 0.0).sum(-1)
    exact = exact + det.log_prob_n_isr(n_isr) + torch.lgamma(n_isr.double() + 1)
    return {"partons": v[keep], "reco": reco[keep], "mask": mask[keep], "exact": exact[keep]}
