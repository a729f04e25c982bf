r"""Example of a user process: a heavy vector Z' with vector couplings, q q̄ → Z' → μ⁻μ⁺.

Import this module (or put its class in your own package) and the process is available by name::

    import examples.my_process  # registers "zprime_mumu"
    from unfoldmem.physics.process import get_process
    proc = get_process("zprime_mumu")

A process card then only needs ``process: zprime_mumu``; ``unfoldmem xsec`` loads a user module
given with ``--module examples/my_process.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor

from unfoldmem.physics import helas as h
from unfoldmem.physics.phase_space import two_body_decay
from unfoldmem.physics.process import Parameter, Process, ShatMapping, register_process

__all__ = ["ZPrimeMuMu"]


@register_process
class ZPrimeMuMu(Process):
    r""":math:`q\bar q \to Z' \to \mu^-\mu^+` with a universal vector coupling :math:`g_{Z'}`:
    vertex :math:`i g_{Z'}\gamma^\mu`, fixed-width propagator. θ: m_zp, gamma_zp (GeV), g_zp."""

    name = "zprime_mumu"
    final_state = (13, -13)
    channels = tuple(c for q in (1, 2, 3, 4, 5) for c in ((q, -q), (-q, q)))
    parameters: ClassVar[dict[str, Parameter]] = {
        "m_zp": Parameter(2000.0, "GeV", "Z' mass"),
        "gamma_zp": Parameter(60.0, "GeV", "Z' width"),
        "g_zp": Parameter(0.2, "1", "Z' vector coupling to all fermions"),
    }
    dim = 2
    cut_keys = ("m_ll_min", "m_ll_max")

    def matrix_element_squared(
        self, p_in: Tensor, p_out: Tensor, theta: Mapping[str, Tensor], channel: tuple[int, int]
    ) -> Tensor:
        """|M|² averaged over 4 spins and 9 colours (colour sum 3)."""
        iq = 0 if channel[0] > 0 else 1
        pq, pqb = p_in[:, iq], p_in[:, 1 - iq]
        g = theta["g_zp"]
        total = torch.zeros(p_in.shape[0], dtype=torch.float64)
        for hq in (1, -1):
            zp = h.vector_offshell(
                h.spinor_vbar(pqb, 0.0, -hq), h.spinor_u(pq, 0.0, hq), g, g,
                pq + pqb, theta["m_zp"], theta["gamma_zp"],
            )
            for hl in (1, -1):
                amp = h.ffv_amplitude(
                    h.spinor_ubar(p_out[:, 0], 0.0, hl), h.spinor_v(p_out[:, 1], 0.0, -hl), zp, g, g
                )
                total = total + amp.real**2 + amp.imag**2
        return total / 12.0

    def phase_space(
        self, u: Tensor, shat: Tensor, theta: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """μ⁻μ⁺ isotropic in the partonic rest frame."""
        z = torch.zeros_like(shat)
        p1, p2, w = two_body_decay(torch.stack([shat.sqrt(), z, z, z], -1), 0.0, 0.0, u)
        return torch.stack([p1, p2], 1), w

    def shat_mapping(
        self, theta: Mapping[str, Tensor], cuts: Mapping[str, float] | None = None
    ) -> ShatMapping:
        """Breit–Wigner in m_ll² around the Z' (default window m ± 10 Γ)."""
        cuts = dict(cuts or {})
        self.check_cuts(cuts)
        m, w = float(theta["m_zp"]), float(theta["gamma_zp"])
        lo = cuts.get("m_ll_min", max(m - 10 * w, 1.0))
        hi = cuts.get("m_ll_max", m + 10 * w)
        return ShatMapping(lo**2, hi**2, (theta["m_zp"], theta["gamma_zp"]))
