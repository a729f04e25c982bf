r"""Unfolded histograms with uncertainty bands, truth comparison, mplhep plots and ``summary.json``.

From the observables of the posterior samples (:class:`~unfoldmem.unfold.cinn_unfold.ObservableSamples`)
this module builds one :class:`~unfoldmem.unfold.uncertainty.UnfoldedHist` per observable
(bootstrap + model band, acceptance-corrected as asked), the truth histograms when the data file
has a parton tree, the closure figures

.. math:: \chi^2 = \sum_i \frac{(\hat N_i - N^{\text{true}}_i)^2}
    {\sigma_{\text{tot},i}^2 + \sigma_{\text{true},i}^2},\qquad \text{ndf} = \#\text{bins used},

(:func:`unfoldmem.histograms.chi2_ndf`; bins whose corrected value is undefined are left out
and counted). The Poisson variance of the truth count is
:math:`\sigma_{\text{true},i}^2 = \max(\sum_{e\in i} w_e^2,\ \sum_e w_e^2 c_{ei})`: the
observed :math:`\sum w^2` or the one the unfolded histogram predicts (Pearson), whichever is
larger, so that an empty truth bin does not get zero variance. The truth is the data file's
own parton tree (the same events: correlated with the unfolded result, so this χ² is
optimistic) or an independent sample of the same process (:func:`independent_truth`: scaled to
the data's yield, :math:`\sigma_{\text{true},i}^2 = \max(s^2\sum w^2,\ c\,|\hat N_i|)`).
Also computed: the per-event
calibration (fraction of true values inside the central 68% interval of each event's samples). Everything is written under an output directory:
``histograms.root`` (TH1D via uproot), ``plots/<name>.png`` and ``summary.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hist
import numpy as np
import torch

from unfoldmem.histograms import chi2_ndf, weighted_hist
from unfoldmem.io.atomic import atomic_path
from unfoldmem.physics.observables import Observable
from unfoldmem.unfold.acceptance import Efficiency, FiducialCuts, correct, fiducial_mask
from unfoldmem.unfold.cinn_unfold import ObservableSamples
from unfoldmem.unfold.uncertainty import UnfoldedHist, bin_fractions, edges_of, unfolded_hist

__all__ = [
    "unfolded_histograms",
    "truth_values",
    "truth_histograms",
    "independent_truth",
    "closure",
    "calibration",
    "is_constant",
    "plot_observable",
    "write_outputs",
]


def unfolded_histograms(
    samples: ObservableSamples,
    observables: Sequence[Observable],
    phase_space: str = "reco",
    efficiencies: Mapping[str, Efficiency] | None = None,
    n_replicas: int = 100,
    seed: int = 0,
) -> dict[str, UnfoldedHist]:
    """One unfolded histogram per observable with stat (bootstrap), model and ε errors.

    Arguments:
        samples: observables of the posterior samples.
        observables: which ones (their binning and label are used).
        phase_space: ``reco`` (no correction), ``fiducial`` (samples outside the region dropped,
            then divided by ε_fid) or ``full`` (divided by ε).
        efficiencies: from :func:`unfoldmem.unfold.acceptance.efficiencies` (not for ``reco``).
        n_replicas: bootstrap replicas, shared by all observables (same seed).
    """
    if phase_space != "reco" and efficiencies is None:
        msg = f"phase space '{phase_space}' needs efficiencies from a simulation"
        raise ValueError(msg)
    if phase_space == "fiducial" and samples.fiducial is None:
        msg = "phase space 'fiducial' needs samples flagged with fiducial cuts"
        raise ValueError(msg)
    sw = samples.fiducial.astype(np.float64) if phase_space == "fiducial" else None
    out = {}
    for o in observables:
        edges = edges_of(o.binning)
        vals = samples.values[o.name]
        frac = bin_fractions(vals, edges, sw)
        members = []
        if samples.members > 1:
            for m in range(samples.members):
                sl = samples.member_slice(m)
                members.append(bin_fractions(vals[sl], edges, None if sw is None else sw[sl]))
        h = unfolded_hist(
            o.name,
            o.label,
            edges,
            frac,
            samples.weight,
            member_fractions=members,
            n_replicas=n_replicas,
            seed=seed,
        )
        if phase_space != "reco":
            h = correct(h, efficiencies[o.name])  # type: ignore[index]
        out[o.name] = h
    return out


def truth_values(
    momenta: torch.Tensor, pdg: torch.Tensor, observables: Sequence[Observable]
) -> dict[str, np.ndarray]:
    """Observables of true partons, (n, k, 4) GeV and (k,)|(n, k) ids -> ``{name: (n,)}``."""
    return {o.name: o(momenta, pdg).numpy() for o in observables}


def truth_histograms(
    momenta: torch.Tensor,
    pdg: torch.Tensor,
    weights: Any,
    passed: Any,
    observables: Sequence[Observable],
    phase_space: str = "reco",
    cuts: FiducialCuts | None = None,
) -> dict[str, hist.Hist]:
    """Truth histograms in the phase space of the unfolded ones.

    Arguments:
        momenta: (n, k, 4) the modelled parton slots of every generated event of the data file.
        pdg: (k,) or (n, k); weights: (n,); passed: (n,) bool ``pass_reco``.
        phase_space: ``reco`` (passing events), ``fiducial`` (events in the region) or ``full``.
    """
    w = np.asarray(weights, dtype=np.float64)
    if phase_space == "reco":
        keep = np.asarray(passed, dtype=bool)
    elif phase_space == "fiducial":
        keep = fiducial_mask(momenta, pdg, cuts).numpy()
    else:
        keep = np.ones(len(w), dtype=bool)
    vals = truth_values(momenta, pdg, observables)
    return {
        o.name: weighted_hist(
            vals[o.name][keep], w[keep], edges_of(o.binning), name=o.name, label=o.label
        )
        for o in observables
    }


def independent_truth(
    partons: Any,
    path: str,
    parton_pdg: Sequence[int],
    data_yield: float,
    observables: Sequence[Observable],
    phase_space: str = "reco",
    cuts: FiducialCuts | None = None,
) -> tuple[dict[str, hist.Hist], float, float]:
    r"""Truth histograms of an independent parton sample, scaled to the data's yield.

    The weights are scaled by :math:`s = \sum w_\text{data} / \sum_{\text{pass\_reco}} w`
    (the data's detector-level yield over the sample's passing yield), so that in the ``reco``
    phase space the truth has the data's total, as the same-events truth has by construction,
    and in ``fiducial``/``full`` the efficiency correction is tested as well. The variances are
    the sample's own :math:`s^2\sum w^2`.

    Arguments:
        partons: parton records (``read_partons``) of every generated event of the sample.
        path: its file, for messages; parton_pdg: (k,) the model's parton slots.
        data_yield: Σw of the data's detector events.

    Returns:
        ``(histograms, s, c)`` with c = s·Σw²/Σw of the sample (c = s for unit weights): the
        variance per unit of predicted count (Pearson floor of :func:`closure`).

    Raises:
        InputFileError: other parton content (a different process) or no passing event.
    """
    import awkward as ak

    from unfoldmem.errors import InputFileError
    from unfoldmem.io.partons import parton_arrays
    from unfoldmem.unfold.model_layout import parton_slots

    try:
        keep, pdg = parton_slots(partons)
    except ValueError as exc:  # jagged parton lists: not one fixed final state
        raise InputFileError(path, "tree 'Partons' has a varying number of partons per event; "
                             f"the model expects {len(parton_pdg)} slots {list(parton_pdg)}") from exc
    if pdg.tolist() != list(parton_pdg):
        raise InputFileError(path, f"tree 'Partons' has parton slots with PDG ids {pdg.tolist()}, "
                             f"the model {list(parton_pdg)}: not the same process")
    mom = torch.from_numpy(parton_arrays(partons)[0][:, keep])
    w = ak.to_numpy(partons.weight).astype(np.float64)
    passed = ak.to_numpy(partons.pass_reco).astype(bool)
    n_pass = float(w[passed].sum())
    if not n_pass > 0:
        raise InputFileError(path, "tree 'Partons' has no event with pass_reco (Σw = "
                             f"{n_pass:g}): cannot normalise it to the data")
    s = data_yield / n_pass
    t = truth_histograms(mom, torch.as_tensor(pdg), w * s, passed, observables, phase_space, cuts)
    return t, s, s * float((w * w).sum() / w.sum())


def closure(
    unfolded: Mapping[str, UnfoldedHist],
    truth: Mapping[str, hist.Hist],
    variance_per_count: float | None = None,
) -> dict[str, Any]:
    """χ²/ndf of every unfolded histogram against its truth (see the module docstring).

    Arguments:
        variance_per_count: None for the data's own truth (same events: its Pearson floor is
            the unfolded Σw²); for an independent truth the floor ``c·|N̂_i|``, c from
            :func:`independent_truth`.
    """
    out = {}
    for name, h in unfolded.items():
        t = truth[name]
        tv, tvar = np.asarray(t.values(), dtype=float), np.asarray(t.variances(), dtype=float)
        if variance_per_count is not None:
            pearson = variance_per_count * np.abs(np.where(np.isfinite(h.values), h.values, 0.0))
            tvar = np.maximum(tvar, pearson)
        elif h.sumw2 is not None:
            tvar = np.maximum(tvar, np.where(np.isfinite(h.sumw2), h.sumw2, 0.0))
        ok = np.isfinite(h.values) & np.isfinite(h.total)
        chi2, ndf = chi2_ndf((h.values[ok], h.total[ok] ** 2), (tv[ok], tvar[ok]))
        out[name] = {
            "chi2": chi2,
            "ndf": ndf,
            "chi2_ndf": chi2 / ndf if ndf > 0 else None,
            "bins_undefined": int((~ok).sum()),
        }
    return out


def calibration(
    samples: ObservableSamples, truth: Mapping[str, np.ndarray], level: float = 0.68
) -> dict[str, float]:
    """Fraction of events whose true value lies in the central ``level`` interval of its samples.

    Arguments:
        samples: observables of the posterior samples of n events.
        truth: ``{name: (n,)}`` true values of the same events, same order.
        level: central probability of the interval (0.68: the 16th to 84th percentile of the
            posterior; the sample quantile levels are widened so that an N-sample interval
            covers ``level`` on average, see :func:`_unbiased_levels`).

    Returns:
        ``{name: fraction}``; a calibrated posterior gives ``level`` within binomial errors.
        Observables whose truth is the same number in every event (:func:`is_constant`, e.g.
        pt of the Drell–Yan pair or of tt̄ at leading order, exactly 0) are left out: a central
        interval of a continuous posterior contains a delta's value with probability 0 or 1,
        so their fraction measures nothing (:func:`write_outputs` lists them).
    """
    q = _unbiased_levels(level, samples.n_samples)
    out = {}
    for name, t in truth.items():
        t = np.asarray(t, dtype=float)
        if is_constant(t):
            continue
        lo, hi = np.quantile(samples.values[name], q, axis=0)
        out[name] = float(np.mean((t >= lo) & (t <= hi)))
    return out


def _unbiased_levels(level: float, n: int) -> tuple[float, float]:
    r"""Quantile levels whose N-sample interval covers ``level`` on average.

    The linearly interpolated sample quantile at level p sits at order statistic
    :math:`1 + p(N-1)`, whose CDF value has expectation :math:`(1 + p(N-1))/(N+1)`
    (uniform order statistics), so the naive central interval covers only
    :math:`\text{level}\,(N-1)/(N+1)` (0.636 instead of 0.68 for N = 30). Solving for p
    removes that bias; for tiny N the levels clip to the sample range.
    """
    if n < 2:
        return 0.5 - level / 2, 0.5 + level / 2
    lo = ((0.5 - level / 2) * (n + 1) - 1) / (n - 1)
    hi = ((0.5 + level / 2) * (n + 1) - 1) / (n - 1)
    return max(lo, 0.0), min(hi, 1.0)


def is_constant(values: Any, rtol: float = 1e-6, atol: float = 1e-6) -> bool:
    """True if all values (n,) equal their median within ``atol + rtol·|median|``.

    Leading-order kinematics makes some observables constant by construction (a total pT of
    0 up to ~1e-10 GeV of rounding); a real distribution is never this narrow.
    """
    v = np.asarray(values, dtype=float)
    if v.size < 2:  # one event says nothing about "by construction"
        return False
    med = float(np.median(v))
    return bool(np.all(np.abs(v - med) <= atol + rtol * abs(med)))


def plot_observable(
    h: UnfoldedHist,
    path: str | Path,
    truth: hist.Hist | None = None,
    title: str = "",
    truth_label: str = "truth",
) -> Path:
    """Plot an unfolded histogram with stat and total bands, the truth if given, and the ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    path = Path(path)
    fig, (ax, rax) = plt.subplots(
        2, 1, figsize=(6, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.05}
    )
    e = h.edges
    mplhep.histplot(h.values, e, ax=ax, color="C0", label=f"cINN unfolded ({h.phase_space})")
    for err, alpha, lab in ((h.total, 0.25, "total unc."), (h.stat, 0.45, "stat. (bootstrap)")):
        lo, hi = h.values - err, h.values + err
        ax.fill_between(
            e,
            np.append(lo, lo[-1]),
            np.append(hi, hi[-1]),
            step="post",
            color="C0",
            alpha=alpha,
            lw=0,
            label=lab,
        )
    ref = h.values
    if truth is not None:
        tv = np.asarray(truth.values(), dtype=float)
        mplhep.histplot(tv, e, ax=ax, color="k", ls="--", label=truth_label)
        ref = tv
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(ref != 0, h.values / ref, np.nan)
        rt = np.where(ref != 0, h.total / np.abs(ref), np.nan)
    rax.fill_between(
        e,
        np.append(r - rt, (r - rt)[-1]),
        np.append(r + rt, (r + rt)[-1]),
        step="post",
        color="C0",
        alpha=0.3,
        lw=0,
    )
    mplhep.histplot(r, e, ax=rax, color="C0")
    rax.axhline(1.0, color="k", ls="--", lw=0.8)
    rax.set_ylim(0.5, 1.5)
    rax.set_ylabel("unf. / truth" if truth is not None else "ratio")
    rax.set_xlabel(h.label)
    ax.set_ylabel("events / bin")
    ax.set_title(title)
    ax.legend(fontsize=8)
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _json(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json(x.tolist())
    if isinstance(x, np.generic):
        return _json(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_outputs(
    out_dir: str | Path,
    unfolded: Mapping[str, UnfoldedHist],
    truth: Mapping[str, hist.Hist] | None = None,
    efficiencies: Mapping[str, Efficiency] | None = None,
    summary: Mapping[str, Any] | None = None,
    plots: bool = True,
    variance_per_count: float | None = None,
    truth_label: str = "truth",
) -> dict[str, Any]:
    """Write ``histograms.root``, ``plots/*.png`` and ``summary.json`` into ``out_dir``.

    ``variance_per_count``: None for the data's own truth, else from
    :func:`independent_truth` (see :func:`closure`); ``truth_label``: its legend in the plots.

    Returns:
        The summary written: the given ``summary`` plus ``observables`` (histograms with their
        uncertainty components), ``closure`` (with truth) and ``efficiencies``.
    """
    import uproot

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "histograms.root", overwrite=True) as tmp, uproot.recreate(tmp) as f:
        for name, h in unfolded.items():
            f[f"unfolded_{name}"] = h.to_hist()
            if truth is not None:
                f[f"truth_{name}"] = truth[name]
    result: dict[str, Any] = dict(summary or {})
    result["observables"] = {k: h.to_dict() for k, h in unfolded.items()}
    if efficiencies is not None:
        result["efficiencies"] = {k: e.to_dict() for k, e in efficiencies.items()}
    if truth is not None:
        result["closure"] = closure(unfolded, truth, variance_per_count)
        cal = result.get("calibration_68")
        if isinstance(cal, Mapping):
            skipped = sorted(set(unfolded) - set(cal))
            # χ² is kept for them: a posterior spread far beyond the delta is a real failure
            result["calibration_skipped"] = {
                n: "truth is constant by construction (a delta): no 68% calibration"
                for n in skipped}
            for n in skipped:
                result["closure"][n]["truth_constant"] = True
    if plots:
        (out / "plots").mkdir(exist_ok=True)
        for name, h in unfolded.items():
            plot_observable(h, out / "plots" / f"{name}.png", truth[name] if truth else None,
                            truth_label=truth_label)
    with atomic_path(out / "summary.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(_json(result), indent=1))
    return _json(result)
