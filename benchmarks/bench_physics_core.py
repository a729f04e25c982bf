r"""Speed of the physics core: PDF evaluations/s and phase-space points/s, one JSON line each.

Baselines are measured in the same process: Pythia 8's own LHAGrid1 ``xf`` (one call per point
and flavour, through pythia8mc) for the PDF, the sequential two-body generator for RAMBO, and
the float64 matmul rate for the decay chain. Run: ``.venv/bin/python benchmarks/bench_physics_core.py``
(``--device cuda`` to time on a GPU; ``--threads N`` sets torch's CPU threads, default 1 because
the development machine is shared).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable

import torch

from unfoldmem.physics import phase_space as PS
from unfoldmem.physics.pdf import load_pdf

__all__ = ["main"]


def _rate(
    fn: Callable[[], object], items: int, device: torch.device, min_time: float = 1.0
) -> float:
    """Items per second of ``fn`` (best of repeated runs lasting at least ``min_time`` in all)."""
    fn()
    best, spent = math.inf, 0.0
    while spent < min_time:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
    return items / best


def _line(figure: str, value: float, unit: str, baseline: str, baseline_value: float) -> None:
    print(
        json.dumps(
            {
                "figure": figure,
                "value": value,
                "unit": unit,
                "baseline": baseline,
                "baseline_value": baseline_value,
                "ratio": value / baseline_value,
            }
        ),
        flush=True,
    )


def _pythia_rate(n: int = 20_000) -> float:
    import numpy as np
    import pythia8mc

    py = pythia8mc.Pythia("", False)
    for s in (
        "PDF:pSet = LHAGrid1:NNPDF31_lo_as_0118_0000.dat",
        "ProcessLevel:all = off",
        "Print:quiet = on",
    ):
        py.readString(s)
    py.init()
    pdf = py.getPDFPtr(2212, 1)
    rng = np.random.default_rng(0)
    xs = (10 ** rng.uniform(-4, -0.05, n)).tolist()
    q2 = (10 ** rng.uniform(1.4, 6, n)).tolist()

    def run() -> None:
        for a, b in zip(xs, q2, strict=True):
            pdf.xf(21, a, b)

    return _rate(run, n, torch.device("cpu"))


def main() -> None:
    """Print the JSON lines."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=100_000, help="batch size")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev, n = torch.device(args.device), args.n
    gen = torch.Generator(device=dev).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, dtype=torch.float64, device=dev)

    pythia = _pythia_rate()
    for interp in ("logcubic", "pythia"):
        pdf = load_pdf("NNPDF31_lo_as_0118", interpolation=interp)
        x = torch.exp(math.log(1e-4) * rand(n))
        q = torch.exp(math.log(5.0) + math.log(200.0) * rand(n))
        _line(
            f"pdf_xfx_gluon_{interp}",
            _rate(lambda p=pdf, a=x, b=q: p.xfx(21, a, b), n, dev),
            "evaluations/s",
            "pythia8_LHAGrid1_xf",
            pythia,
        )
        _line(
            f"pdf_xfx_all11_{interp}",
            _rate(lambda p=pdf, a=x, b=q: p.xfx_all(a, b), 11 * n, dev),
            "evaluations/s",
            "pythia8_LHAGrid1_xf",
            pythia,
        )

    for nfs in (2, 4):
        u4, u3 = rand(n, 4 * nfs), rand(n, 3 * nfs - 4)
        parent = torch.tensor([1000.0, 0, 0, 0], dtype=torch.float64, device=dev).expand(n, 4)
        zero = torch.zeros(nfs, dtype=torch.float64, device=dev)
        seq = _rate(lambda a=u3, b=parent, c=zero: PS.sequential_phase_space(a, b, c), n, dev)
        _line(
            f"rambo_massless_{nfs}body",
            _rate(lambda a=u4: PS.rambo(a, 1000.0), n, dev),
            "points/s",
            f"sequential_two_body_{nfs}body",
            seq,
        )

    masses = torch.tensor([173.0, 173.0], dtype=torch.float64, device=dev)
    u = rand(n, 18)

    def chain() -> None:
        tops, w = PS.rambo(u[:, :8], 1000.0, masses)
        for k, top in enumerate((tops[:, 0], tops[:, 1])):
            v = u[:, 8 + 5 * k : 13 + 5 * k]
            s_w, jac = PS.breit_wigner_map(v[:, 0], 80.4, 2.1, 1.0, (173.0 - 4.7) ** 2)
            wb, _, w1 = PS.two_body_decay(top, torch.sqrt(s_w), 4.7, v[:, 1:3])
            PS.two_body_decay(wb, 0.0, 0.0, v[:, 3:5])
            w = w * w1 * jac

    a = rand(1024, 1024)
    flops = _rate(lambda: a @ a, 2 * 1024**3, dev) / 1e9
    _line(
        "ttbar_dilepton_decay_chain",
        _rate(chain, n, dev),
        "points/s",
        "float64_matmul_1024_GFLOPs",
        flops,
    )


if __name__ == "__main__":
    main()
