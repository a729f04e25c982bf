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

Transfer functions W: :mod:`unfoldmem.mem.transfer`; assignments and the padded reco layout:
:mod:`unfoldmem.mem.assignments` (both re-exported here).

References:
    | A. Butter et al., "Two invertible networks for the matrix element method",
    | SciPost Phys. 15 (2023) 094, https://arxiv.org/abs/2210.00019
    | S. Brochet et al., "MoMEMta, a modular toolkit for the Matrix Element Method at the LHC",
    | Eur. Phys. J. C 79 (2019) 126, https://arxiv.org/abs/1805.08555
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from unfoldmem.mem.assignments import Assignments, RecoEvents, build_assignments
from unfoldmem.mem.transfer import ExactTransfer, LearnedTransfer
from unfoldmem.physics import lorentz
from unfoldmem.physics.couplings import GEV2_TO_PB
from unfoldmem.simulate.detector import (
    KIND_ELECTRON,
    KIND_INVISIBLE,
    KIND_JET,
    KIND_MUON,
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

_LOG_2PI = math.log(2 * math.pi)


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
                 kernel_sigma: Tensor, pick: Tensor | None = None,
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""θ-independent part R per assignment, and what :meth:`log_theta` needs.

        Arguments:
            pick: (S, B) one assignment per sample, or None for all of them.

        Returns:
            R (S, B, P) (or (S, B) at ``pick``), p_out (S, B, n, 4), x1 (S, B), x2 (S, B).
        """
        p, x1, x2, ljh = self.momenta(z, kernel_sigma)
        if pick is not None:
            out = ljh + self.transfer.log_w_pick(p, self.pdg, events, prep, pick)
            return torch.where(torch.isnan(out), -math.inf, out), p, x1, x2
        lw = self.transfer.log_w(p, self.pdg, events, prep)
        out = ljh[..., None] + lw
        return torch.where(torch.isnan(out), -math.inf, out), p, x1, x2

    def _luminosities(self, x1: Tensor, x2: Tensor) -> Tensor:
        pdf, q = self.hadronic.pdf, self.hadronic.mu_f
        chans = self.process.channels
        if hasattr(pdf, "xfx_flavours"):
            # All flavours of a beam in one pass; at the card's fixed μ_F the ln Q² step is done
            # once on the grid (equal to one xfx call per flavour to ≤ 3e-13, 6× cheaper).
            ids = [sorted({c[beam] for c in chans}) for beam in (0, 1)]
            xfx = pdf.xfx_flavours_at_scale if isinstance(q, int | float) else pdf.xfx_flavours
            f1 = xfx(ids[0], x1, q) / x1
            f2 = xfx(ids[1], x2, q) / x2
            return torch.stack([f1[ids[0].index(a)] * f2[ids[1].index(b)] for a, b in chans], -1)
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
