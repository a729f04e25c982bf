r"""Iterative prior removal for cINN unfolding: reweight the simulation towards the data, retrain.

A cINN trained on simulation learns :math:`q(p \mid x) \propto p(x \mid p)\,f_{\text{sim}}(p)`:
its posterior carries the simulation's parton distribution as a prior, which biases the
unfolding where the detector resolution is wide compared with how data and simulation differ.
Iteration k (k = 1..K) removes it step by step:

1. unfold the data with the current cINN :math:`q_{k-1}` (N samples per event);
2. train a classifier between these unfolded samples (class 1, weights :math:`w_e/N`) and the
   simulated partons of passing events with their current weights :math:`w^{(k-1)}` (class 0);
   its likelihood ratio :math:`r_k(p) = \hat f_{\text{unf}}(p) / f^{(k-1)}_{\text{sim}}(p)`
   (:mod:`unfoldmem.unfold.classifier`);
3. reweight the simulated events that pass the selection,
   :math:`w^{(k)}_e = w^{(k-1)}_e\,r_k(p_e)` (failing events keep their weights: the data say
   nothing about them and the classifier would extrapolate there), with weight diagnostics (:mod:`unfoldmem.weights`): non-finite count, Kish ESS/N, largest
   share, warned or refused above the configured thresholds;
4. retrain the cINN on the reweighted simulation (warm start from :math:`q_{k-1}`).

``reference="unfolded"`` (class 0 of step 2: the current cINN's unfolding of the simulation's
own detector events, weights :math:`w^{(k-1)}_e/N`, instead of its partons): the ratio
becomes :math:`\hat f_{\text{unf}}(p) / \hat f^{(k-1)}_{\text{unf,sim}}(p)`. For an exact
posterior the two are the same (unfolding the simulation returns its prior); for an imperfect
network, whose unfolded marginals are smeared or shifted where it is inaccurate, the data and
the simulation are seen through the same inaccuracy, so the classifier learns how the data
differ rather than how the network errs, and the reweighting does not feed the network's
error back into the prior.

With ``refine`` (:mod:`unfoldmem.unfold.refine`) step 1 refines the samples with a classifier
fitted on the simulation as the current network was trained on it (weights
:math:`w^{(k-1)}`), so the classifier of step 2 compares refined samples: the network's own
error is corrected before it can be fed back into the prior.

How far each iteration moves is reported per observable as
:math:`\chi^2_{\text{move}}/n = \frac1n\sum_i (h^{(k)}_i - h^{(k-1)}_i)^2/\sigma^2_{\text{stat},i}`
and the largest relative change. Efficiencies for the acceptance correction use the original
simulation weights (the reweighting is defined for passing events only).

References:
    M. Backes, A. Butter, M. Dunford, B. Malaescu, "An unfolding method based on conditional
    invertible neural networks (cINN) using iterative training", SciPost Phys. Core 7 (2024)
    007, arXiv:2212.08674.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import awkward as ak
import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from unfoldmem.cards.base import StrictModel
from unfoldmem.cards.model import ModelCard
from unfoldmem.flows.cinn import CINN
from unfoldmem.flows.encoding import pad_reco, parton_objects
from unfoldmem.flows.model_dir import core_of
from unfoldmem.flows.training import TrainResult, train
from unfoldmem.io.partons import parton_arrays
from unfoldmem.physics.observables import Observable
from unfoldmem.unfold.cinn_unfold import ObservableSamples, observe
from unfoldmem.unfold.classifier import ClassifierConfig, EventFeatures, train_classifier
from unfoldmem.unfold.features import encoded_features, sample_features
from unfoldmem.unfold.model_layout import ModelLayout, parton_slots
from unfoldmem.unfold.posterior import UnfoldedSamples, sample_posterior
from unfoldmem.unfold.refine import RefineConfig, Refinement, fit_refinement
from unfoldmem.unfold.uncertainty import UnfoldedHist
from unfoldmem.weights import WeightDiagnosticsConfig, check_weights

__all__ = [
    "IterativeConfig",
    "Simulation",
    "IterationRecord",
    "IterativeResult",
    "train_cinn",
    "movement",
    "iterate",
]


class IterativeConfig(StrictModel):
    """Settings of iterative prior removal (a card section; extra keys refused).

    Arguments:
        iterations: K reweight-and-retrain steps (0: one pass only).
        samples: posterior samples per data event for the classifier.
        epochs: retraining epochs per iteration (None: the model card's).
        warm_start: continue from the previous network instead of a fresh one.
        classifier: the reweighting classifier.
        weights: thresholds of the weight diagnostics.
        seed: seed of sampling and retraining (iteration k uses seed + k).
        reference: class 0 of the classifier: ``"truth"``, the simulation's partons, or
            ``"unfolded"``, the current network's unfolding of the simulation's detector
            events (see the module docstring).
        refine: refine every unfolding of the data (each iteration's and the final one) with
            a classifier fitted on the simulation as the current network was trained on it
            (:mod:`unfoldmem.unfold.refine`); None: no refinement.
    """

    iterations: int = Field(3, ge=0)
    samples: int = Field(10, gt=0)
    epochs: int | None = Field(None, gt=0)
    warm_start: bool = True
    classifier: ClassifierConfig = Field(
        default_factory=lambda: ClassifierConfig(epochs=30, hidden=64, layers=3, patience=4)
    )
    weights: WeightDiagnosticsConfig = Field(default_factory=WeightDiagnosticsConfig)
    seed: int = 0
    reference: Literal["truth", "unfolded"] = "truth"
    refine: RefineConfig | None = None


@dataclass
class Simulation:
    """The training simulation: detector records of passing events and every parton event.

    Arguments:
        events: detector records (passing events only, as in the ``Events`` tree).
        partons: parton records of every generated event, with ``pass_reco``.
    """

    events: ak.Array
    partons: ak.Array

    def __post_init__(self) -> None:
        ids = ak.to_numpy(self.partons.event_id)
        order = np.argsort(ids, kind="stable")
        want = ak.to_numpy(self.events.event_id)
        pos = np.searchsorted(ids[order], want)
        pos = np.clip(pos, 0, len(ids) - 1)
        found = ids[order][pos] == want
        if not found.all():
            msg = (
                f"{int((~found).sum())} detector event(s) have no parton event with the same "
                f"event_id (first: {int(want[~found][0])})"
            )
            raise ValueError(msg)
        #: index into ``partons`` of each detector event
        self.pass_index = order[pos]
        self.keep, _ = parton_slots(self.partons)

    @property
    def weight(self) -> np.ndarray:
        """(n_all,) weights of every generated event."""
        return ak.to_numpy(self.partons.weight).astype(np.float64)

    def momenta(self) -> Tensor:
        """(n_all, k, 4) the modelled parton slots (E, px, py, pz) of every generated event."""
        return torch.from_numpy(parton_arrays(self.partons)[0][:, self.keep])


def train_cinn(
    card: ModelCard,
    sim: Simulation,
    weight: np.ndarray | None = None,
    init: nn.Module | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    quiet: bool = True,
    device: str = "cpu",
) -> tuple[CINN, TrainResult]:
    """Train (or continue training) a cINN on the passing events of a weighted simulation.

    Arguments:
        card: architecture and training settings.
        sim: the simulation; weight: (n_all,) weights of every generated event (default: own).
        init: a CINN to continue from (its encodings are kept); None builds a fresh one.
        epochs, seed: override the card's training epochs and seed.
    """
    w_all = sim.weight if weight is None else np.asarray(weight, dtype=np.float64)
    w = torch.from_numpy(w_all[sim.pass_index])
    objs = parton_objects(sim.partons[sim.pass_index])
    reco, mask = pad_reco(sim.events, card.encoding.max_jets, card.encoding.max_leptons)
    if init is None:
        model = CINN.from_data(objs, reco, mask, w, card.flow, card.condition, card.encoding,
                               pdg=parton_slots(sim.partons[sim.pass_index])[1].tolist())
    else:
        model = copy.deepcopy(init)
    update: dict[str, Any] = {}
    if epochs is not None:
        update["epochs"] = epochs
    if seed is not None:
        update["seed"] = seed
    cfg = card.training.model_copy(update=update)
    # a Bayesian or ensemble cINN trains on the batch its core network prepares
    prep = core_of(model).prepare(objs, reco, mask, w)
    result = train(model, prep, cfg, quiet=quiet, device=device)
    return model, result


def movement(new: dict[str, UnfoldedHist], old: dict[str, UnfoldedHist]) -> dict[str, Any]:
    """How far an iteration moved each histogram: χ²/n against the new stat errors, max rel. change."""
    out = {}
    for name, h in new.items():
        o = old[name]
        ok = h.stat > 0
        chi2 = float((((h.values - o.values)[ok] / h.stat[ok]) ** 2).sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.abs(h.values - o.values) / np.abs(o.values)
        rel = rel[np.isfinite(rel) & (o.values != 0)]
        out[name] = {
            "chi2_per_bin": chi2 / max(int(ok.sum()), 1),
            "max_rel_change": float(rel.max()) if rel.size else None,
        }
    return out


@dataclass
class IterationRecord:
    """One iteration: weight diagnostics, classifier and training summary, movement, and the
    refinement of its unfolding (``IterativeConfig.refine``)."""

    iteration: int
    weights: dict[str, Any] = field(default_factory=dict)
    classifier: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    movement: dict[str, Any] = field(default_factory=dict)
    refinement: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class IterativeResult:
    """Outcome of :func:`iterate`.

    Attributes:
        model: the final cINN.
        weights: (n_all,) final weights of every simulated event.
        records: one :class:`IterationRecord` per iteration.
        histograms: per iteration (0 = one pass) the unfolded ``reco``-level histograms.
        samples: the unfolded samples of the last iteration's model (``samples`` per event).
        refinement: the final model's refinement (``config.refine`` set), for the final
            unfolding.
    """

    model: nn.Module
    weights: np.ndarray
    records: list[IterationRecord]
    histograms: list[dict[str, UnfoldedHist]]
    samples: ObservableSamples | None = None
    refinement: Refinement | None = None

    def summary(self) -> list[dict[str, Any]]:
        """Plain-JSON list of the iteration records."""
        return [r.__dict__ for r in self.records]


def iterate(
    model: nn.Module,
    card: ModelCard,
    data: ak.Array,
    sim: Simulation,
    layout: ModelLayout,
    observables: Sequence[Observable],
    config: IterativeConfig | None = None,
    *,
    quiet: bool = True,
    device: str = "cpu",
) -> IterativeResult:
    """Run K iterations of reweight-and-retrain (see the module docstring).

    Arguments:
        model: the cINN trained on ``sim`` (iteration 0).
        card: its model card (training settings for the retraining).
        data: detector records to unfold.
        sim: the training simulation (passing detector events + all parton events).
        layout: the model's layout; observables: for the movement report.
        config: iterations, samples, classifier, weight thresholds.

    Returns:
        :class:`IterativeResult`.

    Raises:
        WeightError: a weight diagnostic crosses its threshold and ``on_violation`` is error.
    """
    from unfoldmem.unfold.report import unfolded_histograms

    config = config or IterativeConfig()
    enc = card.encoding
    kw = {
        "max_jets": enc.max_jets,
        "max_leptons": enc.max_leptons,
        "quiet": quiet,
        "device": device,
    }
    w = sim.weight.copy()
    mom_all = sim.momenta()
    records: list[IterationRecord] = []
    hists: list[dict[str, UnfoldedHist]] = []
    current = model
    prev: UnfoldedSamples | None = None
    samples: ObservableSamples | None = None
    for k in range(config.iterations + 1):
        t0 = time.perf_counter()
        rec = IterationRecord(k)
        if prev is not None:
            # 2. classifier: unfolded data (1) vs the current simulation prior (0), passing events
            x1, w1 = sample_features(current, prev, prev.weight)
            x0 = encoded_features(current, mom_all[sim.pass_index])
            if config.reference == "unfolded":
                # the simulation seen through the same network as the data
                us = sample_posterior(current, sim.events, layout, config.samples,
                                      seed=config.seed + 1000 + k, **kw)
                if not np.array_equal(us.event_id, ak.to_numpy(sim.events.event_id)):
                    msg = "iterative: the simulation's unfolding lost or reordered events"
                    raise RuntimeError(msg)
                # sim.events are in the order of sim.pass_index, as the weights
                x_ref, w_ref = sample_features(current, us, w[sim.pass_index])
            else:
                x_ref, w_ref = x0, w[sim.pass_index]
            clf = train_classifier(
                EventFeatures(x_ref),
                EventFeatures(x1),
                torch.from_numpy(w_ref),
                torch.from_numpy(w1),
                config.classifier.model_copy(update={"seed": config.seed + k}),
            )
            r, clip = clf.likelihood_ratio(EventFeatures(x0))
            # 3. reweight the passing events only: failing events lie partly outside the
            # classifier's training support (e.g. beyond the acceptance), where its ratio is an
            # unconstrained extrapolation. Diagnostics, never repaired.
            w = w.copy()
            w[sim.pass_index] = w[sim.pass_index] * r.numpy()
            rec.weights = check_weights(w[sim.pass_index], config.weights,
                                        name=f"iterative.iter{k}")
            rec.classifier = {
                **clip,
                "best_epoch": clf.history.get("best_epoch"),
                "val_loss": clf.history["val_loss"][-1],
            }
            # 4. retrain on the reweighted simulation
            current, res = train_cinn(
                card,
                sim,
                w,
                init=current if config.warm_start else None,
                epochs=config.epochs,
                seed=card.training.seed + k,
                quiet=quiet,
                device=device,
            )
            rec.training = {key: v for key, v in res.to_dict().items() if key != "history"}
        # 1. unfold the data with the current model (refined against the simulation as the
        # model was trained on it: the classifier of step 2 then compares refined samples)
        refinement = None
        if config.refine is not None:
            refinement = fit_refinement(
                current, sim.events, mom_all[sim.pass_index], w[sim.pass_index], layout,
                config.refine.model_copy(update={"seed": config.refine.seed + 3000 + k}), **kw)
        prev = sample_posterior(current, data, layout, config.samples, seed=config.seed + k,
                                refine=refinement, **kw)
        if refinement is not None:
            rec.refinement = refinement.diagnostics()
        samples = ObservableSamples(prev.event_id, prev.weight, observe(prev, observables), None)
        h = unfolded_histograms(samples, observables, "reco", seed=config.seed)
        if hists:
            rec.movement = movement(h, hists[-1])
        hists.append(h)
        rec.seconds = time.perf_counter() - t0
        records.append(rec)
    return IterativeResult(current, w, records, hists, samples, refinement)
