r"""Hadronic cross sections σ ± MC error by adaptive VEGAS integration of the hadronic integrand.

References:
    G. P. Lepage, J. Comput. Phys. 27 (1978) 192; J. Comput. Phys. 439 (2021) 110386,
    arXiv:2009.05112 (the ``vegas`` package).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import vegas

from unfoldmem.physics.hadronic import HadronicIntegrand

__all__ = ["XsecResult", "cross_section"]


@dataclass(frozen=True)
class XsecResult:
    """A VEGAS cross section.

    Attributes:
        sigma, error: σ and its MC standard error, pb. chi2_dof, q: consistency of the final
        iterations (χ²/dof and its p-value). neval, nitn: points per iteration, final iterations.
    """

    sigma: float
    error: float
    chi2_dof: float
    q: float
    neval: int
    nitn: int

    def __str__(self) -> str:
        return f"{self.sigma:.6g} ± {self.error:.2g} pb"


def cross_section(
    integrand: HadronicIntegrand,
    neval: int = 20000,
    nitn_adapt: int = 8,
    nitn: int = 10,
    seed: int | None = 0,
    theta: Mapping[str, Any] | None = None,
    chunk: int = 50000,
) -> XsecResult:
    r"""σ of ``integrand`` in pb: ``nitn_adapt`` VEGAS iterations to adapt the grid (discarded),
    then ``nitn`` iterations on the frozen grid whose weighted average is the estimate.

    Arguments:
        integrand: the hadronic integrand (see :mod:`unfoldmem.physics.hadronic`).
        neval: points per iteration (about).
        nitn_adapt, nitn: adaptation / final iterations.
        seed: seed of the random numbers (``None``: vegas' own generator).
        theta: parameter values overriding the integrand's.
        chunk: points per integrand call (memory bound).
    """
    integ = vegas.Integrator([[0.0, 1.0]] * integrand.dim)
    if seed is not None:
        rng = np.random.default_rng(seed)
        integ.set(ran_array_generator=lambda size: rng.random(size))

    @vegas.lbatchintegrand
    def f(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            u = torch.from_numpy(np.ascontiguousarray(x))
            out = [integrand.weight(u[i : i + chunk], theta) for i in range(0, len(u), chunk)]
            return torch.cat(out).numpy()

    integ(f, nitn=nitn_adapt, neval=neval)
    result = integ(f, nitn=nitn, neval=neval, adapt=False)
    return XsecResult(
        float(result.mean),
        float(result.sdev),
        float(result.chi2 / result.dof) if result.dof > 0 else 0.0,
        float(result.Q) if result.dof > 0 else 1.0,
        neval,
        nitn,
    )
