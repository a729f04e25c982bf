r"""`unfoldmem likelihood`: per-event MEM likelihoods over a θ grid, written to ``ll.root``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from unfoldmem.cards import load_card
from unfoldmem.cli._common import console, state
from unfoldmem.errors import CardError, InputFileError, ModelError

__all__ = ["parse_theta", "register"]

_DEFAULT_DETECTOR = Path("cards/detectors/default.yaml")


def _bad(option: str, key: str, problem: str) -> CardError:
    """A command-line mistake, reported like a card error (option, key, what was expected)."""
    return CardError(option, key, problem)


def parse_theta(specs: list[str]) -> dict[str, list[float]]:
    """``["m_t=170:176:13", "gamma_t=1.3"]`` → {name: values}; ``a:b:n`` is n points from a to b.

    Raises:
        CardError: (key ``--theta``) for a malformed specification.
    """
    out: dict[str, list[float]] = {}
    for spec in specs:
        name, sep, rng = spec.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            parts = rng.split(":")
            if len(parts) == 1:
                vals = [float(parts[0])]
            elif len(parts) == 3 and int(parts[2]) >= 1:
                a, b, n = float(parts[0]), float(parts[1]), int(parts[2])
                vals = [a + (b - a) * i / max(n - 1, 1) for i in range(n)]
            else:
                raise ValueError
        except ValueError:
            msg = f"'{spec}' is not NAME=VALUE or NAME=START:STOP:NPOINTS (e.g. m_t=170:176:13)"
            err = _bad("--theta", spec, msg)
            raise err from None
        out[name.strip()] = vals
    return out


def _load_flow(path: Path, kind: str):
    from unfoldmem.flows.model_dir import load_model

    loaded = load_model(path)
    need = "sample_partons" if kind == "cinn" else "classifier"
    if not hasattr(loaded.model, need):
        raise ModelError(str(path), f"expected a {kind} model (card model: {loaded.card.model})")
    return loaded


def likelihood(
    data: Path = typer.Argument(..., help="Detector-level events (ROOT, tree Events)."),
    process: Path = typer.Option(..., "--process", help="Process card (cards/processes/X.yaml)."),
    theta: list[str] = typer.Option(..., "--theta", help="Grid NAME=START:STOP:N (repeatable)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output ll.root."),
    model: Path = typer.Option(None, "--model", help="cINN model directory (proposal)."),
    transfer: Path = typer.Option(None, "--transfer", help="Transfer-flow model (--tf learned)."),
    tf: str = typer.Option("exact", "--tf", help="Transfer function: exact or learned."),
    detector: Path = typer.Option(None, "--detector", help="Detector card (default: default.yaml)."),
    sim: Path = typer.Option(None, "--sim", help="Simulated sample (Partons tree) for σ_fid."),
    precision: float = typer.Option(0.01, "--precision", help="Target relative MC error."),
    n_max: int = typer.Option(16384, "--n-max", help="Most samples per event."),
    per_permutation: bool = typer.Option(False, "--per-permutation",
                                         help="Also write each assignment's log P."),
    btag_rule: str = typer.Option("exact", "--btag-rule", help="exact or strict."),
    max_events: int = typer.Option(None, "--max-events", help="Only the first N events."),
    seed: int = typer.Option(1, "--seed"),
    chunk_size: int = typer.Option(32, "--chunk-size",
                                   help="Events per chunk (the unit of work on Dask)."),
    workers: int = typer.Option(None, "--workers",
                                help="Start a local Dask cluster of N worker processes."),
    scheduler: str = typer.Option(None, "--scheduler",
                                  help="Address of a running Dask scheduler (tcp://host:8786)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Per-event MEM log-likelihoods log P(x|θ) on a θ grid.

    Example: ``unfoldmem likelihood dy.root --process cards/processes/drell_yan.yaml
    --theta m_z=90:92:5 -o ll.root`` writes trees Theta and Likelihood (and Permutations with
    ``--per-permutation``). ``--workers N`` or ``--scheduler ADDRESS`` runs the chunks of
    events on Dask; each chunk's random stream depends only on the seed and its first event,
    so the output equals the single-process run.
    """
    import torch

    from unfoldmem.io import check_writable, read_metadata
    from unfoldmem.mem.integrand import FLAGS, ExactTransfer, LearnedTransfer, RecoEvents
    from unfoldmem.mem.likelihood import MEMConfig, MEMLikelihood
    from unfoldmem.physics.hadronic import integrand_from_card
    from unfoldmem.physics.pdf import load_pdf
    from unfoldmem.simulate.detector import ParametricDetector

    if tf not in ("exact", "learned"):
        err = _bad("--tf", "tf", f"must be 'exact' or 'learned', got '{tf}'")
        raise err
    if workers is not None and scheduler is not None:
        err = _bad("--workers", "workers", "give --workers (a local cluster) or --scheduler "
                   "(an existing one), not both")
        raise err
    if chunk_size < 1:
        err = _bad("--chunk-size", "chunk_size", f"must be >= 1, got {chunk_size}")
        raise err
    if workers is not None and workers < 1:
        err = _bad("--workers", "workers", f"must be >= 1, got {workers}")
        raise err
    if btag_rule not in ("exact", "strict"):
        err = _bad("--btag-rule", "btag_rule",
                   f"must be 'exact' or 'strict', got '{btag_rule}'")
        raise err
    check_writable(output, overwrite)
    pcard = load_card(process, "process")
    det_path = detector or (_DEFAULT_DETECTOR if _DEFAULT_DETECTOR.is_file() else None)
    if det_path is not None:
        dcard = load_card(det_path, "detector")
    else:
        from unfoldmem.cards.detector import DetectorCard

        dcard = DetectorCard()
    det = ParametricDetector(dcard)
    grid = parse_theta(theta)
    had = integrand_from_card(pcard, pdf=load_pdf(pcard.pdf, alpha_s_mz=pcard.alpha_s_mz),
                              source=str(process))
    unknown = sorted(set(grid) - set(had.process.parameters))
    if unknown:
        err = _bad("--theta", unknown[0], f"not a parameter of '{had.process.name}'; "
                        f"parameters: {', '.join(had.process.parameters)}")
        raise err
    cinn = _load_flow(model, "cinn").model if model is not None else None
    if tf == "learned":
        if transfer is None:
            err = _bad("--transfer", "transfer", "--tf learned needs --transfer MODEL_DIR")
            raise err
        trans = LearnedTransfer(_load_flow(transfer, "transfer").model, det)
    else:
        trans = ExactTransfer(det, btag_rule)
    norm = None
    if sim is not None:
        from unfoldmem.io import read_partons
        from unfoldmem.mem.normalisation import ReweightNormalisation

        meta = read_metadata(sim)
        try:
            norm = ReweightNormalisation.from_partons(
                had.process, read_partons(sim), meta.get("sigma_pb"),
                meta.get("sigma_error_pb", 0.0), alpha_s=had.alpha_s)
        except ValueError as exc:
            raise InputFileError(str(sim), str(exc)) from exc
    else:
        console.print("[yellow]warning:[/] no --sim sample: σ_fid(θ) not applied "
                      "(log_sigma_fid = 0); scans then miss its θ dependence")
    events = _read_keep_nan(data)
    if max_events is not None:
        events = events[:max_events]
    reco = RecoEvents.from_awkward(events)
    cfg = MEMConfig(precision=precision, n_max=n_max, per_permutation=per_permutation, seed=seed,
                    chunk_size=chunk_size)
    mem = MEMLikelihood(had, trans, detector=det, cinn=cinn, normalisation=norm, config=cfg)
    import numpy as np

    eid = torch.from_numpy(np.asarray(events.event_id))
    wgt = torch.from_numpy(np.asarray(events.weight, dtype=np.float64))
    if workers is None and scheduler is None:
        res = mem.evaluate(reco, grid, event_id=eid, weight=wgt, progress=not state.quiet)
    else:
        from unfoldmem.inference.scaleout import evaluate_mem

        res = evaluate_mem(mem, reco, grid, event_id=eid, weight=wgt, scheduler=scheduler,
                           workers=workers)
    _write(output, res, overwrite)
    counts = {FLAGS[int(f)]: int((res.flag == f).sum()) for f in res.flag.unique()}
    summary = {"events": len(reco), "grid_points": int(res.log_p.shape[1]),
               "seconds": round(res.seconds, 2),
               "ms_per_event": round(1e3 * res.seconds / max(len(reco), 1), 2),
               "median_log_p_err": float(res.log_p_err[res.flag == 0].median())
               if bool((res.flag == 0).any()) else None, "flags": counts}
    if not state.quiet:
        console.print(json.dumps(summary))
    typer.echo(f"wrote {output}")


def _read_keep_nan(path: Path):
    """All detector events, NaN values kept (the MEM flags those events instead of failing)."""
    import awkward as ak
    import numpy as np
    import uproot

    from unfoldmem.io import read_detector

    try:
        return read_detector(path)
    except InputFileError as exc:
        if "non-finite" not in str(exc):
            raise
    with uproot.open(path) as f:
        arr = f["Events"].arrays(library="ak")

    def coll(prefix: str, extra: str) -> ak.Array:
        return ak.zip({k: arr[f"{prefix}_{k}"] for k in ("pt", "eta", "phi", "mass", extra)})
    return ak.zip({"event_id": arr.event_id, "weight": np.asarray(arr.weight, dtype=np.float64),
                   "jets": coll("Jet", "btag"), "muons": coll("Muon", "charge"),
                   "electrons": coll("Electron", "charge"),
                   "met": ak.zip({"pt": arr.MET_pt, "phi": arr.MET_phi})}, depth_limit=1)


def _write(path: Path, res, overwrite: bool) -> None:
    import numpy as np
    import uproot

    from unfoldmem.inference.likelihood_file import PerEventLikelihoods, write_likelihoods
    from unfoldmem.io.atomic import atomic_path

    lik = PerEventLikelihoods(**res.fields())
    with atomic_path(path, overwrite) as tmp:
        write_likelihoods(tmp, lik, overwrite=True)
        if res.log_p_perm is not None:
            n, k, p = res.log_p_perm.shape
            with uproot.update(tmp) as f:
                f.mktree("Permutations", {"event_id": np.int64,
                                          "log_p_perm": (np.float64, (k * p,)),
                                          "n_perm": np.int32})
                f["Permutations"].extend({
                    "event_id": res.event_id.numpy().astype(np.int64),
                    "log_p_perm": res.log_p_perm.reshape(n, k * p).numpy(),
                    "n_perm": np.full(n, p, dtype=np.int32)})


def register(app: typer.Typer) -> None:
    """Add ``likelihood`` to ``app``."""
    app.command("likelihood")(likelihood)
