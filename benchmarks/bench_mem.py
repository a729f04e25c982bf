r"""MEM speed: ms/event at 1 % relative precision, cINN-proposal importance sampling vs VEGAS.

Same Drell–Yan events (exact detector density), same integrand, one process, one θ point:

* ``mem_cinn_ms_per_event``: trained cINN (80 %) + detector channel (20 %), adaptive to 1 %;
* ``mem_reco_ms_per_event``: the detector-driven channel alone (no network);
* ``mem_vegas_ms_per_event``: VEGAS per assignment (MoMEMta-style), to 1 %.

The ratio is VEGAS time / cINN time (> 1: the cINN MEM is faster). Also printed: integrand
evaluations per event and the mean ESS per sample (where the time goes). tt̄ needs a trained tt̄
cINN; run with ``--process`` once one exists (see docs/mem.md).

Run: ``python -m benchmarks.bench_mem [--events 6] [--epochs 15]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks._common import emit

REPO = Path(__file__).resolve().parent.parent


def _events(had, det, n: int, seed: int):
    from unfoldmem.mem.integrand import RecoEvents

    g = torch.Generator().manual_seed(seed)
    objs, masks, partons = [], [], []
    got = 0
    while got < n:
        u = torch.rand(4000, had.dim, generator=g, dtype=torch.float64)
        pt = had(u)
        keep = torch.rand(len(u), generator=g, dtype=torch.float64) < pt.weight / pt.weight.max()
        p_out = pt.p_out[keep]
        out = det.simulate(p_out, torch.tensor(had.process.final_state).expand(len(p_out), 2), g)
        sel = (out.muons.count == 2) & (out.electrons.count == 0)
        ev = RecoEvents.from_awkward(out.to_awkward()[sel.numpy()])
        objs.append(ev.objects)
        masks.append(ev.mask)
        partons.append(p_out[sel])
        got += len(ev)
    return RecoEvents(torch.cat(objs)[:n], torch.cat(masks)[:n]), torch.cat(partons)[:n]


def main() -> None:
    """Print the JSON lines of the MEM benchmark."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--train-events", type=int, default=8000)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from unfoldmem.cards import load_card
    from unfoldmem.cards.detector import DetectorCard
    from unfoldmem.cards.model import ConditionConfig, FlowConfig, TrainingConfig
    from unfoldmem.flows.cinn import CINN
    from unfoldmem.flows.training import train
    from unfoldmem.mem.integrand import ExactTransfer
    from unfoldmem.mem.likelihood import MEMConfig, MEMLikelihood
    from unfoldmem.mem.vegas_baseline import vegas_log_integral
    from unfoldmem.physics import lorentz
    from unfoldmem.physics.hadronic import integrand_from_card
    from unfoldmem.physics.pdf import load_pdf
    from unfoldmem.simulate.detector import ParametricDetector

    card = load_card(REPO / "cards/processes/drell_yan.yaml", kind="process")
    had = integrand_from_card(card, pdf=load_pdf(card.pdf, alpha_s_mz=card.alpha_s_mz))
    det = ParametricDetector(DetectorCard())
    tr_ev, tr_p = _events(had, det, args.train_events, seed=100)
    v = lorentz.to_ptetaphim(tr_p)
    cinn = CINN.from_data(v, tr_ev.objects, tr_ev.mask, flow=FlowConfig(transforms=4, hidden=[64, 64]),
                          condition=ConditionConfig(embed=32, hidden=[64], context=16))
    t0 = time.perf_counter()
    train(cinn, cinn.prepare(v, tr_ev.objects, tr_ev.mask),
          TrainingConfig(epochs=args.epochs, batch_size=256, patience=0), quiet=True)
    t_train = time.perf_counter() - t0
    cinn.eval()
    ev, _ = _events(had, det, args.events, seed=7)
    theta = {"m_z": [91.1876]}
    out = {}
    for name, model in (("cinn", cinn), ("reco", None)):
        mem = MEMLikelihood(had, ExactTransfer(det), detector=det, cinn=model,
                            config=MEMConfig(precision=0.01, n_max=1 << 18, chunk_size=args.events))
        res = mem.evaluate(ev, theta, progress=False)
        out[name] = res
        ok = res.flag == 0
        emit(f"mem_{name}_ms_per_event", 1e3 * res.seconds / len(ev), "ms/event",
             samples_per_event=float(res.n_samples.mean()),
             ess_per_sample=float((res.ess[:, 0] / res.n_samples)[ok].mean()),
             median_rel_err=float(res.log_p_err[ok, 0].median()), process="drell_yan")
    integ = MEMLikelihood(had, ExactTransfer(det)).integrand
    t0 = time.perf_counter()
    vg = vegas_log_integral(integ, ev, {}, detector=det, precision=0.01)
    t_vegas = time.perf_counter() - t0
    ms_vegas = 1e3 * t_vegas / len(ev)
    ms_cinn = 1e3 * out["cinn"].seconds / len(ev)
    pull = (out["cinn"].log_p[:, 0] - vg.log_p) / torch.hypot(out["cinn"].log_p_err[:, 0],
                                                              vg.log_p_err)
    emit("mem_vegas_ms_per_event", ms_vegas, "ms/event",
         evals_per_event=float(vg.n_eval.double().mean()),
         median_rel_err=float(vg.log_p_err.median()), process="drell_yan")
    emit("mem_speedup_vs_vegas", ms_vegas / ms_cinn, "x", baseline="vegas",
         baseline_value=1.0, cinn_minus_vegas_pulls=[round(float(p), 2) for p in pull],
         cinn_training_s=round(t_train, 1), events=len(ev), process="drell_yan")


if __name__ == "__main__":
    main()
