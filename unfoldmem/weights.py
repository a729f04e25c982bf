r"""Event-weight diagnostics: non-finite count, Kish effective sample size, largest share, negatives.

Shared by OmniFold iterations, MEM importance weights and iterative cINN reweighting. A bad
weight is reported (log, warning or :class:`WeightError`), never repaired: there is no
``nan_to_num`` anywhere on a weight in unfoldmem.

References:
    L. Kish, *Survey Sampling*, Wiley (1965): effective sample size
    :math:`N_\mathrm{eff} = (\sum_i w_i)^2 / \sum_i w_i^2`.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from unfoldmem.cards.base import StrictModel
from unfoldmem.errors import WeightError

__all__ = [
    "WeightDiagnosticsConfig",
    "WeightError",
    "WeightWarning",
    "weight_diagnostics",
    "check_weights",
    "weighted_mean_std",
]

log = logging.getLogger(__name__)


class WeightWarning(UserWarning):
    """Warned when weights cross a diagnostic threshold and ``on_violation`` is ``warn``."""


class WeightDiagnosticsConfig(StrictModel):
    """Thresholds for :func:`check_weights` (a card section; extra keys are refused).

    Arguments:
        ess_ratio_min: smallest acceptable Kish :math:`N_\\mathrm{eff}/N`.
        max_share_max: largest acceptable :math:`\\max_i |w_i| / \\sum_i |w_i|`.
        negative_fraction_max: largest acceptable fraction of events with :math:`w_i < 0`.
        on_violation: ``warn`` (log + :class:`WeightWarning`) or ``error`` (:class:`WeightError`).
    """

    ess_ratio_min: float = Field(0.05, ge=0.0, le=1.0)
    max_share_max: float = Field(0.05, gt=0.0, le=1.0)
    negative_fraction_max: float = Field(0.5, ge=0.0, le=1.0)
    on_violation: Literal["warn", "error"] = "warn"


def _as_numpy(weights: Any) -> np.ndarray:
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().to(torch.float64).numpy()
    return np.asarray(weights, dtype=np.float64).reshape(-1)


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def weight_diagnostics(weights: Any) -> dict[str, Any]:
    """Summary figures of a set of event weights, ready for ``summary.json``.

    Figures other than ``n`` and ``n_nonfinite`` are computed on the finite weights only; a
    figure that is undefined (no finite weight, zero sum) is ``None``.

    Arguments:
        weights: (n,) array or tensor of weights (any sign).

    Returns:
        dict with ``n``, ``n_nonfinite``, ``sum``, ``ess`` (Kish), ``ess_ratio`` (ess / n),
        ``max_share`` (max|w| / Σ|w|), ``negative_fraction`` (events with w < 0),
        ``negative_sum_fraction`` (Σ_{w<0}|w| / Σ|w|), ``min``, ``max``.

    Example:
        >>> d = weight_diagnostics([1.0, 1.0, 2.0, float("nan")])
        >>> d["n_nonfinite"], round(d["ess"], 3)
        (1, 2.667)
    """
    w = _as_numpy(weights)
    finite = np.isfinite(w)
    wf = w[finite]
    n = int(w.size)
    out: dict[str, Any] = {"n": n, "n_nonfinite": int(n - finite.sum())}
    total = float(wf.sum()) if wf.size else math.nan
    sum_sq = float(np.square(wf).sum()) if wf.size else math.nan
    sum_abs = float(np.abs(wf).sum()) if wf.size else math.nan
    ess = total * total / sum_sq if wf.size and sum_sq > 0 else math.nan
    out["sum"] = _json_float(total)
    out["ess"] = _json_float(ess)
    out["ess_ratio"] = _json_float(ess / n) if n else None
    share = float(np.abs(wf).max()) / sum_abs if wf.size and sum_abs > 0 else math.nan
    out["max_share"] = _json_float(share)
    out["negative_fraction"] = float((wf < 0).sum() / n) if n else None
    neg = float(np.abs(wf[wf < 0]).sum()) / sum_abs if wf.size and sum_abs > 0 else math.nan
    out["negative_sum_fraction"] = _json_float(neg)
    out["min"] = _json_float(float(wf.min())) if wf.size else None
    out["max"] = _json_float(float(wf.max())) if wf.size else None
    return out


def _violations(d: dict[str, Any], config: WeightDiagnosticsConfig) -> list[str]:
    v: list[str] = []
    if d["n_nonfinite"]:
        v.append(f"{d['n_nonfinite']} non-finite weight(s) of {d['n']}")
    if d["ess_ratio"] is None:
        v.append("effective sample size undefined (no finite weight or zero sum of squares)")
    elif d["ess_ratio"] < config.ess_ratio_min:
        v.append(f"ESS/N = {d['ess_ratio']:.3g} < ess_ratio_min = {config.ess_ratio_min:g}")
    if d["max_share"] is None:
        v.append("largest-weight share undefined (zero sum of |w|)")
    elif d["max_share"] > config.max_share_max:
        v.append(f"max share = {d['max_share']:.3g} > max_share_max = {config.max_share_max:g}")
    if d["negative_fraction"] is not None and d["negative_fraction"] > config.negative_fraction_max:
        v.append(
            f"negative fraction = {d['negative_fraction']:.3g} > "
            f"negative_fraction_max = {config.negative_fraction_max:g}"
        )
    return v


def check_weights(
    weights: Any,
    config: WeightDiagnosticsConfig | None = None,
    *,
    name: str = "weights",
) -> dict[str, Any]:
    """Diagnose ``weights``, log the figures, and warn or raise when a threshold is crossed.

    Arguments:
        weights: (n,) array or tensor of weights.
        config: thresholds and policy; defaults of :class:`WeightDiagnosticsConfig` if ``None``.
        name: label used in the log, warning and error messages (e.g. ``"omnifold.iter2.push"``).

    Returns:
        :func:`weight_diagnostics` plus ``name``, ``violations`` (list of messages) and ``ok``.

    Raises:
        WeightError: a threshold is crossed and ``config.on_violation == "error"``.
    """
    config = config or WeightDiagnosticsConfig()
    d = weight_diagnostics(weights)
    v = _violations(d, config)
    d.update(name=name, violations=v, ok=not v)
    log.info(
        "%s: n=%d nonfinite=%d ess/n=%s max_share=%s neg=%s",
        name,
        d["n"],
        d["n_nonfinite"],
        d["ess_ratio"],
        d["max_share"],
        d["negative_fraction"],
    )
    if v:
        msg = f"{name}: " + "; ".join(v)
        if config.on_violation == "error":
            raise WeightError(msg)
        log.warning(msg)
        warnings.warn(msg, WeightWarning, stacklevel=2)
    return d


def weighted_mean_std(values: Any, weights: Any) -> dict[str, float]:
    """Weighted mean and standard deviation with their statistical errors.

    The errors are the large-sample (delta-method) errors of the ratio estimators for weighted
    events, so they hold for negative weights and unequal weights:
    :math:`\\mathrm{Var}(\\hat\\mu) = \\sum_i w_i^2 (x_i-\\hat\\mu)^2 / (\\sum_i w_i)^2` and the same
    for :math:`\\hat\\sigma^2` with :math:`(x_i-\\hat\\mu)^2 - \\hat\\sigma^2`, then
    :math:`\\delta\\hat\\sigma = \\delta\\hat\\sigma^2 / (2\\hat\\sigma)`.

    Arguments:
        values: (n,) observable values.
        weights: (n,) event weights.

    Returns:
        dict with ``mean``, ``mean_err``, ``std``, ``std_err``.
    """
    x, w = _as_numpy(values), _as_numpy(weights)
    sw = w.sum()
    mu = float((w * x).sum() / sw)
    dx2 = (x - mu) ** 2
    var = float((w * dx2).sum() / sw)
    mean_err = math.sqrt(float((w**2 * dx2).sum()) / sw**2)
    var_err = math.sqrt(float((w**2 * (dx2 - var) ** 2).sum()) / sw**2)
    std = math.sqrt(var)
    return {"mean": mu, "mean_err": mean_err, "std": std, "std_err": var_err / (2 * std)}
