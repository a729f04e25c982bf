r"""Simulation speed and memory: detector events/s, unweighted tt̄ parton events/s vs Pythia 8.

Prints one JSON line per figure. ``--rss-events N`` sets the size of the chunked generation
whose memory is measured (``--rss-events 1000000`` for the issue's 1M-event figure; a few
minutes); ``--rss-only`` runs only that.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from unfoldmem.cards import load_card
from unfoldmem.cards.run import GeneratorConfig, SelectionConfig
from unfoldmem.physics.hadronic import integrand_from_card
from unfoldmem.simulate.detector import ParametricDetector
from unfoldmem.simulate.generator import EventGenerator, generate_file
from unfoldmem.simulate.pythia_chain import PythiaChain, pythia_settings

ROOT = Path(__file__).resolve().parents[1]


def emit(figure: str, value: float, unit: str, baseline: str | None = None,
         baseline_value: float | None = None) -> None:
    ratio = value / baseline_value if baseline_value else None
    print(json.dumps({"figure": figure, "value": value, "unit": unit, "baseline": baseline,
                      "baseline_value": baseline_value, "ratio": ratio}), flush=True)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def rss_figure(n_events: int, chunk_size: int = 50_000) -> None:
    """Peak RSS of generating ``n_events`` tt̄ events in chunks into a ROOT file, and the RSS
    after the last chunk over the RSS after the first and after the third (warm-up) chunk."""
    integrand = integrand_from_card(load_card(ROOT / "cards/processes/ttbar_semileptonic.yaml"))
    cfg = GeneratorConfig(neval=20_000, nitn_adapt=8, n_presample=200_000, chunk_size=chunk_size)
    rss: list[float] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        generate_file(Path(tmp) / "big.root", integrand,
                      load_card(ROOT / "cards/detectors/default.yaml"), SelectionConfig(),
                      n_events, 2, cfg, progress=lambda done: rss.append(_rss_mb()))
    dt = time.perf_counter() - t0
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent process
    with open("/proc/self/status") as f:
        peak = next(int(x.split()[1]) for x in f if x.startswith("VmHWM")) / 1024
    tag = f"ttbar_generation_{n_events}"
    emit(f"{tag}_peak_rss", peak, "MiB")
    emit(f"{tag}_rss_last_vs_first_chunk", rss[-1] / rss[0], "ratio")
    emit(f"{tag}_rss_last_vs_third_chunk", rss[-1] / rss[min(2, len(rss) - 1)], "ratio")
    emit(f"{tag}_events_per_s_with_detector_and_io", n_events / dt, "events/s")
    print(f"RSS after each chunk of {chunk_size} (MiB): {[round(r) for r in rss]}",
          file=sys.stderr)


def detector_figures(mom: torch.Tensor, pdg: torch.Tensor, n_events: int) -> None:
    """Detector events/s on tt̄ partons tiled to ``n_events``: in one call, and in chunks of
    50000 as ``generate`` calls it; peer: the machine's float64 multiply rate, same process."""
    reps = -(-n_events // len(mom))
    mom = mom.repeat(reps, 1, 1)[:n_events].contiguous()
    pdg = pdg.repeat(reps, 1)[:n_events].contiguous()
    det = ParametricDetector(load_card(ROOT / "cards/detectors/default.yaml"))
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    det.simulate(mom[:1000], pdg[:1000], g)  # compiles the kernel (or loads it from the cache)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    det.simulate(mom, pdg, g)
    rate = n_events / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(0, n_events, 50_000):
        det.simulate(mom[i:i + 50_000], pdg[i:i + 50_000], g)
    rate_chunked = n_events / (time.perf_counter() - t0)
    # The machine's own speed in the same process: float64 a*b over 6e6 elements (elements/s).
    x = torch.rand(6_000_000, dtype=torch.float64)
    t0 = time.perf_counter()
    for _ in range(5):
        x * x
    mul = 5 * x.numel() / (time.perf_counter() - t0)
    peer = "float64 elementwise mul, elements/s"
    emit("detector_events_per_s", rate, "events/s", peer, mul)
    emit("detector_events_per_s_chunks_of_50000", rate_chunked, "events/s", peer, mul)
    emit("detector_first_call_s", first, "s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=20_000, help="tt̄ events for the rate figures")
    ap.add_argument("--detector-events", type=int, default=1_000_000)
    ap.add_argument("--rss-events", type=int, default=200_000,
                    help="tt̄ events of the chunked generation whose memory is measured")
    ap.add_argument("--rss-only", action="store_true", help="only the memory figure")
    ap.add_argument("--detector-only", action="store_true", help="only the detector figures")
    args = ap.parse_args()
    if args.rss_only:
        rss_figure(args.rss_events)
        return

    pcard = load_card(ROOT / "cards/processes/ttbar_semileptonic.yaml")
    integrand = integrand_from_card(pcard)
    cfg = GeneratorConfig(neval=20_000, nitn_adapt=8, n_presample=200_000)
    gen = EventGenerator(integrand, cfg, seed=1)
    gen.adapt()
    t0 = time.perf_counter()
    chunks = list(gen.generate(args.events))
    dt = time.perf_counter() - t0
    ours = args.events / dt

    if not args.detector_only:
        chain = PythiaChain(pythia_settings("ttbar", {"m_t": 172.5}, 13000.0, {}), seed=1,
                            parton_level=False, hadron_level=False)
        for _ in range(200):  # warm-up
            chain.next_hard()
        t0 = time.perf_counter()
        for _ in range(args.events):
            chain.next_hard()
        peer = args.events / (time.perf_counter() - t0)
        emit("ttbar_unweighted_parton_events_per_s", ours, "events/s",
             "pythia8 Top:gg2ttbar+qqbar2ttbar, PartonLevel/HadronLevel off", peer)
        emit("ttbar_unweighting_efficiency", gen.efficiency, "fraction")

    detector_figures(torch.cat([c.momenta for c in chunks]), torch.cat([c.pdg for c in chunks]),
                     args.detector_events)

    if args.detector_only:
        return
    # Peak memory of a chunked generation, in a fresh process so the figures above don't count.
    cmd = [sys.executable, __file__, "--rss-only", "--rss-events", str(args.rss_events)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    print(res.stdout, end="")
    print(res.stderr, end="", file=sys.stderr)
    print(f"torch threads: {torch.get_num_threads()}", file=sys.stderr)


if __name__ == "__main__":
    main()
