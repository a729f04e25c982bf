r"""Unfold a ROOT file with the Python API: read it, train a small cINN, unfold, histogram.

What it shows, step by step:

1. simulate Drell–Yan μ⁺μ⁻ (parton level + the parametric detector) into ``sim.root``
   (:func:`unfoldmem.simulate.generate_file`);
2. read the events to unfold with :func:`unfoldmem.io.read_detector`: by default a second,
   independent simulated sample (so the truth is known), or your own file with
   ``--data FILE --branchmap CARD`` (docs/howto-own-data.md). Your events must look like the
   simulation (the same objects, jets and MET): :func:`unfoldmem.unfold.cinn_unfold.check_data`
   stops with a message saying what differs;
3. train a small cINN p(partons | reco) on the reco-passing simulated events
   (:class:`unfoldmem.flows.cinn.CINN`, :func:`unfoldmem.flows.training.train`);
4. draw posterior samples per event (:func:`unfoldmem.unfold.cinn_unfold.unfold`) and histogram
   the dilepton mass with bootstrap uncertainties
   (:func:`unfoldmem.unfold.report.unfolded_histograms`).

Run from the repository root (about a minute on one CPU core with the defaults)::

    .venv/bin/python examples/unfold_my_file.py
    .venv/bin/python examples/unfold_my_file.py --data my.root --branchmap my_map.yaml

A two-epoch network is a plumbing check, not a physics result: raise ``--epochs`` and ``-n``
for a closure that means something (``docs/unfolding.md``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import torch

from unfoldmem.cards import load_card
from unfoldmem.flows.cinn import CINN
from unfoldmem.flows.encoding import pad_reco, parton_objects
from unfoldmem.flows.training import train
from unfoldmem.io import read_detector, read_partons
from unfoldmem.physics.hadronic import integrand_from_card
from unfoldmem.physics.observables import observables_for
from unfoldmem.simulate import generate_file
from unfoldmem.unfold.cinn_unfold import ModelLayout, check_data, unfold
from unfoldmem.unfold.report import unfolded_histograms

REPO = Path(__file__).resolve().parents[1]


def simulate(path: Path, n_events: int, seed: int, run_card: Path) -> Path:
    """Parton + detector events of the run card into ``path`` (trees Events and Partons)."""
    run = load_card(run_card, "run")
    process = load_card(run.process, "process")
    detector = load_card(run.detector, "detector")
    integrand = integrand_from_card(process, theta=run.theta, source=str(run.process))
    generate_file(path, integrand, detector, run.selection, n_events, seed, run.generator,
                  theta=run.theta, overwrite=True)
    return path


def reco_passing(path: Path) -> tuple[ak.Array, ak.Array]:
    """Detector records and the parton records of the same events (joined by ``event_id``)."""
    events = read_detector(path)
    partons = read_partons(path)
    partons = partons[ak.to_numpy(partons.pass_reco)]
    _, i_d, i_p = np.intersect1d(ak.to_numpy(events.event_id), ak.to_numpy(partons.event_id),
                                 return_indices=True)
    return events[i_d], partons[i_p]


def train_cinn(events: ak.Array, partons: ak.Array, model_card: Path, epochs: int) -> CINN:
    """A cINN p(partons | reco) fitted to the (weighted) simulated events."""
    card = load_card(model_card, "model")
    enc = card.encoding
    v = parton_objects(partons)  # (n, k, 4): pt, eta, phi, m of the outgoing partons
    reco, mask = pad_reco(events, max_jets=enc.max_jets, max_leptons=enc.max_leptons)
    weight = torch.from_numpy(ak.to_numpy(partons.weight).astype(np.float64))
    torch.manual_seed(card.training.seed)
    model = CINN.from_data(v, reco, mask, weight, card.flow, card.condition, enc)
    config = card.training.model_copy(update={"epochs": epochs})
    result = train(model, model.prepare(v, reco, mask, weight), config, quiet=True)
    print(f"cINN: best validation NLL {result.best_val:.3f} after {result.epochs_run} epoch(s)")
    return model.eval()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the example; returns the unfolded m_ll histogram (and the truth mean if known)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="ROOT file to unfold (default: simulated pseudo-data)")
    ap.add_argument("--branchmap", type=Path, help="branch-map card of --data")
    ap.add_argument("--run-card", type=Path, default=REPO / "cards/runs/drell_yan.yaml")
    ap.add_argument("--model-card", type=Path, default=REPO / "cards/models/cinn_demo.yaml")
    ap.add_argument("-n", "--n-sim", type=int, default=3000, help="simulated parton events")
    ap.add_argument("--n-data", type=int, default=1000, help="pseudo-data parton events")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--samples", type=int, default=20, help="posterior samples per event")
    ap.add_argument("--replicas", type=int, default=20, help="bootstrap replicas")
    ap.add_argument("--workdir", type=Path, help="where sim.root goes (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sim = simulate(work / "sim.root", args.n_sim, 1, args.run_card)
        sim_events, sim_partons = reco_passing(sim)
        model = train_cinn(sim_events, sim_partons, args.model_card, args.epochs)
        layout = ModelLayout.from_training(sim_partons, sim_events)

        truth: ak.Array | None = None
        if args.data is None:
            data = simulate(work / "data.root", args.n_data, 2, args.run_card)
            events, truth = reco_passing(data)
        else:
            bmap = load_card(args.branchmap, "branchmap") if args.branchmap else None
            events = read_detector(args.data, branchmap=bmap)
        check_data(layout, events, "cinn (in memory)", str(args.data or "pseudo-data"))

        obs = [o for o in observables_for(layout.process or "drell_yan") if o.name == "m_ll"]
        card = load_card(args.model_card, "model")
        samples = unfold(model, events, layout, obs, args.samples, seed=0,
                         max_jets=card.encoding.max_jets, max_leptons=card.encoding.max_leptons,
                         quiet=True)
        h = unfolded_histograms(samples, obs, n_replicas=args.replicas)["m_ll"]

    centres = 0.5 * (h.edges[1:] + h.edges[:-1])
    print(f"unfolded m_ll of {len(events)} events, {args.samples} samples each:")
    print("  bin centre [GeV]   events ± stat")
    for c, val, err in zip(centres, h.values, h.stat, strict=True):
        print(f"  {c:14.1f}   {val:8.1f} ± {err:.1f}")
    m_unf = samples.values["m_ll"]
    out: dict[str, Any] = {
        "events": len(events), "edges": h.edges.tolist(), "values": h.values.tolist(),
        "stat": h.stat.tolist(), "median_m_ll_unfolded": float(np.median(m_unf)),
    }
    if truth is not None:
        p = ak.to_numpy(truth.partons.E), ak.to_numpy(truth.partons.px), \
            ak.to_numpy(truth.partons.py), ak.to_numpy(truth.partons.pz)
        # the dilepton system is everything outgoing: the sum of the non-beam slots
        out_slots = np.abs(p[3]) < np.abs(p[0]) - 1e-9
        tot = [np.where(out_slots, c, 0.0).sum(1) for c in p]
        m_true = np.sqrt(np.maximum(tot[0] ** 2 - tot[1] ** 2 - tot[2] ** 2 - tot[3] ** 2, 0.0))
        out["median_m_ll_truth"] = float(np.median(m_true))
        print(f"median m_ll: unfolded {out['median_m_ll_unfolded']:.2f} GeV, "
              f"truth {out['median_m_ll_truth']:.2f} GeV")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
