r"""Where the cost of one tt̄ MEM sample goes: µs/sample and share per component (cProfile).

The shipped importance sampling (``MEMLikelihood.evaluate``, exact transfer function, physics
channel with its eight laws + plain detector channel, adapted uniforms) runs on the benchmark's
tt̄ events with a fixed number of samples per event (``--samples``, precision target 0 so no
event stops early), single-threaded, under :mod:`cProfile`. Each component is the cumulative
time of the functions that implement it; nested components are subtracted (the leptonic-top
roots from the sampling map; the physics channel's eight-law density is split by caller from
the plain channel's, which shares its code), so the rows add up to the total. Times are the
process's CPU time (``time.process_time``, the profiler's timer too), so other jobs on a shared
machine inflate them far less than wall time; cProfile adds a few % (~11 k calls per run); the
CPU and wall times without it are emitted too.

Run: ``python -m benchmarks.bench_mem_profile [--events 3] [--samples 8192] [--table] [--quick]``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from pathlib import Path

import torch

from benchmarks._common import emit

#: component -> (file suffix, function name[, caller function name]) whose cumulative times
#: make it up.
_PARTS: dict[str, list[tuple[str, ...]]] = {
    "matrix element (helas)": [("ttbar_semileptonic.py", "matrix_elements_by_channel")],
    "PDFs": [("mem/integrand.py", "_luminosities")],
    "W exact (picked assignment)": [("mem/transfer.py", "log_w_pick")],
    "momenta, Jacobian, kernel": [("mem/integrand.py", "momenta")],
    "leptonic-top roots": [("mem/leptonic_blocks.py", "roots")],
    "sampling map (w/o roots)": [("mem/channels.py", "transform")],
    "physics-channel density (8 laws)": [("mem/channels.py", "law_log_prob_joint",
                                          "importance_sample")],
    "plain-channel density": [("mem/channels.py", "log_prob_joint")],
    "uniform law (draw, fit)": [("mem/context.py", "draw"), ("mem/context.py", "add"),
                                ("mem/context.py", "refit")],
    "draws (assignment, law)": [("mem/context.py", "draw_assignments"),
                                ("mem/channels.py", "draw_laws")],
    "accumulators": [("mem/weight_sums.py", "add"), ("mem/weight_sums.py", "result")],
}


def _cum(stats: pstats.Stats, spec: tuple[str, ...]) -> float:
    """Cumulative seconds of the function ``spec`` (only calls from spec[2] when given)."""
    total = 0.0
    for (path, _line, name), (_cc, _nc, _tt, ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if not path.endswith(spec[0]) or name != spec[1]:
            continue
        if len(spec) == 2:
            total += ct
        else:
            total += sum(v[3] for k, v in callers.items() if k[2] == spec[2])
    return total


def profile(n_events: int, n_samples: int) -> tuple[dict[str, float], float, float, float, int]:
    """Component CPU seconds, profiled total, unprofiled CPU and wall seconds (best of 2),
    samples."""
    from benchmarks.bench_mem import _events, _setup
    from unfoldmem.mem.integrand import ExactTransfer
    from unfoldmem.mem.likelihood import MEMConfig, MEMLikelihood
    from unfoldmem.weights import WeightDiagnosticsConfig

    had, det = _setup("ttbar_semileptonic")
    ev, _ = _events(had, det, n_events, seed=7)
    diag = WeightDiagnosticsConfig(ess_ratio_min=0.0, max_share_max=1.0)
    cfg = MEMConfig(precision=0.0, n_start=n_samples // 2, n_max=n_samples,
                    chunk_size=n_events, diagnostics=diag)
    mem = MEMLikelihood(had, ExactTransfer(det), detector=det, config=cfg)
    mem.evaluate(ev, {}, progress=False)  # warm-up
    cpu, wall = [], []
    for _ in range(2):
        t0, c0 = time.perf_counter(), time.process_time()
        res = mem.evaluate(ev, {}, progress=False)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    mem.evaluate(ev, {}, progress=False)
    prof.disable()
    stats = pstats.Stats(prof)
    total = max(ct for (_p, _l, name), (*_, ct, _c) in stats.stats.items()  # type: ignore[attr-defined]
                if name == "evaluate")
    parts = {k: sum(_cum(stats, s) for s in specs) for k, specs in _PARTS.items()}
    parts["sampling map (w/o roots)"] -= parts["leptonic-top roots"]
    parts["other (mixture, weights, loop)"] = total - sum(parts.values())
    return parts, total, min(cpu), min(wall), int(res.n_samples.sum())


def main() -> None:
    """Print one JSON line per component (µs/sample, share) and the total."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=3)
    ap.add_argument("--samples", type=int, default=8192, help="samples per event")
    ap.add_argument("--table", action="store_true", help="also print a markdown table")
    ap.add_argument("--quick", action="store_true", help="1 event, 1024 samples (smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.events, args.samples = 1, 1024
    torch.set_num_threads(1)
    load = Path("/proc/loadavg").read_text().split()[0]
    parts, total, cpu, wall, n = profile(args.events, args.samples)
    for name, sec in parts.items():
        emit(f"mem_ttbar_profile {name}", 1e6 * sec / n, "us/sample (CPU)",
             share=round(100 * sec / total, 1), loadavg=load)
    emit("mem_ttbar_us_per_sample", 1e6 * cpu / n, "us/sample (CPU)", wall=1e6 * wall / n,
         profiled=1e6 * total / n, samples=n, events=args.events, loadavg=load)
    if args.table:
        print("| component | CPU µs/sample | share |\n|---|---|---|")
        for name, sec in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"| {name} | {1e6 * sec / n:.1f} | {100 * sec / total:.0f} % |")
        print(f"| total (profiled) | {1e6 * total / n:.1f} | 100 % |")
        print(f"| total without profiler (CPU; wall) | {1e6 * cpu / n:.1f}; {1e6 * wall / n:.1f} | |")


if __name__ == "__main__":
    main()
