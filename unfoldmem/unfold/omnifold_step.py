r"""One OmniFold step: train a classifier, rescale its likelihood ratio, check the weights.

The pieces every step of :func:`unfoldmem.unfold.omnifold_iteration.omnifold` shares: the
trainer interface, :func:`ratio_step` (ratio of one or several classifier seeds, with the sum
rule) and the per-iteration weight checks that mark an iteration diverged.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from unfoldmem.unfold.classifier import ClassifierConfig, EventFeatures
from unfoldmem.unfold.omnifold_config import OmniFoldConfig
from unfoldmem.weights import WeightError, WeightWarning, check_weights

__all__ = ["Trainer", "check_step_weights", "mean_shift", "n_clipped", "ratio_step"]

# the public module's logger, so that a filter set on it still sees every OmniFold message
log = logging.getLogger("unfoldmem.unfold.omnifold")


class _Ratio(Protocol):
    def likelihood_ratio(
        self, f: EventFeatures, *, normalized: bool = True
    ) -> tuple[Tensor, dict[str, Any]]: ...


Trainer = Callable[[EventFeatures, EventFeatures, Tensor, Tensor, ClassifierConfig], _Ratio]


def ratio_step(
    name: str,
    trainer: Trainer,
    x0: EventFeatures,
    w0: Tensor,
    x1: EventFeatures,
    w1: Tensor,
    apply_to: EventFeatures,
    cfg: ClassifierConfig,
    record: dict[str, Any],
    n_models: int = 1,
    sum_rule: bool = True,
) -> Tensor:
    r"""Likelihood ratio :math:`L[(w_1, x_1), (w_0, x_0)]` evaluated on ``apply_to``.

    Arguments:
        name: key of this step in ``record`` (``step1``, ``step2b``, ...).
        trainer: ``train_classifier``-like callable.
        x0, w0: (n_0) class-0 sample (the one reweighted) and its (n_0,) weights.
        x1, w1: (n_1) class-1 sample (the target) and its (n_1,) weights.
        apply_to: (m) events the ratio is evaluated on.
        cfg: classifier settings; member ``j`` of the ensemble adds ``100003 j`` to the seed.
        record: filled in place with ``record[name]`` (sizes, clipping, best epochs,
            validation losses, sum-rule factor).
        n_models: classifiers averaged (``step_ensemble``).
        sum_rule: rescale the mean ratio so that :math:`\sum_0 w_0 r = \sum_1 w_1`.

    Returns:
        (m,) float64 unnormalised ratio, the sum-rule factor applied.
    """
    ratio = torch.zeros(len(apply_to), dtype=torch.float64)
    on_x0 = torch.zeros(len(x0), dtype=torch.float64)
    clips: dict[str, Any] = {}
    best, vals = [], []
    for j in range(n_models):
        clf = trainer(x0, x1, w0, w1, cfg.model_copy(update={"seed": cfg.seed + 100_003 * j}))
        r, clip = clf.likelihood_ratio(apply_to, normalized=False)
        ratio += r.to(torch.float64) / n_models
        if sum_rule:
            r0 = r if apply_to is x0 else clf.likelihood_ratio(x0, normalized=False)[0]
            on_x0 += r0.to(torch.float64) / n_models
        for key, v in clip.items():
            if key.startswith("n_"):
                clips[key] = clips.get(key, 0) + v
            else:
                clips[key] = v if key not in clips else (min if key == "p_min" else max)(
                    clips[key], v
                )
        hist = getattr(clf, "history", {})
        best.append(hist.get("best_epoch"))
        vals.append(_best_val(hist))
    factor = 1.0
    if sum_rule:
        # E_0[r] = Σw1/Σw0 holds for the exact ratio; the classifier's calibration error does not
        den = float((w0.double() * on_x0).sum())
        factor = float(w1.double().sum()) / den if den > 0 and np.isfinite(den) else 1.0
    record[name] = {
        "n_train": [len(x0), len(x1)],
        "clipping": clips,
        "best_epoch": best[0] if n_models == 1 else best,
        "val_loss": vals[0] if n_models == 1 else vals,
        "sum_rule_factor": factor,
    }
    return ratio * factor


def _best_val(hist: dict[str, Any]) -> float | None:
    losses, best = hist.get("val_loss") or [], hist.get("best_epoch")
    return losses[best] if best is not None and 0 <= best < len(losses) else None


def check_step_weights(
    name: str, weights: Tensor, clip_n: int, n: int, config: OmniFoldConfig, reasons: list[str]
) -> dict[str, Any]:
    """Weight diagnostics of one pull or push, and its fraction of clipped probabilities.

    Every violation is appended to ``reasons`` (the iteration then counts as diverged).

    Raises:
        WeightError: a threshold is crossed and ``config.diagnostics.on_violation`` is ``error``.
    """
    d = check_weights(weights, config.diagnostics, name=name)
    reasons.extend(d["violations"])
    frac = clip_n / max(n, 1)
    d["clipped_fraction"] = frac
    if frac > config.clip_fraction_max:
        msg = f"{name}: {frac:.3g} of classifier probabilities clipped (> {config.clip_fraction_max:g})"
        reasons.append(msg)
        if config.diagnostics.on_violation == "error":
            raise WeightError(msg)
        log.warning(msg)
        warnings.warn(msg, WeightWarning, stacklevel=3)
    return d


def mean_shift(x: Tensor, a: Tensor, b: Tensor) -> float:
    """Largest |<x>_a - <x>_b| over the columns of x (n, d), in units of the b-weighted std."""
    x = x.double()
    ma = (a[:, None] * x).sum(0) / a.sum()
    mb = (b[:, None] * x).sum(0) / b.sum()
    sd = ((b[:, None] * (x - mb) ** 2).sum(0) / b.sum()).sqrt().clamp_min(1e-12)
    return float(((ma - mb).abs() / sd).max())


def n_clipped(rec: dict[str, Any]) -> int:
    """Classifier probabilities clipped or non-finite in the step record ``rec``."""
    c = rec["clipping"]
    return c["n_clipped_low"] + c["n_clipped_high"] + c["n_nonfinite_p"]
