r"""The MEM normalisation σ_fid(θ) = ∫ dσ(p; θ) ε(p): reweighting one simulated sample, or a θ grid.

Reweighting (weighted events, negative weights allowed). A sample generated at θ₀ with event
weights :math:`w_i` (any normalisation), parton momenta, the incoming-parton channel
:math:`c_i` and the reco selection flag :math:`\text{pass}_i` gives

.. math:: \sigma_{\rm fid}(\theta) = \sigma_{\rm tot}(\theta_0)\,
    \frac{\sum_i w_i\, r_i(\theta)\,\text{pass}_i}{\sum_i w_i},\qquad
    r_i = \frac{|M_{c_i}(p_i;\theta)|^2}{|M_{c_i}(p_i;\theta_0)|^2}

(the PDFs and the phase-space density cancel in :math:`r_i`), with the delta-method error of the
ratio :math:`\operatorname{Var} = \sum_i (y_i - R x_i)^2/(\sum_i x_i)^2`,
:math:`y_i = w_i r_i \text{pass}_i`, :math:`x_i = w_i`, combined with the error of
:math:`\sigma_{\rm tot}`. It is exact in θ and differentiable through |M|², but valid only
where the θ₀ sample covers the θ phase space (e.g. not beyond a θ-dependent generator window).

Grid: values :math:`\log\sigma_{\rm fid}(\theta_k) \pm \delta_k` at K points of one parameter are
fitted by a weighted least-squares polynomial (degree ≤ 3) in the standardised parameter; value
and error (from the fit covariance) are smooth and differentiable in θ.

References:
    | J. Alwall et al., "MadWeight" (normalisation by reweighting), arXiv:1010.2263
    | S. Brochet et al., MoMEMta, Eur. Phys. J. C 79 (2019) 126, arXiv:1805.08555
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["GridNormalisation", "ReweightNormalisation"]


class ReweightNormalisation:
    """σ_fid(θ) in pb by |M(θ)|²/|M(θ₀)|² reweighting of one simulated sample.

    Arguments:
        process: the :class:`~unfoldmem.physics.process.Process` (|M|² per channel).
        p_in: (N, 2, 4) and p_out: (N, n, 4) momenta (any common frame), GeV.
        channel: (N,) index into ``process.channels`` of each event's incoming partons.
        weight: (N,) event weights (may be negative). passed: (N,) bool reco selection.
        theta0: the parameters the sample was generated with (``process.theta`` fills defaults).
        sigma_tot, sigma_tot_err: σ of the generated sample at θ₀ in pb; ``None`` means the
            weights are in pb (σ_tot = Σw, its error from the weights).
        alpha_s: α_s used in |M|² (QCD processes).
    """

    def __init__(self, process: Any, p_in: Tensor, p_out: Tensor, channel: Tensor,
                 weight: Tensor, passed: Tensor, theta0: Mapping[str, Any],
                 sigma_tot: float | None = None, sigma_tot_err: float = 0.0,
                 alpha_s: float | None = None) -> None:
        self.process = process
        self.alpha_s = alpha_s
        self.p_in, self.p_out = p_in.double(), p_out.double()
        self.channel = torch.as_tensor(channel, dtype=torch.long)
        self.weight = torch.as_tensor(weight, dtype=torch.float64)
        self.passed = torch.as_tensor(passed, dtype=torch.bool)
        self.theta0 = dict(theta0)
        wsum = self.weight.sum()
        if sigma_tot is None:
            self.sigma_tot = float(wsum)
            self.sigma_tot_err = float(torch.sqrt((self.weight**2).sum()))
            self.scale = 1.0
        else:
            self.sigma_tot, self.sigma_tot_err = float(sigma_tot), float(sigma_tot_err)
            self.scale = self.sigma_tot / float(wsum)
        with torch.no_grad():
            self.me0 = self._me2(self.theta0)

    def _me2(self, theta: Mapping[str, Any]) -> Tensor:
        th = self.process.theta(theta, alpha_s=self.alpha_s if self.process.qcd else None)
        me = self.process.matrix_elements_by_channel(self.p_in, self.p_out, th)
        return me.gather(-1, self.channel[:, None])[:, 0]

    def sigma_fid(self, theta: Mapping[str, Any] | None = None) -> tuple[Tensor, Tensor]:
        """σ_fid(θ) and its error, pb; differentiable in tensor entries of ``theta``."""
        theta = {**self.theta0, **dict(theta or {})}
        r = torch.where(self.me0 > 0, self._me2(theta) / torch.where(self.me0 > 0, self.me0, 1.0),
                        0.0)
        y = self.weight * r * self.passed
        x = self.weight
        if self.scale == 1.0 and self.sigma_tot == float(x.sum()):
            # Weights in pb: σ_fid = Σ y with the plain weighted-sum error.
            val = y.sum()
            return val, torch.sqrt((y**2).sum())
        ratio = y.sum() / x.sum()
        var = ((y - ratio * x) ** 2).sum() / x.sum() ** 2
        val = self.sigma_tot * ratio
        rel2 = var / ratio**2 + (self.sigma_tot_err / self.sigma_tot) ** 2
        return val, val.abs() * torch.sqrt(rel2)

    def log_sigma_fid(self, theta: Mapping[str, Any] | None = None) -> tuple[Tensor, Tensor]:
        """log σ_fid(θ) (pb) and its error (delta method)."""
        val, err = self.sigma_fid(theta)
        return torch.log(val), err / val.abs()

    @classmethod
    def from_partons(cls, process: Any, partons: Any, sigma_tot: float | None = None,
                     sigma_tot_err: float = 0.0, alpha_s: float | None = None,
                     theta0: Mapping[str, float] | None = None) -> ReweightNormalisation:
        """From parton records (io layout: ``x1, x2, id1, id2, partons, pass_reco, weight,
        theta``); the outgoing partons are the entries with the process's final-state ids."""
        import awkward as ak
        import numpy as np

        from unfoldmem.simulate.detector import partons_to_tensors

        mom, pdg = partons_to_tensors(partons)
        fs = torch.as_tensor(process.final_state)
        rows = []
        for i in range(len(fs)):
            hit = (pdg == fs[i]).double().argmax(-1)  # first parton with that id
            rows.append(hit)
        idx = torch.stack(rows, -1)
        p_out = torch.gather(mom, 1, idx[..., None].expand(*idx.shape, 4))
        ids = np.stack([ak.to_numpy(partons.id1), ak.to_numpy(partons.id2)], -1)
        chans = {c: k for k, c in enumerate(process.channels)}
        missing = {tuple(r) for r in ids.tolist()} - set(chans)
        if missing:
            msg = f"incoming partons {sorted(missing)} are not channels of '{process.name}'"
            raise ValueError(msg)
        channel = torch.tensor([chans[tuple(r)] for r in ids.tolist()])
        x1 = torch.from_numpy(ak.to_numpy(partons.x1).astype(np.float64))
        x2 = torch.from_numpy(ak.to_numpy(partons.x2).astype(np.float64))
        tot = p_out.sum(1)
        rs = torch.sqrt((tot[:, 0] + tot[:, 3]) / x1 * (tot[:, 0] - tot[:, 3]) / x2)
        z = torch.zeros_like(x1)
        p_in = torch.stack([torch.stack([x1 * rs / 2, z, z, x1 * rs / 2], -1),
                            torch.stack([x2 * rs / 2, z, z, -x2 * rs / 2], -1)], 1)
        if theta0 is None:
            theta0 = {k: float(ak.to_numpy(partons.theta[k])[0]) for k in partons.theta.fields}
        weight = torch.from_numpy(ak.to_numpy(partons.weight).astype(np.float64))
        passed = torch.from_numpy(ak.to_numpy(partons.pass_reco).astype(bool))
        return cls(process, p_in, p_out, channel, weight, passed, theta0, sigma_tot,
                   sigma_tot_err, alpha_s)


class GridNormalisation:
    """Smooth log σ_fid(θ) of one parameter from values on a grid, with its error.

    Arguments:
        name: the parameter. theta: (K,) grid values. log_sigma: (K,) log σ_fid (pb).
        log_sigma_err: (K,) errors (> 0). degree: polynomial degree (default min(K − 1, 3)).
    """

    def __init__(self, name: str, theta: Tensor, log_sigma: Tensor, log_sigma_err: Tensor,
                 degree: int | None = None) -> None:
        self.name = name
        t = torch.as_tensor(theta, dtype=torch.float64)
        y = torch.as_tensor(log_sigma, dtype=torch.float64)
        e = torch.as_tensor(log_sigma_err, dtype=torch.float64)
        if t.numel() < 1 or bool((e <= 0).any()):
            msg = "GridNormalisation needs >= 1 grid point and positive errors"
            raise ValueError(msg)
        self.degree = min(t.numel() - 1, 3) if degree is None else degree
        self.mu, self.sd = t.mean(), t.std() if t.numel() > 1 else torch.tensor(1.0)
        a = self._basis(t) / e[:, None]
        cov = torch.linalg.inv(a.T @ a)
        self.coef = cov @ a.T @ (y / e)
        self.cov = cov
        self.chi2 = float(((a @ self.coef - y / e) ** 2).sum())

    def _basis(self, t: Tensor) -> Tensor:
        x = (t - self.mu) / self.sd
        return torch.stack([x**k for k in range(self.degree + 1)], -1)

    def log_sigma_fid(self, theta: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """log σ_fid and its fit error at ``theta[name]`` (scalar or (M,) tensor)."""
        t = torch.as_tensor(theta[self.name], dtype=torch.float64)
        b = self._basis(t)
        val = b @ self.coef
        err = torch.sqrt(((b @ self.cov) * b).sum(-1).clamp(min=0))
        return val, err

