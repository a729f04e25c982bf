r"""Transfer functions W(x|p) of the MEM integrand: the exact detector density and the learned flow.

Transfer function W: :class:`ExactTransfer` (the parametric detector's exact density: matched
objects, ISR jets for unmatched reco jets with their multiplicity law and b-tag, and the MET) or
:class:`LearnedTransfer` (the transfer flow of the event's jet multiplicity times the
reconstruction efficiency ε(p); a flow trained with ``pairing: slot`` is summed over the jet
assignments like the exact W, with the detector card's b-tag law).


:meth:`ExactTransfer.log_w` gives W for every allowed assignment
(:func:`~unfoldmem.mem.assignments.build_assignments`); :meth:`ExactTransfer.log_w_pick`
only for one assignment per sample (the sampler draws the assignment as a discrete variable,
so a sample costs one assignment's object densities, as a VEGAS point does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from unfoldmem.mem.assignments import _JET, RecoEvents, build_assignments
from unfoldmem.physics import lorentz
from unfoldmem.simulate.detector import (
    KIND_ELECTRON,
    KIND_JET,
    KIND_MUON,
    ParametricDetector,
    object_kind,
)

__all__ = ["ExactTransfer", "LearnedTransfer"]


class ExactTransfer:
    """W(x|p) of the parametric detector, per assignment (the oracle).

    Arguments:
        detector: the :class:`~unfoldmem.simulate.detector.ParametricDetector`.
        btag_rule: see :func:`build_assignments`.
    """

    kind = "exact"

    def __init__(self, detector: ParametricDetector, btag_rule: str = "exact") -> None:
        self.detector = detector
        self.btag_rule = btag_rule
        bt = detector.card.btag
        self._tag_edges = torch.tensor(bt.eta_edges[1:-1], dtype=torch.float64)
        self._mistag = torch.tensor(bt.mistag_light, dtype=torch.float64)

    def prepare(self, events: RecoEvents, final_state: Sequence[int]) -> dict[str, Tensor]:
        """Per-event, θ- and sample-independent pieces: assignments and the ISR terms."""
        asg = build_assignments(events, final_state, self.btag_rule)
        obj, msk = events.objects, events.mask
        is_jet = msk & (obj[..., 6] == _JET)
        b, p, _ = asg.index.shape
        matched = torch.zeros(b, p, obj.shape[1], dtype=torch.bool)
        matched.scatter_(-1, asg.index.clamp(min=0), asg.index >= 0)
        matched[..., 0] = False  # index -1 was clamped onto slot 0 (the MET)
        fin = torch.where(msk[..., None], obj, 1.0)
        isr = self.detector.log_density_isr(fin[..., :3])
        p_tag = self._mistag[torch.bucketize(fin[..., 1].abs(), self._tag_edges)]
        isr = isr + torch.where(fin[..., 4] > 0.5, torch.log(p_tag), torch.log1p(-p_tag))
        unmatched = is_jet[:, None, :] & ~matched
        n_isr = unmatched.sum(-1)
        isr_term = (torch.where(unmatched, isr[:, None, :], 0.0).sum(-1)
                    + self.detector.log_prob_n_isr(n_isr) + torch.lgamma(n_isr + 1.0))
        isr_term = torch.where(asg.valid, isr_term, -math.inf)
        met_pt, met_phi = obj[:, 0, 0], obj[:, 0, 2]
        reco_px = torch.where(matched, fin[:, None, :, 0] * torch.cos(fin[:, None, :, 2]), 0.0)
        reco_py = torch.where(matched, fin[:, None, :, 0] * torch.sin(fin[:, None, :, 2]), 0.0)
        return {"index": asg.index, "valid": asg.valid, "n_valid": asg.n_valid,
                "isr_term": isr_term, "reco_pt_sum": torch.stack([reco_px.sum(-1),
                                                                  reco_py.sum(-1)], -1),
                "met_pt": met_pt, "met_phi": met_phi}

    def log_w(self, partons: Tensor, pdg: Tensor, events: RecoEvents,
              prep: Mapping[str, Tensor]) -> Tensor:
        r"""log W(x|p) per assignment.

        Arguments:
            partons: (S, B, n, 4) lab-frame (E, px, py, pz) GeV. pdg: (n,) PDG ids.
            events: the B reco events. prep: :meth:`prepare` output.

        Returns:
            (S, B, P) float64, −inf for padded assignments; never NaN.
        """
        obj = torch.where(events.mask[..., None], events.objects, 1.0)
        idx = prep["index"]  # (B, P, n)
        b, p, n = idx.shape
        if p <= obj.shape[1]:
            # Few assignments: evaluate only the (parton, object) pairs they use.
            g = torch.gather(obj[:, None].expand(b, p, *obj.shape[1:]), 2,
                             idx.clamp(min=0)[..., None].expand(b, p, n, 7))
            gathered = self.detector.log_density(g[None, ..., :3], partons[:, :, None], pdg,
                                                 g[None, ..., 4])  # (S, B, P, n)
        else:
            lp = self.detector.log_density(obj[None, :, None, :, :3], partons[:, :, :, None, :],
                                           pdg[:, None], obj[None, :, None, :, 4])  # (S,B,n,slots)
            s = lp.shape[0]
            gathered = torch.gather(lp[:, :, None].expand(s, b, p, n, lp.shape[-1]), -1,
                                    idx.clamp(min=0)[None, ..., None].expand(s, b, p, n, 1))[..., 0]
        matched = torch.where(idx[None] >= 0, gathered, 0.0).sum(-1)
        # MET: neutrinos + (parton − reco) of every matched object; sigma from visible partons.
        kind = object_kind(pdg)
        vis = (kind == KIND_JET) | (kind == KIND_MUON) | (kind == KIND_ELECTRON)
        parton_pt_sum = partons[..., 1:3].sum(-2)  # (S, B, 2)
        mean = parton_pt_sum[:, :, None, :] - prep["reco_pt_sum"][None]
        card = self.detector.card.met
        sum_pt = torch.where(vis, lorentz.pt(partons), 0.0).sum(-1)
        sigma = torch.sqrt(card.noise**2 + card.noise_sumet**2 * sum_pt).clamp(min=1e-9)
        met = self.detector.log_density_met(prep["met_pt"][None, :, None],
                                            prep["met_phi"][None, :, None], mean, sigma[..., None])
        out = matched + prep["isr_term"][None] + met
        return torch.where(torch.isnan(out), -math.inf, out)

    def log_w_pick(self, partons: Tensor, pdg: Tensor, events: RecoEvents,
                   prep: Mapping[str, Tensor], pick: Tensor) -> Tensor:
        r"""log W(x|p) for one assignment per sample: :meth:`log_w` at ``pick``.

        Arguments:
            partons: (S, B, n, 4) lab-frame (E, px, py, pz) GeV. pick: (S, B) assignment index.

        Returns:
            (S, B) float64, −inf for padded assignments; never NaN.
        """
        obj = torch.where(events.mask[..., None], events.objects, 1.0)
        s, b = pick.shape
        idx = prep["index"]  # (B, P, n)
        n = idx.shape[-1]
        ip = torch.gather(idx[None].expand(s, *idx.shape), 2,
                          pick[..., None, None].expand(s, b, 1, n))[:, :, 0]  # (S, B, n)
        g = torch.gather(obj[None].expand(s, *obj.shape), 2,
                         ip.clamp(min=0)[..., None].expand(s, b, n, obj.shape[-1]))
        lp = self.detector.log_density(g[..., :3], partons, pdg, g[..., 4])  # (S, B, n)
        matched = torch.where(ip >= 0, lp, 0.0).sum(-1)
        isr = torch.gather(prep["isr_term"][None].expand(s, -1, -1), 2, pick[..., None])[..., 0]
        rs = prep["reco_pt_sum"]  # (B, P, 2)
        reco_sum = torch.gather(rs[None].expand(s, *rs.shape), 2,
                                pick[..., None, None].expand(s, b, 1, 2))[:, :, 0]
        kind = object_kind(pdg)
        vis = (kind == KIND_JET) | (kind == KIND_MUON) | (kind == KIND_ELECTRON)
        mean = partons[..., 1:3].sum(-2) - reco_sum
        card = self.detector.card.met
        sum_pt = torch.where(vis, lorentz.pt(partons), 0.0).sum(-1)
        sigma = torch.sqrt(card.noise**2 + card.noise_sumet**2 * sum_pt).clamp(min=1e-9)
        met = self.detector.log_density_met(prep["met_pt"][None], prep["met_phi"][None], mean,
                                            sigma)
        out = matched + isr + met
        return torch.where(torch.isnan(out), -math.inf, out)


class LearnedTransfer:
    r"""W(x|p) from a :class:`~unfoldmem.flows.transfer.TransferFlow`, times ε(p).

    The flow is normalised over the selected reco space, so the MEM needs the reconstruction
    efficiency separately: :math:`\varepsilon(p) = \prod_{\rm visible}(1 - P_{\rm lost}(p_i))`
    from the detector card when one is given (the same no-lost-parton model as the exact W),
    else 1.

    A flow trained with ``pairing: pt`` sees the jets in pt order: one "assignment" per event.
    A flow trained with ``pairing: slot`` (jets in truth-match order) gets W summed over the
    exact W's jet assignments (:func:`~unfoldmem.mem.assignments.build_assignments`): per
    assignment, the jets go into the slot order it defines, and with a detector the card's
    b-tag law (the flow has no b-tag variable: efficiency or mistag rate of the matched parton's
    flavour at its |η|, light mistag at the reco |η| for unmatched jets) multiplies it.

    Arguments:
        model: the trained transfer flow (its parton layout must be the process final state).
        detector: detector for ε(p) and the b-tag law, or None.
    """

    kind = "learned"

    def __init__(self, model: Any, detector: ParametricDetector | None = None) -> None:
        from unfoldmem.flows.transfer import TransferFlow

        self.model = model
        self.detector = detector
        mods = model.modules() if isinstance(model, torch.nn.Module) else [model]
        core = next((m for m in mods if isinstance(m, TransferFlow)), None)
        self.slot = core is not None and core.config.pairing == "slot"
        if detector is not None:
            bt = detector.card.btag
            self._tag_edges = torch.tensor(bt.eta_edges[1:-1], dtype=torch.float64)
            self._tag_rates = torch.tensor([bt.mistag_light, bt.mistag_c, bt.efficiency],
                                           dtype=torch.float64)  # (light, c, b) x |eta| bins

    def prepare(self, events: RecoEvents, final_state: Sequence[int]) -> dict[str, Tensor]:
        """Valid where the jet multiplicity is in a flow class; slot pairing: the assignments
        (``index``, ``valid``, ``n_valid``) and each slot's light-mistag log P(b-tag)."""
        from unfoldmem.flows.transfer import jet_count

        cls = self.model.class_of(jet_count(events.objects, events.mask))
        if not self.slot:
            valid = (cls >= 0)[:, None]
            return {"valid": valid, "n_valid": valid.sum(-1), "in_class": cls >= 0}
        asg = build_assignments(events, final_state, "exact")
        out = {"index": asg.index, "valid": asg.valid, "n_valid": asg.n_valid,
               "in_class": cls >= 0}
        if self.detector is not None:
            obj = events.objects
            tag = obj[..., 4] > 0.5
            p = self._tag_rates[0][torch.bucketize(obj[..., 1].abs(), self._tag_edges)]
            out["log_mistag"] = torch.where(tag, torch.log(p), torch.log1p(-p))
        return out

    def _log_tag(self, partons: Tensor, pdg: Tensor, events: RecoEvents, ip: Tensor,
                 prep: Mapping[str, Tensor]) -> Tensor:
        """(S, B) log P(b-tags | partons, assignment): matched jets by their parton's flavour and
        |η|, the other jets by the light mistag rate at their reco |η|."""
        s, b, n = ip.shape
        jp = object_kind(pdg) == KIND_JET
        a = pdg.abs()
        flav = torch.where(a == 5, 2, torch.where(a == 4, 1, 0))
        rate = self._tag_rates[flav[None, None].expand(s, b, n),
                               torch.bucketize(lorentz.eta(partons).abs(), self._tag_edges)]
        obj = events.objects
        tag = torch.gather(obj[None, ..., 4].expand(s, *obj.shape[:2]), 2, ip.clamp(min=0)) > 0.5
        on = jp & (ip >= 0)
        matched = torch.where(on, torch.where(tag, torch.log(rate), torch.log1p(-rate)), 0.0)
        is_jet = events.mask & (obj[..., 6] == _JET)
        used = torch.zeros(s, b, obj.shape[1] + 1, dtype=torch.bool)
        used.scatter_(-1, torch.where(on, ip, obj.shape[1]), True)
        free = is_jet[None] & ~used[..., :-1]
        return matched.sum(-1) + torch.where(free, prep["log_mistag"][None], 0.0).sum(-1)

    def _log_eff(self, partons: Tensor, pdg: Tensor) -> Tensor:
        """(S, B) log ε(p): no visible parton lost."""
        if self.detector is None:
            return partons.new_zeros(partons.shape[:2])
        lost = self.detector.log_prob_lost(partons, pdg)
        kind = object_kind(pdg)
        vis = (kind == KIND_JET) | (kind == KIND_MUON) | (kind == KIND_ELECTRON)
        return torch.where(vis, torch.log(-torch.expm1(lost)), 0.0).sum(-1)

    def _flow(self, partons: Tensor, objects: Tensor, mask: Tensor) -> Tensor:
        """(S, B) float64 log W_flow; partons (S, B, n, 4), objects (S, B, slots, 7)."""
        s, b, n, _ = partons.shape
        v = lorentz.to_ptetaphim(partons).reshape(s * b, n, 4)
        with torch.no_grad():
            lw = self.model(v).log_prob(objects.reshape(s * b, -1, 7),
                                        mask.expand(s, *mask.shape).reshape(s * b, -1))
        return lw.double().view(s, b)

    def log_w(self, partons: Tensor, pdg: Tensor, events: RecoEvents,
              prep: Mapping[str, Tensor]) -> Tensor:
        """(S, B, P) log W_learned + log ε per assignment (P = 1 for ``pairing: pt``); partons
        (S, B, n, 4) lab (E, px, py, pz) GeV; −inf for padded assignments, never NaN."""
        s, b = partons.shape[:2]
        if self.slot:
            p = prep["index"].shape[1]
            return torch.stack([self.log_w_pick(partons, pdg, events, prep,
                                                torch.full((s, b), k, dtype=torch.long))
                                for k in range(p)], -1)
        obj = events.objects.expand(s, *events.objects.shape)
        lw = self._flow(partons, obj, events.mask) + self._log_eff(partons, pdg)
        lw = torch.where(prep["in_class"][None], lw, -math.inf)
        return torch.where(torch.isnan(lw), -math.inf, lw)[..., None]

    def log_w_pick(self, partons: Tensor, pdg: Tensor, events: RecoEvents,
                   prep: Mapping[str, Tensor], pick: Tensor) -> Tensor:
        """(S, B) :meth:`log_w` at assignment ``pick`` (S, B) (all zeros for ``pairing: pt``)."""
        if not self.slot:
            return self.log_w(partons, pdg, events, prep)[..., 0]
        from unfoldmem.flows.residual import slot_order

        s, b, n, _ = partons.shape
        idx = prep["index"]
        ip = torch.gather(idx[None].expand(s, *idx.shape), 2,
                          pick[..., None, None].expand(s, b, 1, n))[:, :, 0]  # (S, B, n)
        jets = (object_kind(pdg) == KIND_JET).nonzero()[:, 0]
        obj = events.objects[None].expand(s, *events.objects.shape)
        is_jet = (events.mask & (events.objects[..., 6] == _JET))[None].expand(s, -1, -1)
        ordered = slot_order(obj, is_jet, ip[..., jets])
        lw = self._flow(partons, ordered, events.mask) + self._log_eff(partons, pdg)
        if self.detector is not None:
            lw = lw + self._log_tag(partons, pdg, events, ip, prep)
        valid = torch.gather(prep["valid"][None].expand(s, -1, -1), 2, pick[..., None])[..., 0]
        lw = torch.where(prep["in_class"][None] & valid, lw, -math.inf)
        return torch.where(torch.isnan(lw), -math.inf, lw)
