r"""Standard-Model parameters: electroweak inputs and schemes, CKM, QCD colour factors, LO widths.

Electroweak schemes used by the processes (stated per process in ``docs/processes.md``):

* **α(m_Z) scheme** (Drell–Yan, W → ℓν): inputs α(m_Z), sin²θ_W, m_Z, m_W;
  :math:`e^2 = 4\pi\alpha`, :math:`g_W = e/s_W`, :math:`g_Z = e/(s_W c_W)`. This is what Pythia 8
  uses in ``WeakSingleBoson`` processes with ``SigmaProcess:alphaEMorder = -1``.
* **G_μ scheme** (top decays): inputs G_F, m_W; :math:`g_W^2 = 4\sqrt2\,G_F m_W^2`, so that the LO
  top width takes its textbook form.

CKM: diagonal (:data:`CKM_DIAGONAL`) in top decays; W production uses Pythia's default
matrix (:data:`CKM_PDG`) unless asked for the diagonal one.

References:
    Particle Data Group, R. L. Workman et al., PTEP 2022 (2022) 083C01 (input values).
    M. Jeżabek, J. H. Kühn, Nucl. Phys. B314 (1989) 1 (LO top width).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "CA",
    "CF",
    "CKM",
    "CKM_DIAGONAL",
    "CKM_PDG",
    "GEV2_TO_PB",
    "NC",
    "TR",
    "EWParams",
    "EW_DEFAULTS",
    "charge",
    "ckm",
    "z_couplings",
    "top_width_lo",
    "w_width_lnu_gmu",
    "w_width_lnu_alpha",
]

#: QCD colour factors for SU(3): number of colours, C_F, C_A, T_R.
NC = 3.0
CF = 4.0 / 3.0
CA = 3.0
TR = 0.5

#: (ħc)² in pb GeV²: converts a cross section in GeV⁻² into pb.
GEV2_TO_PB = 0.3893794e9

#: |V_ij| indexed by (up-type |PDG|, down-type |PDG|): the unit matrix (used for top decays).
CKM_DIAGONAL: dict[tuple[int, int], float] = {
    (2, 1): 1.0, (2, 3): 0.0, (2, 5): 0.0,
    (4, 1): 0.0, (4, 3): 1.0, (4, 5): 0.0,
    (6, 1): 0.0, (6, 3): 0.0, (6, 5): 1.0,
}  # fmt: skip

#: |V_ij| of Pythia 8.317's ``StandardModel:V..`` defaults (PDG 2006); Pythia cannot be set to
#: a diagonal CKM, so W production uses this one to compare with it.
CKM_PDG: dict[tuple[int, int], float] = {
    (2, 1): 0.97383, (2, 3): 0.2272, (2, 5): 0.00396,
    (4, 1): 0.2271, (4, 3): 0.97296, (4, 5): 0.04221,
    (6, 1): 0.00814, (6, 3): 0.04161, (6, 5): 0.9991,
}  # fmt: skip

CKM = {"diagonal": CKM_DIAGONAL, "pdg": CKM_PDG}


def ckm(up: int, down: int, matrix: str = "diagonal") -> float:
    """|V_ij| of ``matrix`` ("diagonal" or "pdg") for an up- and a down-type quark (signs ignored)."""
    return CKM[matrix].get((abs(up), abs(down)), 0.0)


@dataclass(frozen=True)
class EWParams:
    """Electroweak inputs (GeV). Defaults equal Pythia 8.317's so that LO comparisons are exact."""

    alpha_mz: float = 0.00781751  # α(m_Z) = 1/127.918, Pythia StandardModel:alphaEMmZ
    sin2w: float = 0.2312  # Pythia StandardModel:sin2thetaW (= sin2thetaWbar in our runs)
    m_z: float = 91.1876
    gamma_z: float = 2.4952
    m_w: float = 80.385
    gamma_w: float = 2.085
    g_fermi: float = 1.1663787e-5  # GeV⁻²


EW_DEFAULTS = EWParams()

_T3 = {1: -0.5, 2: 0.5, 3: -0.5, 4: 0.5, 5: -0.5, 6: 0.5, 11: -0.5, 12: 0.5, 13: -0.5, 14: 0.5}
_Q = {1: -1 / 3, 2: 2 / 3, 3: -1 / 3, 4: 2 / 3, 5: -1 / 3, 6: 2 / 3, 11: -1.0, 12: 0.0, 13: -1.0, 14: 0.0}  # fmt: skip


def charge(pid: int) -> float:
    """Electric charge of a quark or lepton PDG id (sign of the id flips it), units of e."""
    q = _Q[abs(pid)]
    return q if pid > 0 else -q


def z_couplings(pid: int, alpha: Tensor | float, sin2w: Tensor | float) -> tuple[Tensor, Tensor]:
    r"""Left/right Z couplings :math:`g_{L,R}` of the fermion ``pid`` in the vertex
    :math:`i\gamma^\mu (g_L P_L + g_R P_R)`.

    :math:`g_L = g_Z (T_3 - Q s_W^2)`, :math:`g_R = -g_Z Q s_W^2`, :math:`g_Z = e/(s_W c_W)`, with
    the photon vertex :math:`i e Q \gamma^\mu` (Peskin & Schroeder eq. (20.80) conventions).

    Arguments:
        pid: PDG id of the fermion (particle).
        alpha: α at the scale used (scalar or (N,)).
        sin2w: sin²θ_W.
    """
    a = torch.as_tensor(alpha, dtype=torch.float64)
    s2 = torch.as_tensor(sin2w, dtype=torch.float64)
    gz = torch.sqrt(4 * math.pi * a / (s2 * (1 - s2)))
    t3, q = _T3[abs(pid)], _Q[abs(pid)]
    return gz * (t3 - q * s2), -gz * q * s2


def top_width_lo(
    m_t: Tensor, m_w: float = EW_DEFAULTS.m_w, g_fermi: float = EW_DEFAULTS.g_fermi
) -> Tensor:
    r"""LO width Γ(t → b W) in GeV for m_b = 0, |V_tb| = 1 (G_μ scheme).

    :math:`\Gamma_t = \frac{G_F m_t^3}{8\pi\sqrt2}(1-x)^2(1+2x)`, :math:`x = m_W^2/m_t^2`.

    References:
        M. Jeżabek, J. H. Kühn, Nucl. Phys. B314 (1989) 1, eq. (1) at α_s = 0.
    """
    m_t = torch.as_tensor(m_t, dtype=torch.float64)
    x = m_w**2 / m_t**2
    return g_fermi * m_t**3 / (8 * math.pi * math.sqrt(2)) * (1 - x) ** 2 * (1 + 2 * x)


def w_width_lnu_gmu(m_w: Tensor | float, g_fermi: float = EW_DEFAULTS.g_fermi) -> Tensor:
    r"""LO partial width Γ(W → ℓν) = :math:`G_F m_W^3/(6\pi\sqrt2)` in GeV (G_μ scheme)."""
    m_w = torch.as_tensor(m_w, dtype=torch.float64)
    return g_fermi * m_w**3 / (6 * math.pi * math.sqrt(2))


def w_width_lnu_alpha(
    m_w: Tensor | float, alpha: float = EW_DEFAULTS.alpha_mz, sin2w: float = EW_DEFAULTS.sin2w
) -> Tensor:
    r"""LO partial width Γ(W → ℓν) = :math:`\alpha m_W/(12 s_W^2)` in GeV (α(m_Z) scheme)."""
    m_w = torch.as_tensor(m_w, dtype=torch.float64)
    return alpha * m_w / (12 * sin2w)
