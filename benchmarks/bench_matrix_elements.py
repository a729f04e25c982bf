r"""Speed of the exact LO |M|²: ttbar_semileptonic evaluations/s, one JSON line per figure.

Figures: |M|²(gg → tt̄ → bμνb̄dū) points/s (the MEM's inner loop), the full channel table
(gg + q q̄ + q̄ q) points/s, and Drell–Yan for scale. Baseline, measured in the same process:
the float64 matmul rate (GFLOP/s of a 512×512 matmul), so the ratio says how many |M|² points one
GFLOP/s of this machine buys. ``--threads`` sets torch's CPU threads (default 1: intra-op
threads do not help elementwise complex arithmetic on 4096-event chunks; use one process per
core, as the Dask workers do); ``--device cuda`` times on a GPU.
Run: ``.venv/bin/python -m benchmarks.bench_matrix_elements``.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import emit, rate
from unfoldmem.physics.process import get_process, incoming_momenta

__all__ = ["main"]


def _points(name: str, n: int, device: torch.device):
    proc = get_process(name)
    theta = {k: v.to(device) for k, v in proc.theta({}, alpha_s=0.118).items()}
    gen = torch.Generator().manual_seed(0)
    shat = (400.0 + 600.0 * torch.rand(n, dtype=torch.float64, generator=gen)) ** 2
    if name == "drell_yan":
        shat = shat / 30
    u = torch.rand(n, proc.dim, dtype=torch.float64, generator=gen)
    p_out, _ = proc.phase_space(u, shat, {k: v.cpu() for k, v in theta.items()})
    return proc, theta, incoming_momenta(shat).to(device), p_out.to(device)


def main() -> None:
    """Print the JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=50000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    a = torch.randn(512, 512, dtype=torch.float64, device=device)

    def matmul() -> None:
        a @ a
        sync()

    gflops = rate(matmul, 2 * 512**3) / 1e9
    base = f"float64 matmul 512x512 ({args.threads} threads)"
    emit("matmul_float64", gflops, "GFLOP/s", threads=args.threads, device=str(device))
    n = args.batch
    proc, theta, p_in, p_out = _points("ttbar_semileptonic", n, device)
    with torch.no_grad():

        def gg() -> None:
            proc.matrix_element_squared(p_in, p_out, theta, (21, 21))
            sync()

        def table() -> None:
            proc.matrix_elements_by_channel(p_in, p_out, theta)
            sync()

        r_gg = rate(gg, n, min_time=2.0)
        emit("me2_ttbar_semileptonic_gg", r_gg, "points/s", base, gflops,
             threads=args.threads, batch=n, target=2e5, device=str(device))
        r_tab = rate(table, n, min_time=2.0)
        emit("me2_ttbar_semileptonic_all_channels", r_tab, "points/s", base, gflops,
             threads=args.threads, batch=n, device=str(device))
        dy, th_dy, pi_dy, po_dy = _points("drell_yan", n, device)

        def drell_yan() -> None:
            dy.matrix_elements_by_channel(pi_dy, po_dy, th_dy)
            sync()

        emit("me2_drell_yan_all_channels", rate(drell_yan, n, min_time=1.0), "points/s", base,
             gflops, threads=args.threads, batch=n, device=str(device))


if __name__ == "__main__":
    main()
