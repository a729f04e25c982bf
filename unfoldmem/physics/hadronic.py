r"""The hadronic integrand on the unit hypercube: PDFs × |M|² × phase space, in pb.

.. math:: \sigma = \sum_{ab}\int dx_1 dx_2\, f_a(x_1,\mu_F) f_b(x_2,\mu_F)\,
    \frac{1}{2\hat s}\int |M_{ab}|^2 d\Phi_n
    = \int_{[0,1]^{2+d}} w(u)\,du .

``u[:, 0]`` maps :math:`\hat s` (Breit–Wigner for an s-channel resonance, else :math:`d\hat s/\hat s`),
``u[:, 1]`` the rapidity of the parton pair (:func:`~unfoldmem.physics.phase_space.x1x2_from_tau`),
``u[:, 2:]`` the process phase space. Scales are fixed (the process card's μ_F, μ_R);
α_s(μ_R) is the PDF set's unless the card fixes it. This one integrand serves ``xsec``, the event
generator and the MEM normalisation. Negative parton densities (a feature of some LO fits at
large x) are set to zero so that weights are never negative.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from unfoldmem.physics.couplings import GEV2_TO_PB
from unfoldmem.physics.lorentz import boost
from unfoldmem.physics.phase_space import breit_wigner_map, x1x2_from_tau
from unfoldmem.physics.process import Process, get_process, incoming_momenta

__all__ = ["PDFLike", "HadronicPoint", "HadronicIntegrand", "integrand_from_card"]


class PDFLike(Protocol):
    """What the integrand needs of a PDF set (:func:`unfoldmem.physics.pdf.load_pdf` gives one)."""

    def xfx(self, pid: int, x: Tensor, q: Tensor | float) -> Tensor:
        """x f(x, Q) for parton ``pid`` (21 = gluon)."""

    def alphas(self, q: Tensor | float) -> Tensor | float:
        """α_s(Q)."""


@dataclass
class HadronicPoint:
    """One batch of integrand evaluations.

    Attributes:
        x1, x2: (N,) momentum fractions. p_in: (N, 2, 4) and p_out: (N, n, 4) lab-frame momenta,
        GeV. weight: (N,) integrand in pb (sum over channels). channel_weights: (N, n_channels)
        pb, per ``channels`` entry (pick an event's channel with probability ∝ these).
    """

    x1: Tensor
    x2: Tensor
    p_in: Tensor
    p_out: Tensor
    weight: Tensor
    channel_weights: Tensor
    channels: tuple[tuple[int, int], ...]


@dataclass
class HadronicIntegrand:
    """σ integrand of ``process`` at a hadron collider, a function of u ∈ [0,1]^dim.

    Arguments:
        process: a registered :class:`~unfoldmem.physics.process.Process`.
        pdf: PDF set with ``xfx`` / ``alphas``.
        sqrt_s: hadronic centre-of-mass energy, GeV.
        mu_f, mu_r: fixed factorisation / renormalisation scales, GeV.
        theta: parameter values (floats or tensors; tensors keep gradients).
        alpha_s: fixed α_s overriding ``pdf.alphas(mu_r)`` (e.g. to match another program).
        cuts: generator-level cuts known to the process (e.g. ``m_ll_min``).

    Example::

        integrand = integrand_from_card(load_card("cards/processes/drell_yan.yaml"))
        point = integrand(torch.rand(1000, integrand.dim, dtype=torch.float64))
        point.weight.mean()  # ≈ σ in pb
    """

    process: Process
    pdf: PDFLike
    sqrt_s: float
    mu_f: float
    mu_r: float
    theta: Mapping[str, Any] = field(default_factory=dict)
    alpha_s: float | None = None
    cuts: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.process.check_cuts(self.cuts)
        if self.alpha_s is None and self.process.qcd:
            self.alpha_s = float(torch.as_tensor(self.pdf.alphas(self.mu_r)))

    @property
    def dim(self) -> int:
        """Number of unit-hypercube dimensions: 2 (ŝ, y) + the process phase space."""
        return 2 + self.process.dim

    def full_theta(self, theta: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
        """The process θ (defaults, then the integrand's, then ``theta``) plus α_s(μ_R)."""
        values = {**self.theta, **(theta or {})}
        return self.process.theta(values, alpha_s=self.alpha_s if self.process.qcd else None)

    def __call__(self, u: Tensor, theta: Mapping[str, Any] | None = None) -> HadronicPoint:
        """Evaluate at u (N, dim) ∈ [0, 1]; ``theta`` overrides parameter values for this call."""
        th = self.full_theta(theta)
        u = torch.as_tensor(u, dtype=torch.float64)
        s = self.sqrt_s**2
        mp = self.process.shat_mapping(th, self.cuts)
        s_min = torch.as_tensor(mp.s_min, dtype=torch.float64)
        s_max = torch.as_tensor(
            s if mp.s_max is None else min(float(mp.s_max), s), dtype=torch.float64
        )
        if mp.resonance is not None:
            shat, jac = breit_wigner_map(u[:, 0], *mp.resonance, s_min, s_max)
        else:
            log_ratio = torch.log(s_max / s_min)
            shat = s_min * torch.exp(u[:, 0] * log_ratio)
            jac = shat * log_ratio
        x1, x2, jac_y = x1x2_from_tau(shat / s, u[:, 1])
        p_cm, w_ps = self.process.phase_space(u[:, 2:], shat, th)
        p_in_cm = incoming_momenta(shat)
        beta = ((x1 - x2) / (x1 + x2))[:, None]
        zero = torch.zeros_like(beta)
        b3 = torch.cat([zero, zero, beta], -1)
        p_in = boost(p_in_cm, b3[:, None])
        p_out = boost(p_cm, b3[:, None])
        me2 = self.process.matrix_elements_by_channel(p_in, p_out, th)
        lum = self._luminosities(x1, x2)
        base = jac / s * jac_y * w_ps / (2 * shat) * GEV2_TO_PB
        # a decay at its kinematic edge can round a daughter's energy below zero: such a point
        # is outside physical phase space (weight 0), not a NaN in the spinors
        ok = (shat >= s_min) & (w_ps > 0) & (p_out[..., 0] > 0).all(-1)
        cw = torch.where(ok[:, None], lum * me2 * base[:, None], torch.zeros_like(me2))
        return HadronicPoint(x1, x2, p_in, p_out, cw.sum(-1), cw, self.process.channels)

    def weight(self, u: Tensor, theta: Mapping[str, Any] | None = None) -> Tensor:
        """Only the (N,) weight in pb."""
        return self(u, theta).weight

    def _luminosities(self, x1: Tensor, x2: Tensor) -> Tensor:
        """f_a(x1) f_b(x2) for every channel, (N, n_channels)."""
        cache: dict[tuple[int, int], Tensor] = {}

        def f(pid: int, beam: int, x: Tensor) -> Tensor:
            key = (pid, beam)
            if key not in cache:
                xf = torch.as_tensor(self.pdf.xfx(pid, x, self.mu_f), dtype=torch.float64)
                # LO fits (NNPDF3.1 LO: s, ū at x > 0.3) dip below 0; weights must stay ≥ 0
                # for unweighting and importance sampling (Pythia sets σ < 0 points to 0 too)
                cache[key] = xf.clamp_min(0.0) / x
            return cache[key]

        return torch.stack([f(a, 1, x1) * f(b, 2, x2) for a, b in self.process.channels], -1)


def integrand_from_card(
    card: Any,
    theta: Mapping[str, float] | None = None,
    pdf: PDFLike | None = None,
    source: str = "<process card>",
) -> HadronicIntegrand:
    """Build the integrand of a :class:`unfoldmem.cards.ProcessCard`.

    Arguments:
        card: the validated process card.
        theta: parameter values overriding the card's.
        pdf: an already loaded PDF set (else ``load_pdf(card.pdf, alpha_s_mz=card.alpha_s_mz)``).
        source: the card's file name, for error messages.

    Raises:
        CardError: unknown process, parameter, option or cut (naming the key).
    """
    from unfoldmem.errors import CardError

    try:
        process = get_process(card.process, **card.options)
    except KeyError as exc:
        raise CardError(source, "process", str(exc.args[0])) from exc
    except TypeError as exc:
        raise CardError(source, "options", str(exc)) from exc
    values = {**card.theta, **(theta or {})}
    try:
        process.theta(values)
    except KeyError as exc:
        raise CardError(source, "theta", str(exc.args[0])) from exc
    try:
        process.check_cuts(card.cuts)
    except KeyError as exc:
        raise CardError(source, "cuts", str(exc.args[0])) from exc
    if pdf is None:
        from unfoldmem.physics.pdf import load_pdf

        pdf = load_pdf(card.pdf, alpha_s_mz=card.alpha_s_mz)
    return HadronicIntegrand(
        process,
        pdf,
        card.sqrt_s,
        card.scale.mu_f,
        card.scale.mu_r,
        values,
        card.alpha_s,
        dict(card.cuts),
    )
