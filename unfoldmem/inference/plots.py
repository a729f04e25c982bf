r"""Plots of inference results (matplotlib Agg + mplhep): scans, contours, posteriors, pulls."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.style
import mplhep
import numpy as np
from matplotlib.figure import Figure
from scipy.stats import norm

from unfoldmem.inference.calibration import CalibrationResult
from unfoldmem.inference.fit import FitResult
from unfoldmem.inference.posterior import PosteriorResult
from unfoldmem.inference.scan import CL_68, Scan1D, Scan2D, delta_chi2
from unfoldmem.io.atomic import atomic_path

__all__ = ["plot_calibration", "plot_contour", "plot_posterior", "plot_scan"]

_COLORS = {CL_68: "tab:green", 0.95: "gold"}


def _save(fig: Figure, path: str | Path, overwrite: bool) -> Path:
    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    return path


def _label(cl: float) -> str:
    return f"{100 * cl:.0f}% CL" if cl != CL_68 else "68% CL"


def plot_scan(
    scan: Scan1D, path: str | Path, overwrite: bool = False, fit: FitResult | None = None
) -> Path:
    """−2ΔlnL points, spline, minimum and 68 %/95 % intervals of a 1D scan; saved to ``path``.

    With ``fit``, the HESSE parabola ((θ − θ̂)/σ)² and the MINOS 68 % ends are drawn over it.
    """
    with matplotlib.style.context(mplhep.style.ROOT):
        fig = Figure(figsize=(7, 5))
        ax = fig.subplots()
        x, y = scan.curve(4000)
        top = max(6.0, min(float(y.max()), 12.0))
        # zoom on the region below the top of the plot, so a wide grid still shows the minimum
        inside = np.nonzero(y <= top)[0]
        pad = 0.15 * (x[inside[-1]] - x[inside[0]])
        x_lo, x_hi = max(x[0], x[inside[0]] - pad), min(x[-1], x[inside[-1]] + pad)
        ax.plot(x, y, "-", color="tab:blue", label="cubic spline")
        ax.plot(scan.theta, scan.m2dlnl, "o", color="k", ms=4, label="grid points")
        ax.set_xlim(x_lo, x_hi)
        for cl, (lo, hi) in sorted(scan.intervals.items()):
            q = delta_chi2(cl, 1)
            ax.axhline(q, color="grey", ls=":", lw=1)
            a = scan.theta[0] if lo is None else lo
            b = scan.theta[-1] if hi is None else hi
            ax.axvspan(a, b, color=_COLORS.get(cl, "tab:orange"), alpha=0.25, label=_label(cl))
        ax.axvline(scan.theta_hat, color="tab:red", lw=1)
        if fit is not None:
            th, err = fit.value(scan.name), fit.error(scan.name)
            ax.plot(x, ((x - th) / err) ** 2, "--", color="tab:purple", label="HESSE parabola")
            lo, hi = fit.minos[scan.name].get(CL_68, (None, None))
            ends = [th + e for e in (lo, hi) if e is not None]
            ax.plot(ends, [1.0] * len(ends), "v", color="tab:purple", ms=8, label="MINOS 68%")
        ax.set_xlabel(rf"$\theta$: {scan.name}")
        ax.set_ylabel(r"$-2\Delta\ln L$")
        ax.set_ylim(0, top)
        sig = scan.sigma
        ax.set_title(rf"{scan.name} = {scan.theta_hat:.6g} $\pm$ {sig:.2g}", fontsize=14)
        ax.legend(fontsize=11, loc="upper right")
        return _save(fig, path, overwrite)


def plot_contour(scan: Scan2D, path: str | Path, overwrite: bool = False) -> Path:
    """68 %/95 % −2ΔlnL contours (2.30, 5.99) and the minimum of a 2D scan."""
    with matplotlib.style.context(mplhep.style.ROOT):
        fig = Figure(figsize=(6.5, 5.5))
        ax = fig.subplots()
        if scan.fine is not None:
            fx, fy, surf = scan.fine
            m = ax.pcolormesh(fx, fy, np.minimum(surf.T, 12.0), shading="auto", cmap="Blues_r")
            fig.colorbar(m, ax=ax, label=r"$-2\Delta\ln L$")
        for cl, lines in sorted(scan.contours.items()):
            for k, c in enumerate(lines):
                ax.plot(c[:, 0], c[:, 1], color=_COLORS.get(cl, "tab:orange"), lw=2,
                        label=_label(cl) if k == 0 else None)
        ax.plot(*scan.theta_hat, "*", color="tab:red", ms=12, label="minimum")
        ax.set_xlabel(scan.names[0])
        ax.set_ylabel(scan.names[1])
        ax.legend(fontsize=11, loc="upper right")
        return _save(fig, path, overwrite)


def plot_posterior(post: PosteriorResult, path: str | Path, overwrite: bool = False) -> Path:
    """Corner-style plot: marginal histograms with 68 %/95 % credible intervals; 2D histograms."""
    names = post.names
    p = len(names)
    summ = post.summary()
    with matplotlib.style.context(mplhep.style.ROOT):
        fig = Figure(figsize=(4 * p + 1, 4 * p + 0.5))
        axes = fig.subplots(p, p, squeeze=False)
        for i, ni in enumerate(names):
            for j, nj in enumerate(names):
                ax = axes[i, j]
                if j > i:
                    ax.axis("off")
                elif i == j:
                    ax.hist(post.samples[ni], bins=40, density=True, histtype="step", lw=2)
                    for key, col in (("ci68", "tab:green"), ("ci95", "gold")):
                        ax.axvspan(*summ[ni][key], color=col, alpha=0.2, label=key)
                    ax.set_title(rf"{ni} = {summ[ni]['mean']:.4g} $\pm$ {summ[ni]['std']:.2g}",
                                 fontsize=12)
                    ax.legend(fontsize=9, loc="upper right")
                else:
                    ax.hist2d(post.samples[nj], post.samples[ni], bins=30, cmap="Blues")
                    ax.set_ylabel(ni)
                if i == p - 1:
                    ax.set_xlabel(nj)
        return _save(fig, path, overwrite)


def plot_calibration(cal: CalibrationResult, path: str | Path, overwrite: bool = False) -> Path:
    """Pull histograms with a unit Gaussian, and interval coverage against the nominal CL."""
    names = cal.names
    summ = cal.summary()
    pulls = cal.pulls
    with matplotlib.style.context(mplhep.style.ROOT):
        fig = Figure(figsize=(12, 4.5 * len(names)))
        axes = fig.subplots(len(names), 2, squeeze=False)
        for k, n in enumerate(names):
            ax, bx = axes[k]
            s = summ[n]
            bins = np.linspace(-4, 4, 25)
            ax.hist(pulls[:, k], bins=bins, histtype="step", lw=2, label=f"{s['n_pseudo']} pseudo-exp.")
            xs = np.linspace(-4, 4, 200)
            scale = len(pulls) * (bins[1] - bins[0])
            ax.plot(xs, scale * norm.pdf(xs), "--", color="k", label="N(0, 1)")
            ax.set_xlabel(rf"pull $(\hat\theta-\theta_{{true}})/\hat\sigma$: {n}")
            ax.set_title(rf"mean {s['pull_mean']:.2f}$\pm${s['pull_mean_err']:.2f}, width "
                         rf"{s['pull_width']:.2f}$\pm${s['pull_width_err']:.2f}", fontsize=12)
            ax.legend(fontsize=10, loc="upper right")
            cls = sorted(cal.intervals)
            cov = [s[f"coverage_{cl:.4f}"] for cl in cls]
            err = [s[f"coverage_{cl:.4f}_err"] for cl in cls]
            bx.errorbar(cls, cov, yerr=err, fmt="o", color="tab:blue", label="observed")
            bx.plot([0.5, 1.0], [0.5, 1.0], "--", color="k", label="nominal")
            bx.set_xlabel("nominal CL")
            bx.set_ylabel("coverage")
            bx.set_xlim(0.5, 1.0)
            bx.set_ylim(0.5, 1.0 + 0.02 * math.sqrt(len(names)))
            bx.legend(fontsize=10, loc="upper left")
        return _save(fig, path, overwrite)
