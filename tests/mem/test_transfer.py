"""Tests of unfoldmem.mem.transfer.LearnedTransfer: slot-paired flows summed over assignments."""

from __future__ import annotations

import math
from functools import cache

import torch

from tests._support.transfer_toy import detector_toy, wide_detector_card
from unfoldmem.cards.model import FlowConfig, TransferConfig
from unfoldmem.flows.transfer import TransferFlow
from unfoldmem.mem.assignments import RecoEvents
from unfoldmem.mem.transfer import LearnedTransfer
from unfoldmem.physics import lorentz
from unfoldmem.simulate.detector import ParametricDetector

FS = [5, -5, 1, -2]
PDG = torch.tensor(FS)


@cache
def _setup(pairing: str) -> tuple[TransferFlow, RecoEvents, torch.Tensor, ParametricDetector]:
    """An (untrained) residual transfer flow on detector_toy events with a MET slot in front
    and random b-tags; 6 events with 4 jets and 1 with 5, their partons (1, 7, 4, 4) lab."""
    torch.manual_seed(0)
    data = detector_toy(300, 3)
    n = data["reco"].shape[0]
    reco = torch.zeros(n, 7, 7, dtype=torch.float64)
    reco[:, 1:] = data["reco"]
    reco[:, 0, 0] = 15.0  # MET: type 0
    reco[:, 1:, 4] = (torch.rand(n, 6, generator=torch.Generator().manual_seed(1)) < 0.5).double()
    mask = torch.cat([torch.ones(n, 1, dtype=torch.bool), data["mask"]], -1)
    cfg = TransferConfig(multiplicities=[4, 5, 6], open_last=True, classifier_hidden=[8],
                         residual=True, pairing=pairing, jet_pt_min=0.0)
    model = TransferFlow.from_data(data["partons"], reco, mask, config=cfg,
                                   flow=FlowConfig(transforms=2, hidden=[16], bins=6))
    n_jets = data["mask"].sum(-1)
    rows = torch.cat([(n_jets == 4).nonzero()[:6, 0], (n_jets == 5).nonzero()[:1, 0]])
    events = RecoEvents(reco[rows], mask[rows])
    partons = lorentz.from_ptetaphim(data["partons"][rows])[None]
    return model, events, partons, ParametricDetector(wide_detector_card())


def test_prepare_gives_the_assignments() -> None:
    """Slot pairing: prepare returns build_assignments' index (4 jets: 4! = 24 maps, 5 jets:
    5!/1! = 120), every one valid and mapping each quark to a distinct jet slot."""
    model, events, _, det = _setup("slot")
    prep = LearnedTransfer(model, det).prepare(events, FS)
    assert prep["index"].shape == (7, 120, 4)
    assert prep["n_valid"].tolist() == [24] * 6 + [120]
    for b in range(7):
        idx = prep["index"][b, prep["valid"][b]]
        assert (idx >= 1).all() and all(len(set(r)) == 4 for r in idx.tolist())
        assert bool(events.mask[b][idx].all()) and bool((events.objects[b][idx][..., 6] == 3).all())


def test_log_w_pick_is_the_flow_at_the_assignment_order_times_btag_and_efficiency() -> None:
    """log_w stacks log_w_pick over the assignments (so its logsumexp is the sum of
    log_w_pick); each term is the flow with the jets put into that assignment's parton order,
    plus the b-tag probabilities of the parametric detector (reference: log_density with the
    tag minus without it) and the efficiency ε(p), computed here independently."""
    model, events, partons, det = _setup("slot")
    lt = LearnedTransfer(model, det)
    prep = lt.prepare(events, FS)
    lw = lt.log_w(partons, PDG, events, prep)
    p = prep["index"].shape[1]
    assert lw.shape == (1, 7, p)
    picks = torch.stack([lt.log_w_pick(partons, PDG, events, prep,
                                       torch.full((1, 7), k, dtype=torch.long))
                         for k in range(p)], -1)
    assert torch.equal(torch.isfinite(lw), prep["valid"][None])
    assert torch.equal(lw, picks)
    assert torch.allclose(torch.logsumexp(lw, -1), torch.logsumexp(picks, -1), rtol=0, atol=1e-12)
    v = lorentz.to_ptetaphim(partons[0])
    eff = torch.log(-torch.expm1(det.log_prob_lost(partons[0], PDG))).sum(-1)
    mistag = math.log(1 - det.card.btag.mistag_light[0])
    for b, k in [(0, 0), (0, 17), (3, 5), (6, 0), (6, 119)]:
        idx = prep["index"][b, k]
        others = [s for s in range(1, 7) if bool(events.mask[b, s]) and s not in idx.tolist()]
        obj = events.objects[b, [0, *idx.tolist(), *others, *range(len(others) + 5, 7)]]
        with torch.no_grad():
            flow = model(v[b : b + 1]).log_prob(obj[None], events.mask[b : b + 1]).double()[0]
        g = events.objects[b, idx]
        tag = (det.log_density(g[:, :3], partons[0, b], PDG, g[:, 4])
               - det.log_density(g[:, :3], partons[0, b], PDG)).sum()
        tag = tag + sum((math.log(0.01) if events.objects[b, s, 4] > 0.5 else mistag)
                        for s in others)  # default card: light mistag 0.01 at every |eta|
        assert abs(float(lw[0, b, k] - (flow + tag + eff[b]))) < 1e-5


def test_sum_over_assignments_ignores_the_jet_order() -> None:
    """W summed over assignments is a function of the set of jets: reversing the jets of each
    event (any order the reco hands over) leaves log Σ W unchanged."""
    model, events, partons, det = _setup("slot")
    lt = LearnedTransfer(model, det)
    ref = torch.logsumexp(lt.log_w(partons, PDG, events, lt.prepare(events, FS)), -1)
    obj = events.objects.clone()
    for b in range(7):
        js = events.mask[b].nonzero()[1:, 0]
        obj[b, js] = events.objects[b, js.flip(0)]
    rev = RecoEvents(obj, events.mask)
    got = torch.logsumexp(lt.log_w(partons, PDG, rev, lt.prepare(rev, FS)), -1)
    assert torch.isfinite(ref).all()
    assert torch.allclose(got, ref, rtol=0, atol=1e-5)


def test_pt_pairing_keeps_one_assignment() -> None:
    """pairing: pt (old model directories): one "assignment", no index, W = flow + log ε on the
    pt-ordered jets as handed over."""
    model, events, partons, det = _setup("pt")
    lt = LearnedTransfer(model, det)
    prep = lt.prepare(events, FS)
    assert "index" not in prep and prep["valid"].shape == (7, 1)
    lw = lt.log_w(partons, PDG, events, prep)
    v = lorentz.to_ptetaphim(partons[0])
    with torch.no_grad():
        flow = model(v).log_prob(events.objects, events.mask).double()
    ref = (flow + torch.log(-torch.expm1(det.log_prob_lost(partons[0], PDG))).sum(-1))
    assert lw.shape == (1, 7, 1)
    assert torch.allclose(lw[0, :, 0], ref, rtol=0, atol=1e-9)
    zero = torch.zeros(1, 7, dtype=torch.long)
    assert torch.equal(lt.log_w_pick(partons, PDG, events, prep, zero), lw[..., 0])
