r"""The per-event MEM integrand f(x1) f(x2) |M(p;θ)|²/(2ŝ) · W(x|p) in log space, per assignment.

Integration variables. Every outgoing parton i carries :math:`z_i = (p_{T,i}, \eta_i, \phi_i)`
(masses fixed by the process), measure :math:`\prod_i dp_{T,i}\,d\eta_i\,d\phi_i`. At LO the
partonic system has no transverse momentum, so one parton r (the neutrino if there is one, else
the last) is the *recoil*: its transverse momentum is :math:`-\sum_{i\ne r}\vec p_{T,i}` and
:math:`x_{1,2} = (E \pm p_z)/\sqrt s` follow from the totals. Then

.. math:: dx_1dx_2\,d\Phi_n = \frac{2}{s}(2\pi)^{4-3n}
    \prod_{i\ne r}\frac{p_{T,i}^2\cosh\eta_i}{2E_i}dp_{T,i}d\eta_id\phi_i\;
    \frac{p_{T,r}\cosh\eta_r}{2E_r}d\eta_r .

The recoil's own sampled :math:`(p_{T,r}, \phi_r)` are auxiliary: the integrand is multiplied by a
normalised kernel :math:`h(\vec a \mid -\sum_{i\ne r}\vec p_{T,i})` (isotropic Gaussian in
:math:`\vec a = (p_x, p_y)_r`, width ``kernel_sigma`` per event, Jacobian :math:`p_{T,r}`), so the
integral over all 3n variables equals the MEM integral for any width; it lets a proposal that
models all n partons (the cINN) serve as an importance-sampling density.

Transfer function W: :class:`ExactTransfer` (the parametric detector's exact density: matched
objects, ISR jets for unmatched reco jets with their multiplicity law and b-tag, and the MET) or
:class:`LearnedTransfer` (the transfer flow of the event's jet multiplicity times the
reconstruction efficiency ε(p)).

Assignments (exact W): every lepton parton goes to the reco lepton of the same flavour and
charge; every quark/gluon parton to a distinct reco jet; reco jets left over are ISR. With
``btag_rule="exact"`` all :math:`k!/(k-n_j)!` injective maps of the :math:`n_j` jet partons into
the k reco jets are summed, each weighted by the exact b-tag probabilities (which the learned
flows also model); ``"strict"`` keeps only maps sending b partons to tagged and other partons to
untagged jets (MadWeight/MoMEMta practice). Lost partons are not modelled: an event with fewer
reco objects than partons has no valid assignment and is flagged. The learned W has no explicit
assignment (the flow models the ordered reco event): one "permutation".

References:
    | A. Butter et al., "Two invertible networks for the matrix element method",
    | SciPost Phys. 15 (2023) 094, https://arxiv.org/abs/2210.00019
    | S. Brochet et al., "MoMEMta, a modular toolkit for the Matrix Element Method at the LHC",
    | Eur. Phys. J. C 79 (2019) 126, https://arxiv.org/abs/1805.08555
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unfoldmem.physics import lorentz
from unfoldmem.physics.couplings import GEV2_TO_PB
from unfoldmem.simulate.detector import (
    KIND_ELECTRON,
    KIND_INVISIBLE,
    KIND_JET,
    KIND_MUON,
    ParametricDetector,
    object_kind,
)

__all__ = [
    "FLAGS",
    "FLAG_MULTIPLICITY",
    "FLAG_NONFINITE_INPUT",
    "FLAG_NO_ASSIGNMENT",
    "FLAG_OK",
    "FLAG_ZERO_INTEGRAL",
    "Assignments",
    "ExactTransfer",
    "LearnedTransfer",
    "MEMIntegrand",
    "RecoEvents",
    "build_assignments",
]

FLAG_OK, FLAG_NONFINITE_INPUT, FLAG_NO_ASSIGNMENT, FLAG_ZERO_INTEGRAL, FLAG_MULTIPLICITY = range(5)
#: Event flags of the MEM: 0 ok, else why the event is outside the support (log P = −inf).
FLAGS = {
    FLAG_OK: "ok",
    FLAG_NONFINITE_INPUT: "non-finite reco input (NaN or inf)",
    FLAG_NO_ASSIGNMENT: "no valid parton-object assignment (missing or extra leptons, too few jets,"
                        " or no b-tag-compatible map)",
    FLAG_ZERO_INTEGRAL: "integrand vanished on every sample (event outside the model's support)",
    FLAG_MULTIPLICITY: "jet multiplicity outside the learned transfer flows' classes",
}

# Reco type codes of flows.encoding.pad_reco.
_MET, _MUON, _ELECTRON, _JET = 0, 1, 2, 3
_KIND_TO_TYPE = {KIND_MUON: _MUON, KIND_ELECTRON: _ELECTRON, KIND_JET: _JET}
_LOG_2PI = math.log(2 * math.pi)


@dataclass
class RecoEvents:
    """Detector events in the padded layout of :func:`unfoldmem.flows.encoding.pad_reco`.

    Arguments:
        objects: (B, slots, 7) float64 (pt GeV, eta, phi, mass GeV, btag, charge, type code);
            slot 0 is the MET.
        mask: (B, slots) bool, True for real objects.
    """

    objects: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return int(self.objects.shape[0])

    def __getitem__(self, index: Any) -> RecoEvents:
        return RecoEvents(self.objects[index], self.mask[index])

    @classmethod
    def from_awkward(cls, events: Any, max_jets: int = 8, max_leptons: int = 2) -> RecoEvents:
        """From detector records (``jets``, ``muons``, ``electrons``, ``met``; see io)."""
        from unfoldmem.flows.encoding import pad_reco

        objects, mask = pad_reco(events, max_jets=max_jets, max_leptons=max_leptons)
        return cls(objects.to(torch.float64), mask)

    def finite(self) -> Tensor:
        """(B,) True where every real object's values are finite."""
        ok = torch.isfinite(self.objects).all(-1) | ~self.mask
        return ok.all(-1)


@dataclass
class Assignments:
    """Allowed parton → reco-slot maps of a batch, padded to P per event.

    Arguments:
        index: (B, P, n) long, reco slot of parton i, −1 for invisible partons.
        valid: (B, P) bool, False for padding.
        n_valid: (B,) number of valid maps (0: no valid assignment).
    """

    index: Tensor
    valid: Tensor
    n_valid: Tensor


def build_assignments(events: RecoEvents, final_state: Sequence[int],
                      btag_rule: str = "exact") -> Assignments:
    """All parton → object maps allowed by flavour, charge and (``strict``) b-tags; see module doc.

    Arguments:
        events: B reco events. final_state: outgoing PDG ids in the process order.
        btag_rule: ``"exact"`` (all injective jet maps) or ``"strict"`` (b ↔ tagged only).

    Returns:
        :class:`Assignments`; the number of maps of an event with k jets and n_j jet partons
        is k!/(k−n_j)! (``exact``), times the ways of pairing identical leptons.
    """
    if btag_rule not in ("exact", "strict"):
        msg = f"btag_rule must be 'exact' or 'strict', got {btag_rule!r}"
        raise ValueError(msg)
    pdg = torch.as_tensor(final_state)
    kinds = object_kind(pdg).tolist()
    per_event: list[list[list[int]]] = []
    obj, msk = events.objects, events.mask
    for b in range(len(events)):
        types, charges, tags = obj[b, :, 6], obj[b, :, 5], obj[b, :, 4]
        slots_of: dict[tuple[int, float], list[int]] = {}
        for s in msk[b].nonzero()[:, 0].tolist():
            t = int(types[s])
            if t in (_MUON, _ELECTRON):
                slots_of.setdefault((t, float(charges[s])), []).append(s)
        jets = [s for s in msk[b].nonzero()[:, 0].tolist() if int(types[s]) == _JET]
        # Leptons: flavour and charge must match, and no reco lepton may be left over.
        lep_choices: list[list[tuple[int, int]]] = []
        used_keys: dict[tuple[int, float], list[int]] = {}
        for i, (k, q) in enumerate(zip(kinds, pdg.tolist(), strict=True)):
            if k in (KIND_MUON, KIND_ELECTRON):
                used_keys.setdefault((_KIND_TO_TYPE[k], float(-math.copysign(1, q))), []).append(i)
        ok = set(used_keys) == set(slots_of) and all(
            len(slots_of[key]) == len(v) for key, v in used_keys.items())
        maps: list[list[int]] = []
        if ok:
            for key, partons in used_keys.items():
                lep_choices.append([tuple(zip(partons, perm, strict=True))
                                    for perm in itertools.permutations(slots_of[key])])
            jet_partons = [i for i, k in enumerate(kinds) if k == KIND_JET]
            for lep in itertools.product(*lep_choices) if lep_choices else [()]:
                for jp in itertools.permutations(jets, len(jet_partons)):
                    if btag_rule == "strict" and any(
                            (abs(int(pdg[i])) == 5) != (float(tags[s]) > 0.5)
                            for i, s in zip(jet_partons, jp, strict=True)):
                        continue
                    m = [-1] * len(kinds)
                    for pairs in lep:
                        for i, s in pairs:
                            m[i] = s
                    for i, s in zip(jet_partons, jp, strict=True):
                        m[i] = s
                    maps.append(m)
        per_event.append(maps)
    p_max = max(1, *(len(m) for m in per_event)) if per_event else 1
    n = len(kinds)
    index = torch.full((len(events), p_max, n), -1, dtype=torch.long)
    valid = torch.zeros(len(events), p_max, dtype=torch.bool)
    for b, maps in enumerate(per_event):
        if maps:
            index[b, : len(maps)] = torch.tensor(maps, dtype=torch.long)
            valid[b, : len(maps)] = True
    return Assignments(index, valid, valid.sum(-1))


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


class LearnedTransfer:
    r"""W(x|p) from a :class:`~unfoldmem.flows.transfer.TransferFlow`, times ε(p).

    The flow is normalised over the selected reco space, so the MEM needs the reconstruction
    efficiency separately: :math:`\varepsilon(p) = \prod_{\rm visible}(1 - P_{\rm lost}(p_i))`
    from the detector card when one is given (the same no-lost-parton model as the exact W),
    else 1.

    Arguments:
        model: the trained transfer flow (its parton layout must be the process final state).
        detector: detector for ε(p), or None.
    """

    kind = "learned"

    def __init__(self, model: Any, detector: ParametricDetector | None = None) -> None:
        self.model = model
        self.detector = detector

    def prepare(self, events: RecoEvents, final_state: Sequence[int]) -> dict[str, Tensor]:
        """One "assignment" per event; valid where the jet multiplicity is in a flow class."""
        from unfoldmem.flows.transfer import jet_count

        cls = self.model.class_of(jet_count(events.objects, events.mask))
        valid = (cls >= 0)[:, None]
        return {"valid": valid, "n_valid": valid.sum(-1), "in_class": cls >= 0}

    def log_w(self, partons: Tensor, pdg: Tensor, events: RecoEvents,
              prep: Mapping[str, Tensor]) -> Tensor:
        """(S, B, 1) log W_learned + log ε; partons (S, B, n, 4) lab (E, px, py, pz) GeV."""
        s, b, n, _ = partons.shape
        v = lorentz.to_ptetaphim(partons).reshape(s * b, n, 4)
        obj = events.objects.expand(s, *events.objects.shape).reshape(s * b, -1, 7)
        msk = events.mask.expand(s, *events.mask.shape).reshape(s * b, -1)
        with torch.no_grad():
            lw = self.model(v).log_prob(obj, msk).double().view(s, b)
        if self.detector is not None:
            lost = self.detector.log_prob_lost(partons, pdg)
            kind = object_kind(pdg)
            vis = (kind == KIND_JET) | (kind == KIND_MUON) | (kind == KIND_ELECTRON)
            lw = lw + torch.where(vis, torch.log(-torch.expm1(lost)), 0.0).sum(-1)
        lw = torch.where(prep["in_class"][None], lw, -math.inf)
        return torch.where(torch.isnan(lw), -math.inf, lw)[..., None]


def _final_masses(hadronic: Any) -> Tensor:
    """Masses of the outgoing partons, read off one phase-space point of the process."""
    th = hadronic.full_theta()
    mp = hadronic.process.shat_mapping(th, hadronic.cuts)
    s_lo = float(torch.as_tensor(mp.s_min))
    shat = torch.tensor([max(4 * s_lo, 500.0**2)], dtype=torch.float64)
    u = torch.full((1, hadronic.process.dim), 0.5, dtype=torch.float64)
    p, _ = hadronic.process.phase_space(u, shat, th)
    m = lorentz.mass(p[0]).clamp(min=0.0)
    return torch.where(m < 1e-3, 0.0, m)  # boosts leave ~1e-6 GeV of noise on massless ones


class MEMIntegrand:
    r"""The MEM integrand of one process, split into a θ-free and a θ-dependent part.

    :math:`\log F(z;\theta,\sigma) = R_\sigma(z) + T(z;\theta)` with
    :math:`R = \log J + \log h + \log W_\sigma` (per assignment σ) and
    :math:`T = \log\big[\sum_c f_a(x_1)f_b(x_2)|M_c|^2\big] - \log 2\hat s + \log(\text{pb/GeV}^{-2})`.
    F is in pb × (units of W); summed over assignments it is the MEM integrand over z.

    Arguments:
        hadronic: :class:`~unfoldmem.physics.hadronic.HadronicIntegrand` (process, PDF,
            √s, scales, default θ, generator cuts on ŝ).
        transfer: :class:`ExactTransfer` or :class:`LearnedTransfer`.
    """

    def __init__(self, hadronic: Any, transfer: ExactTransfer | LearnedTransfer) -> None:
        self.hadronic = hadronic
        self.process = hadronic.process
        self.transfer = transfer
        self.pdg = torch.as_tensor(self.process.final_state, dtype=torch.long)
        self.n = int(self.pdg.numel())
        self.masses = _final_masses(hadronic)
        kinds = object_kind(self.pdg)
        inv = (kinds == KIND_INVISIBLE).nonzero()[:, 0]
        self.recoil = int(inv[0]) if inv.numel() else self.n - 1
        self.visible = ((kinds == KIND_JET) | (kinds == KIND_MUON) | (kinds == KIND_ELECTRON))
        self.s = float(hadronic.sqrt_s) ** 2

    def prepare(self, events: RecoEvents) -> dict[str, Tensor]:
        """Per-event, sample-independent data (assignments, ISR terms, input flags)."""
        prep = self.transfer.prepare(events, self.process.final_state)
        flag = torch.zeros(len(events), dtype=torch.int32)
        flag[prep["n_valid"] == 0] = FLAG_NO_ASSIGNMENT
        if "in_class" in prep:
            flag[~prep["in_class"]] = FLAG_MULTIPLICITY
        flag[~events.finite()] = FLAG_NONFINITE_INPUT
        prep["flag"] = flag
        return prep

    def momenta(self, z: Tensor, kernel_sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Balanced lab momenta from z, with log J + log h.

        Arguments:
            z: (S, B, n, 3) (pt GeV, eta, phi). kernel_sigma: (B,) GeV.

        Returns:
            p_out (S, B, n, 4), x1 (S, B), x2 (S, B), log J + log h (S, B) (−inf outside
            x ∈ (0, 1)).
        """
        pt, eta, phi = z.unbind(-1)
        r = self.recoil
        m = self.masses.expand(pt.shape)
        p = lorentz.from_ptetaphim(torch.stack([pt, eta, phi, m], -1))
        others = torch.ones(self.n, dtype=torch.bool)
        others[r] = False
        bal = -p[..., others, 1:3].sum(-2)  # (S, B, 2)
        pt_r = torch.linalg.vector_norm(bal, dim=-1)
        eta_r = eta[..., r].clamp(-lorentz.ETA_MAX, lorentz.ETA_MAX)
        e_r = torch.sqrt((pt_r * torch.cosh(eta_r)) ** 2 + self.masses[r] ** 2)
        p_r = torch.stack([e_r, bal[..., 0], bal[..., 1], pt_r * torch.sinh(eta_r)], -1)
        p = torch.cat([p[..., :r, :], p_r[..., None, :], p[..., r + 1:, :]], -2)
        tot = p.sum(-2)
        rs = math.sqrt(self.s)
        x1, x2 = (tot[..., 0] + tot[..., 3]) / rs, (tot[..., 0] - tot[..., 3]) / rs
        e = p[..., 0]
        lch = torch.log(torch.cosh(eta.clamp(-700, 700)))
        log_j = (torch.where(others, 2 * torch.log(pt) + lch - torch.log(2 * e), 0.0).sum(-1)
                 + torch.log(pt_r) + lch[..., r] - torch.log(2 * e_r)
                 + (4 - 3 * self.n) * _LOG_2PI + math.log(2.0 / self.s))
        sig = kernel_sigma.to(z)
        a = torch.stack([pt[..., r] * torch.cos(phi[..., r]), pt[..., r] * torch.sin(phi[..., r])], -1)
        d2 = ((a - bal) ** 2).sum(-1)
        log_h = -0.5 * d2 / sig**2 - torch.log(2 * math.pi * sig**2) + torch.log(pt[..., r])
        ok = (x1 > 0) & (x1 < 1) & (x2 > 0) & (x2 < 1) & (pt > 0).all(-1)
        out = torch.where(ok, log_j + log_h, -math.inf)
        return p, x1, x2, torch.where(torch.isnan(out), -math.inf, out)

    def log_rest(self, z: Tensor, events: RecoEvents, prep: Mapping[str, Tensor],
                 kernel_sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""θ-independent part R per assignment, and what :meth:`log_theta` needs.

        Returns:
            R (S, B, P), p_out (S, B, n, 4), x1 (S, B), x2 (S, B).
        """
        p, x1, x2, ljh = self.momenta(z, kernel_sigma)
        lw = self.transfer.log_w(p, self.pdg, events, prep)
        out = ljh[..., None] + lw
        return torch.where(torch.isnan(out), -math.inf, out), p, x1, x2

    def _luminosities(self, x1: Tensor, x2: Tensor) -> Tensor:
        pdf, q = self.hadronic.pdf, self.hadronic.mu_f
        cache: dict[tuple[int, int], Tensor] = {}

        def f(pid: int, beam: int, x: Tensor) -> Tensor:
            if (pid, beam) not in cache:
                cache[(pid, beam)] = torch.as_tensor(pdf.xfx(pid, x, q), dtype=torch.float64) / x
            return cache[(pid, beam)]

        return torch.stack([f(a, 1, x1) * f(b, 2, x2) for a, b in self.process.channels], -1)

    def log_theta(self, p_out: Tensor, x1: Tensor, x2: Tensor,
                  theta: Mapping[str, Any] | None = None) -> Tensor:
        r"""θ-dependent part :math:`T = \log\sum_c f f |M_c|^2/(2\hat s)` in pb; (S, B).

        Differentiable in tensor-valued ``theta`` entries; −inf outside the process's ŝ window
        or x ∉ (0, 1).
        """
        th = self.hadronic.full_theta(theta)
        shape = x1.shape
        ok = (x1 > 0) & (x1 < 1) & (x2 > 0) & (x2 < 1)
        x1c = torch.where(ok, x1, 0.5).reshape(-1)
        x2c = torch.where(ok, x2, 0.5).reshape(-1)
        rs = math.sqrt(self.s)
        z = torch.zeros_like(x1c)
        p_in = torch.stack([torch.stack([x1c * rs / 2, z, z, x1c * rs / 2], -1),
                            torch.stack([x2c * rs / 2, z, z, -x2c * rs / 2], -1)], 1)
        me2 = self.process.matrix_elements_by_channel(p_in, p_out.reshape(-1, self.n, 4), th)
        lum = self._luminosities(x1c, x2c)
        shat = x1c * x2c * self.s
        mp = self.process.shat_mapping(th, self.hadronic.cuts)
        s_max = self.s if mp.s_max is None else mp.s_max
        win = (shat >= torch.as_tensor(mp.s_min)) & (shat <= torch.as_tensor(s_max))
        val = (lum * me2).sum(-1) / (2 * shat) * GEV2_TO_PB
        out = torch.where(win & (val > 0), torch.log(torch.where(val > 0, val, 1.0)), -math.inf)
        out = torch.where(ok.reshape(-1), out, -math.inf).reshape(shape)
        return torch.where(torch.isnan(out), -math.inf, out)
