"""Make docs/mem/scan.png: an m_Z likelihood scan of Drell–Yan events with the MEM (exact W).

Run from the repository root: ``python -m docs.mem.make_scan [--events 60]`` (a few minutes on
one CPU core). Events are generated at m_Z = 91.1876 GeV with the parametric detector; σ_fid(θ)
comes from |M|² reweighting of a weighted θ₀ sample (unfoldmem.mem.normalisation).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    """Compute the scan and write scan.png and scan.json next to this file."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.bench_mem import _events
    from unfoldmem.cards import load_card
    from unfoldmem.cards.detector import DetectorCard
    from unfoldmem.mem.integrand import ExactTransfer
    from unfoldmem.mem.likelihood import MEMConfig, MEMLikelihood
    from unfoldmem.mem.normalisation import ReweightNormalisation
    from unfoldmem.physics.hadronic import integrand_from_card
    from unfoldmem.physics.pdf import load_pdf
    from unfoldmem.simulate.detector import ParametricDetector

    root = HERE.parent.parent
    card = load_card(root / "cards/processes/drell_yan.yaml", kind="process")
    had = integrand_from_card(card, pdf=load_pdf(card.pdf, alpha_s_mz=card.alpha_s_mz))
    det = ParametricDetector(DetectorCard())
    g = torch.Generator().manual_seed(3)
    n = 20000
    pt = had(torch.rand(n, had.dim, generator=g, dtype=torch.float64))
    chan = torch.multinomial(pt.channel_weights + 1e-300, 1, generator=g)[:, 0]
    out = det.simulate(pt.p_out, torch.tensor(had.process.final_state).expand(n, 2), g)
    passed = (out.muons.count == 2) & (out.electrons.count == 0)
    norm = ReweightNormalisation(had.process, pt.p_in, pt.p_out, chan, pt.weight / n, passed,
                                 had.full_theta())
    ev, _ = _events(had, det, args.events, seed=11)
    mem = MEMLikelihood(had, ExactTransfer(det), detector=det, normalisation=norm,
                        config=MEMConfig(precision=0.03, n_max=8192))
    grid = torch.linspace(90.2, 92.2, 9, dtype=torch.float64)
    res = mem.evaluate(ev, {"m_z": grid}, progress=False)
    ok = res.flag == 0
    nll = -2 * res.log_p[ok].sum(0)
    err = 2 * torch.sqrt((res.log_p_err[ok] ** 2).sum(0))
    d = nll - nll.min()
    coef = torch.linalg.lstsq(torch.stack([grid**0, grid, grid**2], -1), d[:, None]).solution[:, 0]
    best = float(-coef[1] / (2 * coef[2]))
    sigma = float(1 / torch.sqrt(coef[2]))
    fine = torch.linspace(90.2, 92.2, 200, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.errorbar(grid, d, yerr=err, fmt="o", label=f"MEM, {int(ok.sum())} DY events (MC error)")
    ax.plot(fine, coef[0] + coef[1] * fine + coef[2] * fine**2, "-",
            label=f"parabola: $m_Z$ = {best:.2f} ± {sigma:.2f} GeV")
    ax.axvline(91.1876, color="k", ls=":", label="true $m_Z$")
    ax.set_xlabel("$m_Z$ [GeV]")
    ax.set_ylabel(r"$-2\Delta\ln L$")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "scan.png", dpi=120)
    (HERE / "scan.json").write_text(json.dumps({
        "m_z": grid.tolist(), "minus_2_delta_lnL": d.tolist(), "mc_error": err.tolist(),
        "best": best, "sigma": sigma, "events": int(ok.sum()), "seconds": res.seconds}, indent=1))
    print(json.dumps({"best": best, "sigma": sigma, "events": int(ok.sum())}))


if __name__ == "__main__":
    main()
