r"""Classifier inputs and unfolding observables from the awkward event records.

Detector level: every reconstructed object (jets, muons, electrons) becomes a row of
``(log pt, eta, cos phi, sin phi, log(1 + m), btag, charge, is_jet, is_muon, is_electron)`` for
the deep set, with global features ``(log(1 + MET), cos φ_MET, sin φ_MET, n_jets, n_leptons, log(1 + H_T),
log(1 + S_T), log(1 + m_vis))`` (H_T the scalar sum of jet pt, S_T = H_T + lepton pt + MET,
m_vis the invariant mass of all jets and leptons: the hard-scale proxies that a small deep set
trained on a few thousand events otherwise has to assemble from its per-object rows);
the fixed-feature (MLP) variant takes the same rows of the leading objects flattened.
Parton level: the process's registered observables (:mod:`unfoldmem.physics.observables`).
All kinematics go through :mod:`unfoldmem.physics.lorentz`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import awkward as ak
import numpy as np
import torch
from torch import Tensor, nn

from unfoldmem.flows.model_dir import core_of
from unfoldmem.io.partons import parton_arrays
from unfoldmem.physics import lorentz
from unfoldmem.physics.observables import evaluate, guess_process, observables_for
from unfoldmem.unfold.classifier import EventFeatures

if TYPE_CHECKING:
    from unfoldmem.unfold.posterior import UnfoldedSamples

__all__ = [
    "detector_features",
    "parton_momenta",
    "parton_observables",
    "parton_features",
    "reco_observables",
    "RECO_PROCESSES",
    "omnifold_inputs",
    "lepton_fiducial",
    "encoded_features",
    "sample_features",
]

#: processes whose observables can also be computed from reconstructed leptons (IBU's reco axis)
RECO_PROCESSES = ("drell_yan",)


def _rows(coll: ak.Array, kind: int, has_btag: bool, has_charge: bool) -> ak.Array:
    zeros = coll.pt * 0.0
    return ak.zip(
        {
            "lpt": np.log(np.maximum(coll.pt, 1e-3)),
            "eta": coll.eta,
            "cphi": np.cos(coll.phi),
            "sphi": np.sin(coll.phi),
            "lm": np.log1p(np.maximum(coll.mass, 0.0)),
            "btag": coll.btag if has_btag else zeros,
            "charge": coll.charge if has_charge else zeros,
            "is_jet": zeros + (kind == 0),
            "is_mu": zeros + (kind == 1),
            "is_e": zeros + (kind == 2),
            "pt": coll.pt,
        }
    )


def _visible_mass(events: ak.Array) -> np.ndarray:
    """(n,) invariant mass (GeV) of all jets, muons and electrons of each event (0 if none)."""
    coll = [events.jets, events.muons, events.electrons]
    cat = {f: ak.concatenate([c[f] for c in coll], axis=1) for f in ("pt", "eta", "phi", "mass")}
    counts = np.asarray(ak.num(cat["pt"]), dtype=np.int64)
    v = np.stack([np.asarray(ak.flatten(cat[f]), dtype=np.float64) for f in cat], axis=-1)
    p = lorentz.from_ptetaphim(torch.from_numpy(v)).numpy()
    idx = np.repeat(np.arange(len(counts)), counts)
    tot = np.zeros((len(counts), 4))
    np.add.at(tot, idx, p)
    m2 = lorentz.mass2(torch.from_numpy(tot)).numpy()
    return np.sqrt(np.maximum(m2, 0.0))


def detector_features(
    events: ak.Array, kind: str = "deepset", max_objects: int = 10
) -> EventFeatures:
    """Classifier inputs of detector-level records.

    Arguments:
        events: records with ``jets``, ``muons``, ``electrons``, ``met`` (GeV).
        kind: ``deepset`` (objects + mask + globals) or ``mlp`` (leading objects flattened).
        max_objects: objects kept per event, highest pt first.

    Returns:
        :class:`EventFeatures` for n events.
    """
    parts = [
        _rows(events.jets, 0, True, False),
        _rows(events.muons, 1, False, True),
        _rows(events.electrons, 2, False, True),
    ]
    objs = ak.concatenate(parts, axis=1)
    objs = objs[ak.argsort(objs.pt, axis=1, ascending=False)]
    fields = ["lpt", "eta", "cphi", "sphi", "lm", "btag", "charge", "is_jet", "is_mu", "is_e"]
    padded = ak.pad_none(objs, max_objects, axis=1, clip=True)
    mask = ~np.asarray(ak.is_none(padded, axis=1))
    arr = np.stack(
        [np.asarray(ak.fill_none(padded[f], 0.0), dtype=np.float64) for f in fields], axis=-1
    )
    n_lep = np.asarray(ak.num(events.muons) + ak.num(events.electrons), dtype=np.float64)
    met = np.asarray(events.met.pt, dtype=np.float64)
    ht = np.asarray(ak.sum(events.jets.pt, axis=1), dtype=np.float64)
    lpt = np.asarray(
        ak.sum(events.muons.pt, axis=1) + ak.sum(events.electrons.pt, axis=1), dtype=np.float64
    )
    glob = np.stack(
        [
            np.log1p(np.asarray(events.met.pt, dtype=np.float64)),
            np.cos(np.asarray(events.met.phi, dtype=np.float64)),
            np.sin(np.asarray(events.met.phi, dtype=np.float64)),
            np.asarray(ak.num(events.jets), dtype=np.float64),
            n_lep,
            np.log1p(ht),
            np.log1p(ht + lpt + met),
            np.log1p(_visible_mass(events)),
        ],
        axis=-1,
    )
    if kind == "mlp":
        flat = (arr * mask[..., None]).reshape(len(arr), -1)
        return EventFeatures(torch.from_numpy(np.concatenate([glob, flat], axis=1)))
    if kind != "deepset":
        msg = f"unknown feature kind '{kind}'; expected 'deepset' or 'mlp'"
        raise ValueError(msg)
    return EventFeatures(torch.from_numpy(glob), torch.from_numpy(arr), torch.from_numpy(mask))


def parton_momenta(partons: ak.Array) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, k, 4) float64 momenta (E, px, py, pz) GeV and (n, k) int64 PDG ids, as tensors.

    Raises:
        ValueError: events have different numbers of partons.
    """
    mom, pdg = parton_arrays(partons)
    return torch.from_numpy(mom), torch.from_numpy(pdg)


def parton_observables(
    partons: ak.Array, names: Sequence[str] | None = None, process: str | None = None
) -> tuple[str, dict[str, np.ndarray]]:
    """The process's registered observables at parton level: ``(process, {name: (n,)})``."""
    mom, pdg = parton_momenta(partons)
    process = process or guess_process(pdg[0])
    vals = evaluate(process, mom, pdg, names)
    return process, {k: v.numpy() for k, v in vals.items()}


def parton_features(partons: ak.Array, process: str | None = None) -> EventFeatures:
    """Classifier inputs at parton level: all registered observables of the process, (n, n_obs)."""
    _, vals = parton_observables(partons, None, process)
    return EventFeatures(torch.from_numpy(np.stack(list(vals.values()), axis=-1)))


def _leptons(events: ak.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu = ak.zip(
        {
            "pt": events.muons.pt,
            "eta": events.muons.eta,
            "phi": events.muons.phi,
            "mass": events.muons.mass,
            "pdg": -13 * events.muons.charge,
        }
    )
    el = ak.zip(
        {
            "pt": events.electrons.pt,
            "eta": events.electrons.eta,
            "phi": events.electrons.phi,
            "mass": events.electrons.mass,
            "pdg": -11 * events.electrons.charge,
        }
    )
    lep = ak.concatenate([mu, el], axis=1)
    lep = lep[ak.argsort(lep.pt, axis=1, ascending=False)]
    two = ak.pad_none(lep, 2, axis=1, clip=True)
    ok = np.asarray(ak.num(lep) >= 2) & np.asarray(
        ak.fill_none(two.pdg[:, 0] * two.pdg[:, 1], 0) < 0
    )
    v = np.stack(
        [
            np.asarray(ak.fill_none(two[f], 0.0), dtype=np.float64)
            for f in ("pt", "eta", "phi", "mass")
        ],
        -1,
    )
    pdg = np.asarray(ak.fill_none(two.pdg, 0), dtype=np.int64)
    return v, pdg, ok


def reco_observables(
    events: ak.Array, process: str, names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Detector-level versions of the parton observables (NaN where undefined).

    Only processes in :data:`RECO_PROCESSES` (observables of the charged leptons) have one;
    for the others an empty dict is returned and IBU is skipped.
    """
    if process not in RECO_PROCESSES:
        return {}
    v, pdg, ok = _leptons(events)
    mom = lorentz.from_ptetaphim(torch.from_numpy(v))
    good = torch.from_numpy(ok)
    out: dict[str, np.ndarray] = {}
    if not bool(good.any()):
        wanted = names or [o.name for o in observables_for(process)]
        return {n: np.full(len(events), np.nan) for n in wanted}
    vals = evaluate(process, mom[good], torch.from_numpy(pdg)[good], names)
    for k, x in vals.items():
        full = np.full(len(events), np.nan)
        full[ok] = x.numpy()
        out[k] = full
    return out


def omnifold_inputs(
    data: ak.Array,
    sim_events: ak.Array,
    sim_partons: ak.Array,
    kind: str = "deepset",
    process: str | None = None,
    fiducial: np.ndarray | None = None,
) -> dict[str, Any]:
    """Join the simulation's trees by ``event_id`` and build everything OmniFold needs.

    The simulated events are the parton-tree events (``pass_gen``), then the detector events
    without a parton-level partner (fakes, ``pass_gen`` False). ``pass_reco`` is presence in
    the detector tree. Rows of a level an event does not pass hold the first row as a
    placeholder (never read by OmniFold).

    ``fiducial`` ((n_partons,) bool, e.g. :func:`lepton_fiducial`) restricts the parton level
    to a fiducial phase space: parton events outside it do not pass gen (reconstructed ones
    become fakes, the others are dropped). Unfold into a phase space where the detector sees
    every region: where the efficiency is zero the data carry no information, and the misses
    there get whatever the step-1b classifier extrapolates.

    Returns:
        dict with ``data`` and ``sim_reco``/``sim_gen`` (:class:`EventFeatures`),
        ``data_weights``, ``sim_weights``, ``pass_reco``, ``pass_gen`` (torch), ``event_id``
        (np int64), ``process``, ``det_index`` (row of each sim event in the detector tree or
        -1) and ``gen_index`` (row in the parton tree or -1).
    """
    ids_d = np.asarray(sim_events.event_id, dtype=np.int64)
    ids_p = np.asarray(sim_partons.event_id, dtype=np.int64)
    rows_p = np.arange(len(ids_p))
    if fiducial is not None:
        fiducial = np.asarray(fiducial, dtype=bool)
        if fiducial.shape != ids_p.shape:
            msg = f"fiducial mask has shape {fiducial.shape}, expected ({len(ids_p)},)"
            raise ValueError(msg)
        ids_p, rows_p = ids_p[fiducial], rows_p[fiducial]
    order = np.argsort(ids_d)
    pos = np.searchsorted(ids_d[order], ids_p)
    pos = np.minimum(pos, max(len(ids_d) - 1, 0))
    matched = (
        (len(ids_d) > 0) & (ids_d[order][pos] == ids_p)
        if len(ids_d)
        else np.zeros(len(ids_p), bool)
    )
    det_of_p = np.where(matched, order[pos], -1)
    fakes = np.setdiff1d(np.arange(len(ids_d)), det_of_p[det_of_p >= 0])
    det_index = np.concatenate([det_of_p, fakes])
    gen_index = np.concatenate([rows_p, np.full(len(fakes), -1)])
    pass_reco = det_index >= 0
    pass_gen = gen_index >= 0
    reco_all = detector_features(sim_events, kind)
    _, gen_obs = parton_observables(sim_partons, None, process)
    process = process or guess_process(parton_momenta(sim_partons[:1])[1][0])
    gen_all = EventFeatures(torch.from_numpy(np.stack(list(gen_obs.values()), axis=-1)))
    w = np.concatenate(
        [
            np.asarray(sim_partons.weight, dtype=np.float64)[rows_p],
            np.asarray(sim_events.weight, dtype=np.float64)[fakes],
        ]
    )
    return {
        "data": detector_features(data, kind),
        "data_weights": torch.from_numpy(np.asarray(data.weight, dtype=np.float64)),
        "sim_reco": reco_all[torch.from_numpy(np.maximum(det_index, 0))],
        "sim_gen": gen_all[torch.from_numpy(np.maximum(gen_index, 0))],
        "sim_weights": torch.from_numpy(w),
        "pass_reco": torch.from_numpy(pass_reco),
        "pass_gen": torch.from_numpy(pass_gen),
        "event_id": np.concatenate([ids_p, ids_d[fakes]]),
        "process": process,
        "det_index": det_index,
        "gen_index": gen_index,
    }


def lepton_fiducial(partons: ak.Array, pt_min: float = 20.0, eta_max: float = 2.4) -> np.ndarray:
    """(n,) bool: every charged lepton (PDG 11, 13) of the parton record has pt > ``pt_min``
    (GeV) and |η| < ``eta_max``; events without charged leptons pass."""
    mom, pdg = parton_momenta(partons)
    lep = (pdg.abs() == 11) | (pdg.abs() == 13)
    good = (lorentz.pt(mom) > pt_min) & (lorentz.eta(mom).abs() < eta_max)
    return np.asarray((good | ~lep).all(-1))


def encoded_features(model: nn.Module, momenta: Tensor) -> Tensor:
    """Standardised parton features of a cINN's encoding, (..., k, 4) E,px,py,pz -> (..., D)
    float32: the classifier inputs of the iterative reweighting and of the refinement.

    ``model`` is a CINN or a Bayesian/ensemble wrapper of one (its encoding is shared).
    """
    x, _ = core_of(model).parton_encoding(lorentz.to_ptetaphim(momenta))
    return x.float()


def sample_features(model: nn.Module, samples: UnfoldedSamples, weight: np.ndarray
                    ) -> tuple[Tensor, np.ndarray]:
    """Features (N·n, D) of every posterior sample, sample-major, and each sample's weight
    (N·n,): its event's ``weight`` (n,) / N, so that every event counts once."""
    x = encoded_features(model, samples.momenta)
    n = samples.n_samples
    return x.reshape(-1, x.shape[-1]), np.repeat(weight[None] / n, n, 0).reshape(-1)
