r"""Neural importance sampling vs VEGAS on tt̄: unweighting efficiency and σ precision per second.

For each process card both samplers start from the *same* adapted VEGAS grid (same seed): VEGAS
samples through its map, the flow (:mod:`unfoldmem.simulate.nis`) is trained on top of that map.
Each then draws the same number of independent points, so σ_err = std(w)/√n and the unweighting
efficiency ⟨w⟩/max w compare directly. Precision per second is 1 / (rel_err² × seconds of
sampling + integrand evaluation); the flow's one-off training time is printed beside it.

Run: ``python -m benchmarks.bench_nis`` (``--processes ttbar ttbar_semileptonic``,
``--points N``, ``--quick`` for a smoke run). torch uses one thread (the machine is shared).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks._common import emit
from unfoldmem.cards import load_card
from unfoldmem.physics.hadronic import integrand_from_card
from unfoldmem.simulate.nis import NISConfig, VegasSampler, adapt_vegas, integrate, make_sampler

__all__ = ["main", "run"]

CARDS = Path(__file__).resolve().parents[1] / "cards" / "processes"


def run(process: str, points: int, config: NISConfig) -> list[dict]:
    """Both samplers on one process card; returns the emitted rows."""
    integrand = integrand_from_card(load_card(CARDS / f"{process}.yaml", kind="process"))
    f, dim = integrand.weight, integrand.dim
    flow_sampler = make_sampler(f, dim, "flow", config)
    vegas_sampler = VegasSampler(adapt_vegas(f, dim, config), seed=config.seed + 1)
    flow = integrate(f, dim, flow_sampler, n=points)
    veg = integrate(f, dim, vegas_sampler, n=points)
    common = {"process": process, "points": points, "dim": dim,
              "sigma_flow_pb": flow.sigma, "sigma_flow_err_pb": flow.sigma_err,
              "sigma_vegas_pb": veg.sigma, "sigma_vegas_err_pb": veg.sigma_err,
              "pull": (flow.sigma - veg.sigma) / (flow.sigma_err**2 + veg.sigma_err**2) ** 0.5,
              "flow_training_s": round(flow_sampler.setup_seconds, 1),
              "ess_ratio_flow": flow.extra["ess_ratio"], "ess_ratio_vegas": veg.extra["ess_ratio"]}
    return [
        emit(f"nis_{process}_unweighting_efficiency", flow.unweighting_efficiency, "fraction",
             "vegas", veg.unweighting_efficiency, **common),
        emit(f"nis_{process}_sigma_precision_per_second", flow.precision_per_second,
             "1/(rel_err^2 s)", "vegas", veg.precision_per_second,
             sampling_s_flow=round(flow.seconds, 2), sampling_s_vegas=round(veg.seconds, 2),
             rel_err_flow=flow.extra["rel_err"], rel_err_vegas=veg.extra["rel_err"],
             process=process, points=points),
    ]


def main() -> None:
    """Parse options and run every process in one process (one JSON line per figure)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", nargs="+", default=["ttbar", "ttbar_semileptonic"])
    parser.add_argument("--points", type=int, default=30000, help="points per sampler")
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = NISConfig(transforms=4, hidden=(32, 32), bins=10, vegas_iterations=8,
                       vegas_neval=5000, kl_steps=40, variance_steps=20, kl_batch=2000)
    if args.quick:
        config = NISConfig(transforms=2, hidden=(16,), vegas_iterations=3, vegas_neval=1000,
                           kl_steps=5, kl_batch=500)
        args.points = min(args.points, 3000)
    for process in args.processes:
        run(process, args.points, config)


if __name__ == "__main__":
    main()
