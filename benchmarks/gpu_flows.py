r"""GPU figures of the flows, each against the CPU of the same machine in the same process.

Not a ``bench_*`` script: ``make bench`` runs on CPU machines and skips nothing, so this one is run
by hand where a GPU is (see docs/benchmarks.md).

Run on a machine with a CUDA GPU (``make test-cuda`` checks correctness first). The cINN is
the one of :mod:`benchmarks.bench_flows` (tt̄ semileptonic shape: 6 partons, 18 features),
6 couplings of 2×128 hidden units, 10 bins. Figures (one JSON line each):

* ``cinn_sampling_rate_cuda``: :meth:`CouplingNSF.sample_many` after the condition network, all
  samples × events in one batched pass, float32, timed with ``torch.cuda.synchronize``; peer:
  the same call on the CPU of that machine with all its cores.
* ``cinn_training_throughput_cuda``: events/s of one training epoch (batch 4096); peer: the
  same epoch on that CPU.

Usage: ``python -m benchmarks.gpu_flows [--events 4000] [--samples 250]``
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch

from benchmarks._common import emit
from benchmarks.bench_flows import _events
from unfoldmem.cards.model import ConditionConfig, FlowConfig, TrainingConfig
from unfoldmem.flows.cinn import CINN
from unfoldmem.flows.training import train

__all__ = ["main"]


def _timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Seconds per call after one warm-up call, synchronised on a GPU."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    """Run the benchmark and print JSON lines."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=4000)
    ap.add_argument("--samples", type=int, default=250)
    ap.add_argument("--train-events", type=int, default=100_000)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_flows: no CUDA device (torch.cuda.is_available() is False)")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    partons, reco, mask = _events(max(args.events, 2000), g)
    flow = FlowConfig(transforms=6, hidden=[128, 128], bins=10)
    cond = ConditionConfig(embed=64, hidden=[64, 64], context=32)
    model = CINN.from_data(partons, reco, mask, flow=flow, condition=cond).eval()
    rb, mb = reco[: args.events], mask[: args.events]
    n = args.samples * args.events
    sec = {}
    for dev in (cpu, cuda):
        m = model.to(dev)
        r, k = rb.to(dev), mb.to(dev)
        with torch.inference_mode():
            sec[dev.type] = _timed(lambda m=m, r=r, k=k: m.flow.sample_many(
                args.samples, m.context(r, k), chunk=1 << 20 if k.is_cuda else 2048),
                dev, 3 if dev.type == "cuda" else 1)
    name = torch.cuda.get_device_name(0)
    emit("cinn_sampling_rate_cuda", n / sec["cuda"], "samples/s",
         f"same call on this machine's CPU ({os.cpu_count()} cores)", n / sec["cpu"],
         device=name, architecture="6x[128, 128], 10 bins", events=args.events,
         samples=args.samples)

    nt = args.train_events
    tp, tr, tm = _events(nt, g)
    cfg = TrainingConfig(epochs=1, batch_size=4096, val_fraction=0.0, patience=0)
    thr = {}
    for dev in (cpu, cuda):
        torch.manual_seed(0)
        tmodel = CINN.from_data(tp, tr, tm, flow=flow, condition=cond)
        data = tmodel.prepare(tp, tr, tm)
        t0 = time.perf_counter()
        train(tmodel, data, cfg, quiet=True, device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        thr[dev.type] = nt / (time.perf_counter() - t0)
    emit("cinn_training_throughput_cuda", thr["cuda"], "events/s",
         f"same epoch on this machine's CPU ({os.cpu_count()} cores)", thr["cpu"], device=name,
         batch_size=4096)


if __name__ == "__main__":
    main()
