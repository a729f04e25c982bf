r"""cINN unfolding: N posterior samples of the partons per detector event, written to ROOT.

For every detector event :math:`x_e` the trained cINN draws
:math:`p^{(s)}_e \sim q(p \mid x_e)`, :math:`s = 1..N`. A parton-level distribution is then
estimated by giving every sample the weight :math:`w_e / N`,

.. math:: \hat f(O) = \sum_e \frac{w_e}{N}\sum_{s=1}^{N} \delta\big(O - O(p^{(s)}_e)\big),

which is the unfolded distribution of the events that pass the reco selection (see
:mod:`unfoldmem.unfold.acceptance` for the correction to the fiducial or full phase space).

References:
    M. Bellagente et al., "Invertible networks or partons to detector and back again",
    SciPost Phys. 9 (2020) 074, arXiv:2006.06685.

The pieces live in their own modules and are re-exported here: the model's training layout and
the data check (:mod:`unfoldmem.unfold.model_layout`), the posterior sampling
(:mod:`unfoldmem.unfold.posterior`) and the ``unfolded.root`` file
(:mod:`unfoldmem.unfold.unfolded_file`); this module turns samples into observables.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
from torch import nn

from unfoldmem.unfold.model_layout import (
    LAYOUT_FILE,
    ModelLayout,
    check_data,
    load_layout,
    parton_slots,
)
from unfoldmem.unfold.posterior import (
    UnfoldedSamples,
    iter_posterior,
    members_of,
    n_members,
    sample_posterior,
)
from unfoldmem.unfold.unfolded_file import UNFOLDED_TREE, read_unfolded, write_unfolded

__all__ = [
    "UNFOLDED_TREE",
    "LAYOUT_FILE",
    "ModelLayout",
    "UnfoldedSamples",
    "parton_slots",
    "load_layout",
    "check_data",
    "members_of",
    "iter_posterior",
    "sample_posterior",
    "write_unfolded",
    "read_unfolded",
    "ObservableSamples",
    "observe",
    "unfold",
]


def observe(samples: UnfoldedSamples, observables: Sequence[Any]) -> dict[str, np.ndarray]:
    """Observables of every sample: ``{name: (N, n) float64}``."""
    flat = samples.momenta.reshape(-1, *samples.momenta.shape[2:])
    pdg = samples.pdg.repeat(samples.n_samples, 1)
    shape = samples.momenta.shape[:2]
    return {o.name: o(flat, pdg).reshape(shape).numpy() for o in observables}


@dataclass
class ObservableSamples:
    """Observables of the posterior samples, what histograms and reports are made from.

    Attributes:
        event_id, weight: (n,) of the unfolded events.
        values: ``{name: (N, n) float64}`` observable of every sample.
        fiducial: (N, n) bool, sample inside the fiducial region (None if no cuts were given).
        members: M; samples ``m*N/M .. (m+1)*N/M - 1`` come from member m.
        entries: rows written to ``unfolded.root`` (0 if not written).
    """

    event_id: np.ndarray
    weight: np.ndarray
    values: dict[str, np.ndarray]
    fiducial: np.ndarray | None
    members: int = 1
    entries: int = 0

    @property
    def n_samples(self) -> int:
        """N samples per event."""
        return int(next(iter(self.values.values())).shape[0]) if self.values else 0

    def member_slice(self, m: int) -> slice:
        """Sample indices of member m."""
        per = self.n_samples // self.members
        return slice(m * per, (m + 1) * per)


def unfold(
    model: nn.Module,
    events: ak.Array,
    layout: ModelLayout,
    observables: Sequence[Any],
    n_samples: int = 100,
    *,
    output: str | Path | None = None,
    overwrite: bool = False,
    cuts: Any | None = None,
    **kwargs: Any,
) -> ObservableSamples:
    """Sample the posterior of every event, write ``unfolded.root``, evaluate the observables.

    Arguments:
        model, events, layout, n_samples: as in :func:`iter_posterior` (``kwargs`` too).
        observables: :class:`~unfoldmem.physics.observables.Observable` list.
        output: path of ``unfolded.root`` (atomic; None: not written).
        overwrite: replace an existing output.
        cuts: :class:`~unfoldmem.unfold.acceptance.FiducialCuts` to flag fiducial samples.

    Returns:
        :class:`ObservableSamples`.
    """
    from unfoldmem.unfold.acceptance import fiducial_mask

    acc: dict[str, list[np.ndarray]] = {o.name: [] for o in observables}
    fid: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    ws: list[np.ndarray] = []

    def tee() -> Iterator[UnfoldedSamples]:
        for s in iter_posterior(model, events, layout, n_samples, **kwargs):
            for name, v in observe(s, observables).items():
                acc[name].append(v)
            if cuts is not None:
                fid.append(fiducial_mask(s.momenta, s.pdg, cuts).numpy())
            ids.append(s.event_id)
            ws.append(s.weight)
            yield s

    entries = 0
    if output is not None:
        entries = write_unfolded(output, tee(), overwrite)
    else:
        for _ in tee():
            pass
    return ObservableSamples(
        np.concatenate(ids),
        np.concatenate(ws),
        {k: np.concatenate(v, 1) for k, v in acc.items()},
        np.concatenate(fid, 1) if cuts is not None else None,
        n_members(model, kwargs.get("members")),
        entries,
    )
