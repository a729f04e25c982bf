r"""Benchmark of the flows: cINN sampling rate, training throughput, zuko's stock NSF as the peer.

Prints one JSON line per figure. The events have the tt̄ semileptonic shape (6 partons, 18
features, up to 11 reco slots). ``cinn_sampling_rate`` is the flow of the shipped cINN card
(``--card``, default ``cards/models/cinn_drell_yan.yaml``: 6 couplings of 2×64 hidden units, 8
bins) on :meth:`CINN.sample_partons`'s path: the condition network once per event, then all
samples × events through :meth:`CouplingNSF.sample_many` (float32, feature-major, numba SiLU and
spline loops). Peers in the same process: ``zuko.flows.NSF(18, context, passes=2)`` of the same
size and the same flow sampled the stock zuko way (``model(reco, mask).sample((n,))``),
both with a tenth of the samples per event.
``cinn_sampling_rate_wide`` is the same for 6 couplings of 2×128 and 10 bins (changed with
``--transforms`` / ``--hidden``; also the training figure's flow), ≈ 0.6 MFLOP per sample and
matrix-product bound. ``cpu_time_rate`` is a rate per process CPU second and ``load`` the
1-minute load average: on a shared machine the wall-clock rate with ``--threads 2`` mostly
measures the load. With T threads the sampler runs its tasks on T single-threaded workers.

Usage: ``.venv/bin/python benchmarks/bench_flows.py [--events 1000] [--samples 100]
[--threads 2] [--card cards/models/X.yaml]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import zuko

from unfoldmem.cards import load_card
from unfoldmem.cards.model import ConditionConfig, FlowConfig, TrainingConfig
from unfoldmem.flows.cinn import CINN
from unfoldmem.flows.training import train

__all__ = ["main"]

CARD = Path(__file__).resolve().parents[1] / "cards" / "models" / "cinn_drell_yan.yaml"


def _events(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pt = torch.exp(math.log(60) + 0.5 * torch.randn(n, 6, generator=g, dtype=torch.float64))
    eta = torch.randn(n, 6, generator=g, dtype=torch.float64)
    phi = (2 * torch.rand(n, 6, generator=g, dtype=torch.float64) - 1) * math.pi
    m = torch.tensor([4.7, 4.7, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64).expand(n, 6)
    partons = torch.stack([pt, eta, phi, m], -1)
    slots = 1 + 2 + 8
    reco = torch.zeros(n, slots, 7, dtype=torch.float64)
    reco[:, 0, 0] = partons[:, 5, 0]
    reco[:, 0, 2] = partons[:, 5, 2]
    reco[:, 1, :4] = partons[:, 4] * (1 + 0.02 * torch.randn(n, 4, generator=g, dtype=torch.float64))
    reco[:, 1, 6] = 1
    reco[:, 3:7, :4] = partons[:, :4] * (1 + 0.1 * torch.randn(n, 4, 4, generator=g,
                                                               dtype=torch.float64))
    reco[:, 3:7, 6] = 3
    mask = torch.zeros(n, slots, dtype=torch.bool)
    mask[:, [0, 1, 3, 4, 5, 6]] = True
    return partons, reco, mask


def _rate(fn: object, n_per_call: int, repeats: int) -> float:
    fn()  # warm-up (and numba compilation)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    _CPU[fn] = n_per_call * repeats / cpu
    return n_per_call * repeats / wall


_CPU: dict[object, float] = {}  # samples per CPU second of the same runs (load-independent)


def main() -> None:
    """Run the benchmark and print JSON lines."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--train-events", type=int, default=20000)
    ap.add_argument("--transforms", type=int, default=6)
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--card", type=Path, default=CARD, help="model card of the headline cINN")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    card = load_card(args.card, kind="model")
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    partons, reco, mask = _events(max(args.events, 2000), g)
    flow = FlowConfig(transforms=args.transforms, hidden=args.hidden, bins=10)
    cond = ConditionConfig(embed=64, hidden=[64, 64], context=32)
    rb, mb = reco[: args.events], mask[: args.events]
    n, nev = args.samples * args.events, rb.shape[0]
    k = max(1, args.samples // 10)  # the slow peers draw a tenth of the samples
    rates: dict[str, dict] = {}
    with torch.inference_mode():
        for key, fcfg, ccfg in (("card", card.flow, card.condition), ("wide", flow, cond)):
            model = CINN.from_data(partons, reco, mask, flow=fcfg, condition=ccfg).eval()
            d = model.parton_encoding.n_features
            fast = lambda m=model: m.flow.sample_many(args.samples, m.context(rb, mb))  # noqa: E731
            ctx = model.context(rb, mb)
            peer = zuko.flows.NSF(d, ccfg.context, bins=fcfg.bins, transforms=fcfg.transforms,
                                  passes=2, hidden_features=list(fcfg.hidden))
            r = rates[key] = {"rate": _rate(fast, n, 3), "cpu": _CPU[fast], "d": d,
                              "peer": _rate(lambda p=peer, c=ctx: p(c).sample((k,)), k * nev, 1),
                              "arch": f"{fcfg.transforms}x{list(fcfg.hidden)}, {fcfg.bins} bins"}
            if key == "card":  # the stock path and the decoding of the headline flow
                r["stock"] = _rate(lambda m=model: m(rb, mb).sample((k,)), k * nev, 1)
                r["phys"] = _rate(lambda m=model: m.sample_partons(args.samples, rb, mb), n, 2)
    threads = torch.get_num_threads()
    c, w = rates["card"], rates["wide"]
    print(json.dumps({"figure": "cinn_sampling_rate", "value": c["rate"], "unit": "samples/s",
                      "baseline": "zuko.flows.NSF(passes=2) same size",
                      "baseline_value": c["peer"], "ratio": c["rate"] / c["peer"],
                      "threads": threads, "target": 2e5, "features": c["d"],
                      "architecture": f"{card.name} card: {c['arch']}",
                      "cpu_time_rate": c["cpu"], "load": os.getloadavg()[0]}))
    print(json.dumps({"figure": "cinn_sampling_rate_vs_stock", "value": c["rate"],
                      "unit": "samples/s", "baseline": "same cINN, model(reco, mask).sample((n,))",
                      "baseline_value": c["stock"], "ratio": c["rate"] / c["stock"],
                      "threads": threads}))
    print(json.dumps({"figure": "cinn_sampling_rate_physical", "value": c["phys"],
                      "unit": "samples/s", "baseline": "cinn_sampling_rate (encoded)",
                      "baseline_value": c["rate"], "ratio": c["phys"] / c["rate"],
                      "threads": threads}))
    print(json.dumps({"figure": "cinn_sampling_rate_wide", "value": w["rate"], "unit": "samples/s",
                      "baseline": "zuko.flows.NSF(passes=2) same size",
                      "baseline_value": w["peer"], "ratio": w["rate"] / w["peer"],
                      "threads": threads, "architecture": w["arch"], "cpu_time_rate": w["cpu"],
                      "load": os.getloadavg()[0]}))

    nt, d = args.train_events, w["d"]
    tp, tr, tm = _events(nt, g)
    tmodel = CINN.from_data(tp, tr, tm, flow=flow, condition=cond)
    data = tmodel.prepare(tp, tr, tm)
    res = train(tmodel, data, TrainingConfig(epochs=1, batch_size=1024, val_fraction=0.0,
                                             patience=0), quiet=True)
    peer_data = {"x": data["x"], "c": torch.randn(nt, cond.context), "weight": data["weight"]}

    class _Peer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.flow = zuko.flows.NSF(d, cond.context, bins=10, transforms=args.transforms,
                                       passes=2, hidden_features=args.hidden)

        def nll(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
            return -self.flow(b["c"]).log_prob(b["x"])

    pres = train(_Peer(), peer_data, TrainingConfig(epochs=1, batch_size=1024, val_fraction=0.0,
                                                    patience=0), quiet=True)
    print(json.dumps({"figure": "cinn_training_throughput", "value": res.events_per_second,
                      "unit": "events/s", "baseline": "zuko.flows.NSF(passes=2), context given",
                      "baseline_value": pres.events_per_second,
                      "ratio": res.events_per_second / pres.events_per_second, "threads": threads}))


if __name__ == "__main__":
    main()
