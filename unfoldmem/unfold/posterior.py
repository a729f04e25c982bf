r"""Posterior samples of the partons of detector events, drawn from a trained cINN.

For every detector event :math:`x_e` the cINN draws :math:`p^{(s)}_e \sim q(p \mid x_e)`,
:math:`s = 1..N`, chunk by chunk; a Bayesian cINN or an ensemble splits the N samples over its
members (:func:`members_of`).

References:
    M. Bellagente et al., "Invertible networks or partons to detector and back again",
    SciPost Phys. 9 (2020) 074, arXiv:2006.06685.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np
import torch
from torch import Tensor, nn

from unfoldmem.flows.encoding import pad_reco
from unfoldmem.physics import lorentz
from unfoldmem.unfold.model_layout import ModelLayout, event_pdg

__all__ = [
    "UnfoldedSamples",
    "members_of",
    "n_members",
    "iter_posterior",
    "sample_posterior",
]


@dataclass
class UnfoldedSamples:
    """Posterior samples of a set of events.

    Attributes:
        event_id: (n,) int64; weight: (n,) float64 event weights.
        momenta: (n_samples, n, k, 4) float64 (E, px, py, pz) GeV.
        pdg: (n, k) int64 PDG id of every slot.
    """

    event_id: np.ndarray
    weight: np.ndarray
    momenta: Tensor
    pdg: Tensor

    @property
    def n_samples(self) -> int:
        """Samples per event N."""
        return int(self.momenta.shape[0])

    @staticmethod
    def cat(parts: list[UnfoldedSamples]) -> UnfoldedSamples:
        """Concatenate along events."""
        return UnfoldedSamples(
            np.concatenate([p.event_id for p in parts]),
            np.concatenate([p.weight for p in parts]),
            torch.cat([p.momenta for p in parts], 1),
            torch.cat([p.pdg for p in parts], 0),
        )


def members_of(model: nn.Module, k: int | None = None) -> list[nn.Module]:
    """The networks to sample from: k weight draws of a Bayesian cINN (drawn once, so a member
    is the same network for every event), the members of an ensemble, or ``[model]``."""
    from unfoldmem.flows.bayesian import BayesianFlow, DeepEnsemble

    if isinstance(model, BayesianFlow):
        with torch.no_grad():
            return [model.sample_model().eval() for _ in range(k or model.n_members)]
    if isinstance(model, DeepEnsemble):
        return [m.eval() for m in model.members(k)]
    return [model]

def n_members(model: nn.Module, k: int | None = None) -> int:
    """M, the number of networks :func:`members_of` gives for ``k`` (1 for a plain model)."""
    from unfoldmem.flows.bayesian import BayesianFlow, DeepEnsemble

    if isinstance(model, BayesianFlow):
        return k or model.n_members
    if isinstance(model, DeepEnsemble):
        return min(k or len(model.ensemble), len(model.ensemble))
    return 1


def iter_posterior(
    model: nn.Module,
    events: ak.Array,
    layout: ModelLayout,
    n_samples: int = 100,
    *,
    members: int | None = None,
    max_jets: int = 8,
    max_leptons: int = 2,
    chunk_size: int = 2000,
    seed: int = 0,
    device: str | torch.device = "cpu",
    quiet: bool = False,
    refine: Any | None = None,
) -> Iterator[UnfoldedSamples]:
    """Draw ``n_samples`` parton configurations per event, chunk by chunk (flat memory).

    For a Bayesian or ensemble cINN the N samples are split evenly over M members (samples
    ``m*N/M .. (m+1)*N/M - 1`` come from member m): together they sample the posterior
    predictive, and each block alone gives member m's histogram for the model band.

    Arguments:
        model: a :class:`~unfoldmem.flows.cinn.CINN`, :class:`~unfoldmem.flows.bayesian.BayesianFlow`
            or :class:`~unfoldmem.flows.bayesian.DeepEnsemble` of CINNs (anything with
            ``sample_partons(n, reco, mask)``).
        events: detector records (``read_detector``).
        layout: the model's :class:`ModelLayout` (PDG ids of the slots).
        n_samples: N samples per event (rounded down to a multiple of M).
        members: M, weight draws / ensemble members (default: the model's own number).
        max_jets, max_leptons: reco padding, as in the model card's ``encoding``.
        chunk_size: events per chunk.
        seed: torch seed of the sampling (the same seed gives the same samples).
        device: where the network runs.
        quiet: no progress bar.
        refine: a :class:`~unfoldmem.unfold.refine.Refinement`: each member draws
            ``refine.oversample`` times its share and keeps its share by ``refine.resample``.

    Yields:
        :class:`UnfoldedSamples` per chunk.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    cpu_state = torch.get_rng_state()
    torch.manual_seed(seed)
    nets = [m.to(device).eval() for m in members_of(model, members)]
    per = max(n_samples // len(nets), 1)
    k = refine.oversample if refine is not None else 1  # candidates drawn per kept sample
    n = len(events)
    progress = Progress(
        TextColumn("unfold"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} events"),
        TimeRemainingColumn(),
        disable=quiet,
        transient=True,
    )
    try:
        with progress:
            task = progress.add_task("unfold", total=n)
            for start in range(0, n, chunk_size):
                chunk = events[start : start + chunk_size]
                reco, mask = pad_reco(chunk, max_jets, max_leptons)
                reco, mask = reco.to(device), mask.to(device)
                pdg = event_pdg(layout, chunk)
                parts = []
                for net in nets:
                    p = lorentz.from_ptetaphim(net.sample_partons(per * k, reco, mask).cpu().double())
                    parts.append(p if refine is None else refine.resample(p, per, pdg))
                yield UnfoldedSamples(
                    ak.to_numpy(chunk.event_id).astype(np.int64),
                    ak.to_numpy(chunk.weight).astype(np.float64),
                    torch.cat(parts, 0),
                    pdg,
                )
                progress.update(task, advance=len(chunk))
    finally:
        torch.set_rng_state(cpu_state)


def sample_posterior(
    model: nn.Module, events: ak.Array, layout: ModelLayout, n_samples: int = 100, **kwargs: Any
) -> UnfoldedSamples:
    """All chunks of :func:`iter_posterior` in memory (small samples, tests, iterations)."""
    parts = list(iter_posterior(model, events, layout, n_samples, **kwargs))
    if not parts:
        msg = "no events to unfold"
        raise ValueError(msg)
    return UnfoldedSamples.cat(parts)
