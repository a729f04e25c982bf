r"""Classifier refinement of cINN posterior samples (reweight, then resample per event).

A cINN's posterior :math:`q(p \mid x)` is approximate, and its errors show in the sum over
events: unfolding the simulation's own passing events does not return their partons (the tt̄
network of ``docs/unfolding.md`` puts 4 % of its leptonic b quarks below 20 GeV where the
simulation has 2 %, i.e. outside the jet acceptance the selection required). A classifier
between the network's samples of the simulation's passing events (class 0, weights
:math:`w_e/N`) and their true partons (class 1, weights :math:`w_e`) estimates

.. math:: r(p) = \frac{f_{\text{sim}}(p \mid \text{pass})}{\int q(p \mid x)\, f_{\text{sim}}(x)\,dx},

the factor by which the network's summed posterior misses the simulation (DCTR reweighting,
Andreassen & Nachman; applied to generative networks by Diefenbacher et al.). Every event is
then sampled ``oversample`` times as often as asked, each sample weighted by :math:`r(p)`, and
the asked number drawn back from them by systematic resampling, per event and per ensemble
member (so the model band keeps its meaning): :math:`q'(p \mid x) \propto q(p \mid x)\,r(p)`,
unweighted, every event still counting once. Where the network's error factorises as
:math:`q(p\mid x) \propto p(p \mid x)\,g(p)`, :math:`r \approx 1/g` removes it exactly; what does
not factorise is left. The refinement is fitted against the weights the network was trained
with (after iterative prior removal: the reweighted simulation), so it corrects the network,
not the prior. Diagnostics: the classifier's training record and, per event, the ESS/N of the
weights among its candidates.

References:
    | A. Andreassen, B. Nachman, "Neural networks for full phase-space reweighting and parameter
    | tuning", Phys. Rev. D 101 (2020) 091901, arXiv:1907.08209.
    | S. Diefenbacher, E. Eren, G. Kasieczka, A. Korol, B. Nachman, D. Shih, "DCTRGAN: improving
    | the precision of generative models with reweighting", JINST 15 (2020) P11004,
    | arXiv:2009.03796.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import awkward as ak
import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from unfoldmem.cards.base import StrictModel
from unfoldmem.physics import lorentz
from unfoldmem.physics.observables import evaluate, guess_process, observables_for
from unfoldmem.unfold.classifier import (
    ClassifierConfig,
    EventFeatures,
    TrainedClassifier,
    train_classifier,
)
from unfoldmem.unfold.features import encoded_features
from unfoldmem.unfold.model_layout import ModelLayout
from unfoldmem.unfold.posterior import sample_posterior

#: a feature whose standard deviation over the simulation's partons is below this is left out
FIXED_STD = 1e-6
#: the simulation counts as balanced (LO, Σp_T = 0) if no event's |Σp_T| exceeds this, GeV
BALANCED_GEV = 1e-6

__all__ = ["RefineConfig", "Refinement", "fit_refinement", "refine_features", "systematic_resample"]


class RefineConfig(StrictModel):
    """Settings of the refinement (a card section; extra keys refused).

    Arguments:
        oversample: candidates drawn per requested sample (K): N·K drawn, N kept per event.
        fit_samples: posterior samples per simulated event for the classifier's class 0.
        classifier: the refinement classifier (inputs: the cINN's parton features).
        seed: seed of the simulation's unfolding for the fit.
    """

    oversample: int = Field(4, ge=1)
    fit_samples: int = Field(10, gt=0)
    classifier: ClassifierConfig = Field(
        default_factory=lambda: ClassifierConfig(epochs=40, hidden=64, layers=3, patience=6)
    )
    seed: int = 0


def refine_features(model: nn.Module, momenta: Tensor, pdg: Tensor, process: str,
                    balanced: bool = False) -> Tensor:
    """Classifier inputs of the refinement, (..., k, 4) E,px,py,pz GeV and PDG ids (k,) or
    (n, k) broadcast over the leading dimensions -> (..., D) float32: the cINN's own parton
    features (every coordinate it models) and the process's registered observables, the lab
    quantities that are histogrammed (those in GeV as log(1 + x)). ``balanced``: the truth
    has Σp_T = 0 (LO), the network's samples a small recoil (the resonance encodings' ~1 GeV
    Gaussian), which would tell samples from truth at once; the observables are then taken
    after the transverse boost that removes it."""
    enc = encoded_features(model, momenta)
    if balanced:
        tot = momenta.sum(-2, keepdim=True)
        beta = torch.cat([-tot[..., 1:3] / tot[..., :1], torch.zeros_like(tot[..., :1])], -1)
        momenta = lorentz.boost(momenta, beta)
    vals = evaluate(process, momenta, pdg)
    cols = [torch.log1p(vals[o.name].clamp_min(0.0)) if "GeV" in o.label else vals[o.name]
            for o in observables_for(process)]
    return torch.cat([enc, torch.nan_to_num(torch.stack(cols, -1).float())], -1)


def systematic_resample(weight: Tensor, n: int) -> Tensor:
    """Indices (n, B) drawn from the K candidates of each of B columns with probabilities
    ∝ ``weight`` (K, B) ≥ 0, by systematic resampling (one uniform per column: each candidate
    is kept ⌊n p⌋ or ⌈n p⌉ times). A column without positive weight keeps its first n
    candidates cyclically."""
    k, b = weight.shape
    w = torch.where(torch.isfinite(weight) & (weight > 0), weight, 0.0).double()
    tot = w.sum(0, keepdim=True)
    empty = tot[0] <= 0
    c = torch.cumsum(w / torch.where(tot > 0, tot, 1.0), 0)
    c[-1] = 1.0  # rounding: the last candidate closes the interval
    u = (torch.rand(1, b, dtype=torch.float64) + torch.arange(n, dtype=torch.float64)[:, None]) / n
    # candidate i owns [c_{i-1}, c_i): right=True skips zero-weight candidates even at u = 0
    idx = torch.searchsorted(c.T.contiguous(), u.T.contiguous(), right=True).T.clamp(max=k - 1)
    fallback = (torch.arange(n)[:, None] % k).expand(n, b)
    return torch.where(empty[None], fallback, idx)


@dataclass
class Refinement:
    """A fitted refinement: the classifier and what it reports.

    Attributes:
        model: the cINN whose encoding gives the classifier's features.
        process: the observables' process (:func:`refine_features`).
        balanced: the simulation's partons have Σp_T = 0 (:func:`refine_features`).
        columns: (D,) bool, the features the classifier uses: those that vary over the
            simulation's partons (a quantity that the truth holds fixed, e.g. p_T(tt̄) = 0 at
            LO against the network's Gaussian recoil, would separate the classes trivially).
        classifier: class 1 the simulation's partons, class 0 the network's samples.
        oversample: K (candidates per kept sample).
        report: plain-JSON fit record (events, samples, classifier epochs and loss).
        ess: per unfolded event, the ESS/N of its candidates' weights (filled by
            :meth:`resample`, one array per call).
    """

    model: nn.Module
    process: str
    balanced: bool
    columns: Tensor
    classifier: TrainedClassifier
    oversample: int
    report: dict[str, Any]
    ess: list[np.ndarray] = field(default_factory=list)

    def ratio(self, momenta: Tensor, pdg: Tensor) -> Tensor:
        """r(p) (...,) of parton momenta (..., k, 4) E,px,py,pz GeV with PDG ids (k,)/(B, k)."""
        x = refine_features(self.model, momenta, pdg, self.process, self.balanced)
        x = x[..., self.columns]
        r, _ = self.classifier.likelihood_ratio(EventFeatures(x.reshape(-1, x.shape[-1])))
        return r.reshape(x.shape[:-1])

    def resample(self, momenta: Tensor, n: int, pdg: Tensor) -> Tensor:
        """Keep n of the n·K candidate samples (n·K, B, k, 4) of each event (PDG ids (B, k)),
        drawn ∝ r(p)."""
        k = momenta.shape[0]
        r = self.ratio(momenta, pdg)
        self.ess.append(((r.sum(0) ** 2 / (r * r).sum(0).clamp_min(1e-300)) / k).numpy())
        idx = systematic_resample(r, n)
        return torch.gather(momenta, 0, idx[..., None, None].expand(n, *momenta.shape[1:]))

    def diagnostics(self) -> dict[str, Any]:
        """The fit record plus the candidates' ESS/N over the events resampled so far."""
        out = dict(self.report)
        if self.ess:
            e = np.concatenate(self.ess)
            out["ess_per_candidate"] = {"median": float(np.median(e)),
                                        "p01": float(np.quantile(e, 0.01)), "min": float(e.min()),
                                        "event_member_blocks": int(e.size)}
        return out


def fit_refinement(
    model: nn.Module,
    events: ak.Array,
    momenta: Tensor,
    weight: np.ndarray,
    layout: ModelLayout,
    config: RefineConfig | None = None,
    **kwargs: Any,
) -> Refinement:
    """Fit the refinement of ``model`` on simulated events with known partons.

    Arguments:
        model: the cINN (or ensemble/Bayesian wrapper) to refine.
        events: detector records of the simulated passing events (n).
        momenta: (n, k, 4) their true partons, E,px,py,pz GeV, in the layout's slot order.
        weight: (n,) the weights the network was trained with.
        layout: the model's layout.
        config: :class:`RefineConfig`.
        kwargs: passed to :func:`~unfoldmem.unfold.posterior.sample_posterior` (``max_jets``,
            ``max_leptons``, ``device``, ``quiet``, ...).

    Returns:
        :class:`Refinement`.

    Raises:
        ValueError: ``momenta`` or ``weight`` do not match ``events``.
    """
    config = config or RefineConfig()
    n = len(events)
    if momenta.shape[0] != n or len(weight) != n:
        msg = (f"refinement: {n} simulated events but {momenta.shape[0]} parton sets and "
               f"{len(weight)} weights")
        raise ValueError(msg)
    samples = sample_posterior(model, events, layout, config.fit_samples, seed=config.seed,
                               **kwargs)
    process = layout.process or guess_process(list(layout.parton_pdg))
    w = torch.from_numpy(np.asarray(weight, dtype=np.float64))
    truth = momenta.to(samples.momenta)
    recoil = torch.linalg.vector_norm(truth[..., 1:3].sum(-2), dim=-1)
    balanced = bool((recoil <= BALANCED_GEV).all())
    x0 = refine_features(model, samples.momenta, samples.pdg, process, balanced)
    x1 = refine_features(model, truth, samples.pdg, process, balanced)
    m = samples.n_samples  # fit_samples rounded down to a multiple of the members
    w0 = (w / m).expand(m, n).reshape(-1)
    cols = x1.std(0) > FIXED_STD
    clf = train_classifier(EventFeatures(x0[..., cols].reshape(-1, int(cols.sum()))),
                           EventFeatures(x1[:, cols]), w0, w, config.classifier)
    report = {"events": n, "fit_samples": m, "oversample": config.oversample,
              "features": int(cols.sum()), "features_fixed_in_truth": int((~cols).sum()),
              "recoil_removed": balanced,
              "classifier_best_epoch": clf.history.get("best_epoch"),
              "classifier_val_loss": clf.history["val_loss"][-1]}
    return Refinement(model, process, balanced, cols, clf, config.oversample, report)
