r"""Reco-level event selection: the run card's cuts applied to detector output → ``pass_reco``."""

from __future__ import annotations

import torch
from torch import Tensor

from unfoldmem.cards.run import SelectionConfig
from unfoldmem.simulate.detector import DetectorOutput

__all__ = ["select"]


def select(out: DetectorOutput, cfg: SelectionConfig) -> Tensor:
    """Which events pass the selection (and were reconstructed at all).

    Jets count if pt > ``jet_pt_min``; leptons (muons and electrons together) if
    pt > ``lepton_pt_min``; b-jets are counted jets with b-tag 1.

    Arguments:
        out: detector output for n events.
        cfg: the run card's :class:`~unfoldmem.cards.run.SelectionConfig`.

    Returns:
        (n,) bool.

    Example:
        >>> from unfoldmem.cards.detector import DetectorCard
        >>> from unfoldmem.simulate.detector import ParametricDetector
        >>> det = ParametricDetector(DetectorCard())
        >>> p = torch.tensor([[[50.0, 50.0, 0.0, 0.0]]], dtype=torch.float64)
        >>> out = det.simulate(p, torch.tensor([[13]]), torch.Generator().manual_seed(0))
        >>> select(out, SelectionConfig(n_leptons_min=1)).tolist()
        [True]
    """
    jets = out.jets.mask & (out.jets.pt > cfg.jet_pt_min)
    n_jets = jets.sum(-1)
    n_b = (jets & (out.jets.tag > 0.5)).sum(-1)
    n_lep = (out.muons.mask & (out.muons.pt > cfg.lepton_pt_min)).sum(-1) + (
        out.electrons.mask & (out.electrons.pt > cfg.lepton_pt_min)
    ).sum(-1)
    ok = out.passed & (n_jets >= cfg.n_jets_min) & (n_b >= cfg.n_bjets_min)
    ok &= n_lep >= cfg.n_leptons_min
    if cfg.n_leptons_max is not None:
        ok &= n_lep <= cfg.n_leptons_max
    if cfg.n_jets_max is not None:
        ok &= n_jets <= cfg.n_jets_max
    if cfg.met_min > 0:
        ok &= out.met_pt > cfg.met_min
    return ok.to(torch.bool)
