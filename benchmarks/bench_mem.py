r"""MEM speed: ms/event at 1 % relative precision, our importance sampling vs VEGAS, same events.

For Drell–Yan (μ⁺μ⁻) and tt̄ → b μ⁺ν b̄ d ū (one muon, four jets), exact transfer function
(the parametric detector's density), one θ point, the same :class:`MEMIntegrand` evaluation:

* ours (``MEMLikelihood.evaluate``): the MoMEMta-style detector channel with resonance blocks
  (90 %; for tt̄ a mixture of laws with blocks on/off) + the plain detector channel (10 %),
  per-event adaptive assignment and law probabilities and per-event adapted uniforms of the
  map (``mem.context.UniformLaw``), vectorised over events, adaptive rounds until every event
  reaches the target — no network (``proposal`` says so; ``--epochs N`` adds a cINN for
  Drell–Yan, trained here for N epochs);
* VEGAS (``vegas_log_integral``): ``vegas.batchintegrand`` on the same change of variables with
  the assignment and the map (physics map with its laws, or the full-support plain map; the
  integrand is divided by their mixture density) as two more VEGAS dimensions, 5 adaptation
  iterations (discarded), then 3 iterations per step with ``neval`` raised until 1 %;
* the ratio VEGAS / ours (> 1: ours is faster) and the pulls (ours − VEGAS)/σ over the events;
  also the process CPU time of each (``cpu_ms_per_event``, ``speedup_cpu``), which other jobs
  on a shared machine inflate far less than the wall time;
* where a method stops at its cap short of 1 % (tt̄ events where a parton is lost), also the
  time it would need at 1 % by 1/√n scaling (``ms_per_event_at_target``, ``speedup_at_target``).

The first call of each method runs on one event, untimed (imports, caches).
Run: ``python -m benchmarks.bench_mem [--events 64] [--ttbar-events 4] [--epochs 0]``. The
Drell–Yan default is a realistic batch: our rounds are vectorised over a chunk's events, so 8
events pay the rounds' fixed cost over few events (26.8 vs 15.3 ms/event at 64), while VEGAS
integrates one event at a time either way.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from benchmarks._common import emit

REPO = Path(__file__).resolve().parent.parent
_NEVAL = {"drell_yan": 300, "ttbar_semileptonic": 4000}  # VEGAS evaluations per iteration


def _setup(process: str):
    from unfoldmem.cards import load_card
    from unfoldmem.cards.detector import DetectorCard
    from unfoldmem.physics.hadronic import integrand_from_card
    from unfoldmem.physics.pdf import load_pdf
    from unfoldmem.simulate.detector import ParametricDetector

    card = load_card(REPO / f"cards/processes/{process}.yaml", kind="process")
    had = integrand_from_card(card, pdf=load_pdf(card.pdf, alpha_s_mz=card.alpha_s_mz))
    return had, ParametricDetector(DetectorCard())


def _events(had, det, n: int, seed: int):
    """n unweighted events passing the process's selection: reco events and parton momenta."""
    from unfoldmem.mem.integrand import RecoEvents

    g = torch.Generator().manual_seed(seed)
    fs = torch.tensor(had.process.final_state)
    objs, masks, partons = [], [], []
    got = 0
    while got < n:
        u = torch.rand(4000, had.dim, generator=g, dtype=torch.float64)
        pt = had(u)
        keep = torch.rand(len(u), generator=g, dtype=torch.float64) < pt.weight / pt.weight.max()
        p_out = pt.p_out[keep]
        out = det.simulate(p_out, fs.expand(len(p_out), len(fs)), g)
        if len(fs) == 2:
            sel = (out.muons.count == 2) & (out.electrons.count == 0)
        else:
            sel = (out.muons.count == 1) & (out.jets.count == 4) & (out.electrons.count == 0)
        ev = RecoEvents.from_awkward(out.to_awkward()[sel.numpy()])
        objs.append(ev.objects)
        masks.append(ev.mask)
        partons.append(p_out[sel])
        got += len(ev)
    return RecoEvents(torch.cat(objs)[:n], torch.cat(masks)[:n]), torch.cat(partons)[:n]


def _cinn(had, det, n_train: int, epochs: int):
    from unfoldmem.cards.model import ConditionConfig, FlowConfig, TrainingConfig
    from unfoldmem.flows.cinn import CINN
    from unfoldmem.flows.training import train
    from unfoldmem.physics import lorentz

    tr_ev, tr_p = _events(had, det, n_train, seed=100)
    v = lorentz.to_ptetaphim(tr_p)
    cinn = CINN.from_data(v, tr_ev.objects, tr_ev.mask,
                          flow=FlowConfig(transforms=4, hidden=[64, 64]),
                          condition=ConditionConfig(embed=32, hidden=[64], context=16))
    train(cinn, cinn.prepare(v, tr_ev.objects, tr_ev.mask),
          TrainingConfig(epochs=epochs, batch_size=256, patience=0), quiet=True)
    return cinn.eval()


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def _to_target(n: torch.Tensor, err: torch.Tensor, precision: float) -> float:
    """Factor from the time spent to the time at ``precision`` (1/√n scaling, ≥ 1 per event)."""
    if not len(n):
        return math.nan
    return float((n * ((err / precision) ** 2).clamp(min=1.0)).sum() / n.sum())


def bench_process(process: str, n_events: int, precision: float, cinn_epochs: int,
                  n_train: int, n_max: int = 1 << 19) -> None:
    """Emit ours vs VEGAS on the same n_events events of ``process``."""
    from unfoldmem.mem.integrand import ExactTransfer
    from unfoldmem.mem.likelihood import MEMConfig, MEMLikelihood
    from unfoldmem.mem.vegas_baseline import vegas_log_integral

    had, det = _setup(process)
    ev, _ = _events(had, det, n_events, seed=7)
    cinn = _cinn(had, det, n_train, cinn_epochs) if cinn_epochs and process == "drell_yan" else None
    proposal = ("cINN + " if cinn is not None else "") + \
        "detector channel with resonance blocks, adapted per event (exact TF) + plain detector channel"
    cfg = MEMConfig(precision=precision, n_start=256, n_max=n_max, chunk_size=n_events)
    mem = MEMLikelihood(had, ExactTransfer(det), detector=det, cinn=cinn, config=cfg)
    mem.evaluate(ev[:1], {}, progress=False)  # warm-up (imports, PDF tables)
    load0 = _load()
    c0 = time.process_time()
    res = mem.evaluate(ev, {}, progress=False)
    cpu_ours = 1e3 * (time.process_time() - c0) / n_events
    ok = res.flag == 0
    ms_ours = 1e3 * res.seconds / n_events
    neval = _NEVAL.get(process, 2000)
    # VEGAS adapts on the same physics map as our detector channel (same width factor).
    vg_map = {"detector": det, "reco_scale": cfg.physics_scale}
    vegas_log_integral(mem.integrand, ev[:1], {}, precision=0.2, neval=500, **vg_map)
    t0, c0 = time.perf_counter(), time.process_time()
    vg = vegas_log_integral(mem.integrand, ev, {}, precision=precision, neval=neval,
                            max_eval=2 * n_max, **vg_map)
    ms_vegas = 1e3 * (time.perf_counter() - t0) / n_events
    cpu_vegas = 1e3 * (time.process_time() - c0) / n_events
    # Where the cap on samples stops an event short of the target, the time it would need by
    # 1/√n scaling: the sample-weighted mean of max(1, (error/target)²) times the time.
    ours_scale = _to_target(res.n_samples[ok].double(), res.log_p_err[ok, 0], precision)
    vegas_scale = _to_target(vg.n_eval[vg.flag == 0].double(), vg.log_p_err[vg.flag == 0],
                             precision)
    both = ok & (vg.flag == 0)
    pull = (res.log_p[:, 0] - vg.log_p) / torch.hypot(res.log_p_err[:, 0], vg.log_p_err)
    pull = pull[both]
    emit(f"mem_{process}_ms_per_event", ms_ours, "ms/event", baseline="vegas",
         baseline_value=ms_vegas, process=process, proposal=proposal, events=n_events,
         precision=precision, samples_per_event=float(res.n_samples.mean()),
         ess_per_sample=float((res.ess[:, 0] / res.n_samples)[ok].mean()),
         max_rel_err=float(res.log_p_err[ok, 0].max()), loadavg_start=load0,
         ms_per_event_at_target=ms_ours * ours_scale, cpu_ms_per_event=cpu_ours)
    emit(f"mem_vegas_{process}_ms_per_event", ms_vegas, "ms/event", process=process,
         evals_per_event=float(vg.n_eval.double().mean()),
         max_rel_err=float(vg.log_p_err[vg.flag == 0].max()), loadavg_end=_load(),
         ms_per_event_at_target=ms_vegas * vegas_scale, cpu_ms_per_event=cpu_vegas)
    n = int(both.sum())
    emit(f"mem_{process}_speedup_vs_vegas", ms_vegas / ms_ours, "x", process=process,
         speedup_at_target=ms_vegas * vegas_scale / (ms_ours * ours_scale),
         speedup_cpu=cpu_vegas / cpu_ours,
         pull_mean=float(pull.mean()) if n else math.nan,
         pull_std=float(pull.std()) if n > 1 else math.nan,
         pull_mean_tolerance=round(3 / math.sqrt(max(n, 1)), 3),
         pulls=[round(float(p), 2) for p in pull], flagged=n_events - n)


def main() -> None:
    """Print the JSON lines of the MEM benchmark."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=64, help="Drell–Yan events")
    ap.add_argument("--ttbar-events", type=int, default=None,
                    help="tt̄ events (default: min(--events, 4); VEGAS takes minutes per event)")
    ap.add_argument("--epochs", type=int, default=0, help="cINN epochs for Drell–Yan (0: none)")
    ap.add_argument("--train-events", type=int, default=8000)
    ap.add_argument("--precision", type=float, default=0.01)
    ap.add_argument("--n-max", type=int, default=1 << 19,
                    help="cap on samples per event (VEGAS: twice this many evaluations)")
    ap.add_argument("--process", action="append", default=None,
                    help="drell_yan and/or ttbar_semileptonic (default both)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for process in args.process or ["drell_yan", "ttbar_semileptonic"]:
        n = args.events if process == "drell_yan" else (args.ttbar_events or min(args.events, 4))
        bench_process(process, n, args.precision, args.epochs, args.train_events, args.n_max)


if __name__ == "__main__":
    main()
