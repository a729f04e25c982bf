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

The model directory (:mod:`unfoldmem.flows.model_dir`) says how to encode the reco objects;
the :class:`ModelLayout` adds what the unfolding needs to know about the training data: the
PDG id of every parton slot and the reco multiplicities it was trained on, so data the model was
not trained for is refused with a :class:`~unfoldmem.errors.ModelError`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import torch
import uproot
from torch import Tensor, nn

from unfoldmem.errors import ModelError
from unfoldmem.flows.encoding import pad_reco
from unfoldmem.io.atomic import atomic_path
from unfoldmem.physics import lorentz

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

#: Tree of ``unfolded.root``: one entry per (event, sample).
UNFOLDED_TREE = "Unfolded"
#: Side file of a model directory holding its :class:`ModelLayout` (written by iterative runs).
LAYOUT_FILE = "layout.json"
_COLLECTIONS = ("jets", "muons", "electrons")


def parton_slots(partons: ak.Array, min_pt: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Which parton slots the cINN models, and their PDG ids, as in ``parton_objects``.

    A slot is kept when its pt exceeds ``min_pt`` in some event (incoming partons along the
    beam are dropped), the same rule as :func:`unfoldmem.flows.encoding.parton_objects`.

    Arguments:
        partons: parton records (``partons.{E,px,py,pz,pdgId}``), equal multiplicity.

    Returns:
        keep: (k_all,) bool; pdg: (k,) int64, the most frequent PDG id of each kept slot.
    """
    p = partons.partons
    four = np.stack([ak.to_numpy(p[c]).astype(np.float64) for c in ("E", "px", "py", "pz")], -1)
    keep = (lorentz.pt(torch.from_numpy(four)) > min_pt).any(0).numpy()
    ids = ak.to_numpy(p.pdgId)[:, keep].astype(np.int64)
    mode = []
    for col in ids.T:
        vals, counts = np.unique(col, return_counts=True)
        mode.append(int(vals[np.argmax(counts)]))
    return keep, np.asarray(mode, dtype=np.int64)


@dataclass
class ModelLayout:
    """What a cINN was trained on, beyond its encodings.

    Attributes:
        parton_pdg: PDG id of each modelled parton slot (k,).
        multiplicity: per reco collection (jets, muons, electrons) the [min, max] number of
            objects per event in the training data.
        met: whether the training events had a non-zero MET.
        process: observable-registry key (:mod:`unfoldmem.physics.observables`), or None.
        sign_varies: slots whose PDG id sign changes between training events (charge-flipped
            final states); their sign is set per event from the reco lepton charge.
    """

    parton_pdg: list[int]
    multiplicity: dict[str, list[int]] = field(default_factory=dict)
    met: bool = True
    process: str | None = None
    sign_varies: list[int] = field(default_factory=list)

    @classmethod
    def from_training(
        cls, partons: ak.Array, events: ak.Array, process: str | None = None
    ) -> ModelLayout:
        """Layout of training data: parton records of the reco-passing events and their reco records."""
        keep, pdg = parton_slots(partons)
        ids = ak.to_numpy(partons.partons.pdgId)[:, keep]
        flips = [int(i) for i in range(ids.shape[1]) if len(np.unique(np.sign(ids[:, i]))) > 1]
        mult = {}
        for c in _COLLECTIONS:
            n = ak.to_numpy(ak.num(events[c], axis=1))
            mult[c] = [int(n.min()), int(n.max())] if len(n) else [0, 0]
        met = bool(np.any(ak.to_numpy(events.met.pt) != 0))
        if process is None:
            from unfoldmem.physics.observables import guess_process

            try:
                process = guess_process(pdg)
            except ValueError:
                process = None
        return cls(pdg.tolist(), mult, met, process, flips)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelLayout:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)

    def save(self, model_dir: str | Path) -> Path:
        """Write ``layout.json`` into a model directory (atomically)."""
        path = Path(model_dir) / LAYOUT_FILE
        with atomic_path(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1))
        return path


def load_layout(model_dir: str | Path, meta: dict[str, Any] | None = None) -> ModelLayout | None:
    """The layout of a model: ``meta.json['layout']`` or ``layout.json``; None if neither exists."""
    if meta and isinstance(meta.get("layout"), dict):
        return ModelLayout.from_dict(meta["layout"])
    path = Path(model_dir) / LAYOUT_FILE
    if path.is_file():
        try:
            return ModelLayout.from_dict(json.loads(path.read_text()))
        except (TypeError, ValueError) as exc:
            raise ModelError(
                str(model_dir), f"{LAYOUT_FILE} is not a valid layout ({exc})"
            ) from exc
    return None


def check_data(layout: ModelLayout, events: ak.Array, model_dir: str, data: str) -> None:
    """Refuse detector data the model was not trained for.

    Raises:
        ModelError: a reco collection the model was trained with is absent from the data (no
            object in any event: a missing branch or branch-map entry), the data hold objects of
            a collection never seen in training, some events have fewer objects than every
            training event, or MET is missing. The message names the data file, the collection
            and the multiplicities on both sides.
    """
    problems = []
    for c, (lo, hi) in layout.multiplicity.items():
        n = ak.to_numpy(ak.num(events[c], axis=1))
        if hi > 0 and n.max(initial=0) == 0:
            problems.append(
                f"no {c} in any event, but the model was trained with {lo}..{hi} "
                f"{c} per event (missing branches or branch-map entry?)"
            )
        elif hi == 0 and n.max(initial=0) > 0:
            problems.append(
                f"{int((n > 0).sum())} event(s) have {c}, which the model never saw "
                "in training (wrong model for this final state?)"
            )
        elif (n < lo).any():
            problems.append(
                f"{int((n < lo).sum())} of {len(n)} event(s) have fewer than {lo} "
                f"{c} (the minimum in training); data range {n.min()}..{n.max()}"
            )
    if layout.met and not np.any(ak.to_numpy(events.met.pt) != 0):
        problems.append(
            "MET is zero in every event (no MET branches?), the model was trained with MET"
        )
    if problems:
        raise ModelError(
            model_dir, f"data {data} do not match the training data: " + "; ".join(problems)
        )


def _event_pdg(layout: ModelLayout, events: ak.Array) -> Tensor:
    pdg = torch.tensor(layout.parton_pdg, dtype=torch.int64).expand(len(events), -1).clone()
    ref_lep = [
        layout.parton_pdg[i]
        for i in layout.sign_varies
        if abs(layout.parton_pdg[i]) in (11, 13, 15)
    ]
    if not ref_lep:
        return pdg
    # A charge-conjugated final state flips every varying slot together; which one an event is
    # follows the charge of its leading reco lepton (a negative lepton has a positive PDG id).
    leps = ak.concatenate([events.muons, events.electrons], axis=1)
    leps = leps[ak.argsort(leps.pt, axis=1, ascending=False)]
    q = torch.from_numpy(np.sign(ak.to_numpy(ak.fill_none(ak.firsts(leps.charge), 0.0)))).long()
    flip = torch.where(q == 0, 1, -q * int(np.sign(ref_lep[0])))
    idx = torch.tensor(layout.sign_varies)
    pdg[:, idx] = pdg[:, idx] * flip[:, None]
    return pdg


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

    Yields:
        :class:`UnfoldedSamples` per chunk.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    cpu_state = torch.get_rng_state()
    torch.manual_seed(seed)
    nets = [m.to(device).eval() for m in members_of(model, members)]
    per = max(n_samples // len(nets), 1)
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
                v = torch.cat([net.sample_partons(per, reco, mask).cpu() for net in nets], 0)
                yield UnfoldedSamples(
                    ak.to_numpy(chunk.event_id).astype(np.int64),
                    ak.to_numpy(chunk.weight).astype(np.float64),
                    lorentz.from_ptetaphim(v.double()),
                    _event_pdg(layout, chunk),
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


def _rows(s: UnfoldedSamples) -> dict[str, Any]:
    n_s, n, k, _ = s.momenta.shape
    # event-major order: all samples of an event are adjacent
    mom = s.momenta.permute(1, 0, 2, 3).reshape(n * n_s, k, 4).numpy()
    pdg = s.pdg[:, None, :].expand(n, n_s, k).reshape(n * n_s, k).numpy().astype(np.int32)
    counts = np.full(n * n_s, k)
    parton = {
        c: ak.unflatten(mom[..., i].reshape(-1), counts) for i, c in enumerate("E px py pz".split())
    }
    parton["pdgId"] = ak.unflatten(pdg.reshape(-1), counts)
    return {
        "event_id": np.repeat(s.event_id, n_s),
        "sample": np.tile(np.arange(n_s, dtype=np.int32), n),
        "weight": np.repeat(s.weight / n_s, n_s),
        "Parton": ak.zip(parton),
    }


def write_unfolded(
    path: str | Path,
    chunks: Iterator[UnfoldedSamples] | list[UnfoldedSamples],
    overwrite: bool = False,
) -> int:
    """Write posterior samples to ROOT tree :data:`UNFOLDED_TREE`, atomically.

    Branches: ``event_id`` (int64), ``sample`` (int32), ``weight`` (float64, :math:`w_e/N`, so a
    weighted histogram of the tree is the unfolded distribution), ``nParton``, ``Parton_E``,
    ``Parton_px``, ``Parton_py``, ``Parton_pz`` (float64 GeV), ``Parton_pdgId`` (int32).

    Returns:
        Number of entries written.
    """
    written = 0
    with atomic_path(path, overwrite) as tmp, uproot.recreate(tmp) as f:
        tree = None
        for s in chunks:
            rows = _rows(s)
            if tree is None:
                types = {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in rows.items()}
                tree = f.mktree(UNFOLDED_TREE, types)
            tree.extend(rows)
            written += len(rows["event_id"])
        if tree is None:
            msg = "nothing to write: no unfolded events"
            raise ValueError(msg)
    return written


def read_unfolded(path: str | Path) -> UnfoldedSamples:
    """Read ``unfolded.root`` back into :class:`UnfoldedSamples` (inverse of :func:`write_unfolded`)."""
    from unfoldmem.io import open_tree

    a = open_tree(path, UNFOLDED_TREE).arrays(library="ak")
    n_s = int(ak.max(a["sample"])) + 1
    n = len(a) // n_s
    k = int(ak.max(a["nParton"]))
    mom = np.stack([ak.to_numpy(a[f"Parton_{c}"]) for c in ("E", "px", "py", "pz")], -1)
    mom = torch.from_numpy(mom.reshape(n, n_s, k, 4)).permute(1, 0, 2, 3).contiguous()
    pdg = torch.from_numpy(ak.to_numpy(a["Parton_pdgId"]).reshape(n, n_s, k)[:, 0].astype(np.int64))
    eid = ak.to_numpy(a["event_id"]).reshape(n, n_s)[:, 0]
    w = ak.to_numpy(a["weight"]).reshape(n, n_s).sum(1)
    if not math.isfinite(float(w.sum())):
        msg = f"{path}: non-finite weights in {UNFOLDED_TREE}"
        raise ValueError(msg)
    return UnfoldedSamples(eid, w, mom, pdg)


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
    n_members = _n_members(model, kwargs.get("members"))
    return ObservableSamples(
        np.concatenate(ids),
        np.concatenate(ws),
        {k: np.concatenate(v, 1) for k, v in acc.items()},
        np.concatenate(fid, 1) if cuts is not None else None,
        n_members,
        entries,
    )


def _n_members(model: nn.Module, k: int | None) -> int:
    from unfoldmem.flows.bayesian import BayesianFlow, DeepEnsemble

    if isinstance(model, BayesianFlow):
        return k or model.n_members
    if isinstance(model, DeepEnsemble):
        return min(k or len(model.ensemble), len(model.ensemble))
    return 1
