r"""Drell–Yan and tt̄ MEM test events: integrands with the real PDF, the default detector, and
unweighted events through it (shared by the MEM, inference and likelihood-CLI tests)."""

from __future__ import annotations

from functools import cache

import torch

from tests.conftest import REPO
from unfoldmem.cards import load_card
from unfoldmem.cards.detector import DetectorCard
from unfoldmem.mem.integrand import ExactTransfer, MEMIntegrand, RecoEvents
from unfoldmem.physics.hadronic import integrand_from_card
from unfoldmem.physics.pdf import load_pdf
from unfoldmem.simulate.detector import ParametricDetector

__all__ = ["dy_setup", "make_dy_events", "make_tt_events", "tt_setup"]


@cache
def _setup(process: str) -> tuple:
    """The process card's hadronic integrand (real PDF), the default detector and the exact-W
    MEM integrand."""
    card = load_card(REPO / f"cards/processes/{process}.yaml", kind="process")
    had = integrand_from_card(card, pdf=load_pdf(card.pdf, alpha_s_mz=card.alpha_s_mz))
    det = ParametricDetector(DetectorCard())
    return had, det, MEMIntegrand(had, ExactTransfer(det))


def dy_setup() -> tuple:
    """Drell–Yan: (hadronic integrand, default detector, exact-W MEM integrand), built once."""
    return _setup("drell_yan")


def make_dy_events(n: int, seed: int = 1, theta: dict | None = None) -> tuple[RecoEvents, torch.Tensor]:
    """n unweighted DY events passing 'two opposite-sign muons', reco and the parton momenta."""
    had, det, _ = dy_setup()
    g = torch.Generator().manual_seed(seed)
    recos, partons = [], []
    got = 0
    while got < n:
        u = torch.rand(4000, had.dim, generator=g, dtype=torch.float64)
        pt = had(u, theta)
        keep = torch.rand(len(u), generator=g, dtype=torch.float64) < pt.weight / pt.weight.max()
        p_out = pt.p_out[keep]
        pdg = torch.tensor(had.process.final_state).expand(len(p_out), 2)
        out = det.simulate(p_out, pdg, g)
        sel = (out.muons.count == 2) & (out.electrons.count == 0)
        ev = RecoEvents.from_awkward(out.to_awkward()[sel.numpy()])
        recos.append(ev)
        partons.append(p_out[sel])
        got += len(ev)
    ev = RecoEvents(torch.cat([r.objects for r in recos])[:n], torch.cat([r.mask for r in recos])[:n])
    return ev, torch.cat(partons)[:n]


def tt_setup() -> tuple:
    """tt̄ semileptonic: (hadronic integrand, default detector, exact-W MEM integrand), built once."""
    return _setup("ttbar_semileptonic")


def make_tt_events(n: int, seed: int) -> RecoEvents:
    """n unweighted tt̄ events with one muon, no electron and exactly four jets (24 maps)."""
    had, det, _ = tt_setup()
    g = torch.Generator().manual_seed(seed)
    fs = torch.tensor(had.process.final_state)
    objs, masks = [], []
    got = 0
    while got < n:
        u = torch.rand(3000, had.dim, generator=g, dtype=torch.float64)
        pt = had(u)
        keep = torch.rand(len(u), generator=g, dtype=torch.float64) < pt.weight / pt.weight.max()
        out = det.simulate(pt.p_out[keep], fs.expand(int(keep.sum()), 6), g)
        sel = (out.muons.count == 1) & (out.jets.count == 4) & (out.electrons.count == 0)
        ev = RecoEvents.from_awkward(out.to_awkward()[sel.numpy()])
        objs.append(ev.objects)
        masks.append(ev.mask)
        got += len(ev)
    return RecoEvents(torch.cat(objs)[:n], torch.cat(masks)[:n])
