r"""Benchmark of the flows: cINN sampling rate, training throughput, zuko's stock NSF as the peer.

Prints one JSON line per figure. The cINN has the tt̄ semileptonic shape (6 partons, 18
features, up to 11 reco slots) with a mid-size architecture (6 couplings, 2×128 hidden, changed
with ``--transforms`` / ``--hidden``). ``cinn_sampling_rate`` is :meth:`CINN.sample_partons`'s
path: the condition network once per event, then all samples × events through
:meth:`CouplingNSF.sample_many` in one batched pass (float32). Peers in the same process: the same
flow sampled the stock zuko way (``model(reco, mask).sample((n,))``) and
``zuko.flows.NSF(18, context, transforms=6, passes=2, hidden_features=[128, 128])``.
``cpu_time_rate`` is the same figure per process CPU second and ``load`` the 1-minute load
average: on a shared machine the wall-clock rate with ``--threads 2`` mostly measures the load.
With T threads the sampler runs its row chunks on T single-threaded workers.
``cinn_sampling_rate_small`` is the same for 6 couplings of 2×64 hidden units and 8 bins, the
architecture of the calibration closure (tests/flows/test_cinn.py): the 2×128 flow is
matrix-product bound at ≈ 0.6 MFLOP per sample, ~7e4 samples/s per core on this AVX2 CPU.

Usage: ``.venv/bin/python benchmarks/bench_flows.py [--events 1000] [--samples 100]
[--threads 2]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
import zuko

from unfoldmem.cards.model import ConditionConfig, FlowConfig, TrainingConfig
from unfoldmem.flows.cinn import CINN
from unfoldmem.flows.training import train

__all__ = ["main"]


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
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    partons, reco, mask = _events(max(args.events, 2000), g)
    flow = FlowConfig(transforms=args.transforms, hidden=args.hidden, bins=10)
    cond = ConditionConfig(embed=64, hidden=[64, 64], context=32)
    model = CINN.from_data(partons, reco, mask, flow=flow, condition=cond).eval()
    rb, mb = reco[: args.events], mask[: args.events]
    n = args.samples * args.events
    with torch.inference_mode():
        fast = lambda: model.flow.sample_many(args.samples, model.context(rb, mb))  # noqa: E731
        rate = _rate(fast, n, 3)
        stock = _rate(lambda: model(rb, mb).sample((args.samples,)), n, 2)
        phys = _rate(lambda: model.sample_partons(args.samples, rb, mb), n, 2)
        d = model.parton_encoding.n_features
        peer = zuko.flows.NSF(d, cond.context, bins=10, transforms=args.transforms, passes=2,
                              hidden_features=args.hidden)
        ctx = model.context(rb, mb)
        peer_rate = _rate(lambda: peer(ctx).sample((args.samples,)), n, 2)
        small = CINN.from_data(partons, reco, mask, condition=cond,
                               flow=FlowConfig(transforms=6, hidden=[64, 64], bins=8)).eval()
        fast_small = lambda: small.flow.sample_many(args.samples, small.context(rb, mb))  # noqa: E731
        rate_small = _rate(fast_small, n, 3)
    threads = torch.get_num_threads()
    arch = f"{args.transforms}x{args.hidden}"
    print(json.dumps({"figure": "cinn_sampling_rate", "value": rate, "unit": "samples/s",
                      "baseline": "zuko.flows.NSF(passes=2) same size", "baseline_value": peer_rate,
                      "ratio": rate / peer_rate, "threads": threads, "target": 2e5,
                      "features": d, "architecture": arch, "cpu_time_rate": _CPU[fast],
                      "load": os.getloadavg()[0]}))
    print(json.dumps({"figure": "cinn_sampling_rate_small", "value": rate_small,
                      "unit": "samples/s", "baseline": "cinn_sampling_rate (6x[128, 128], 10 bins)",
                      "baseline_value": rate, "ratio": rate_small / rate, "threads": threads,
                      "target": 2e5, "architecture": "6x[64, 64], 8 bins",
                      "cpu_time_rate": _CPU[fast_small], "load": os.getloadavg()[0]}))
    print(json.dumps({"figure": "cinn_sampling_rate_vs_stock", "value": rate, "unit": "samples/s",
                      "baseline": "same cINN, model(reco, mask).sample((n,))",
                      "baseline_value": stock, "ratio": rate / stock, "threads": threads}))
    print(json.dumps({"figure": "cinn_sampling_rate_physical", "value": phys, "unit": "samples/s",
                      "baseline": "cinn_sampling_rate (encoded)", "baseline_value": rate,
                      "ratio": phys / rate, "threads": threads}))

    nt = args.train_events
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
