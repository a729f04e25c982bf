r"""CLI verbs ``scan``, ``fit``, ``posterior`` and ``calibrate`` on per-event likelihoods (ll.root)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from unfoldmem.cli._common import state
from unfoldmem.errors import CardError
from unfoldmem.io.atomic import check_writable

__all__ = ["register"]

_LL = typer.Argument(..., help="Per-event likelihood file (trees Theta and Likelihood).")
_OUT = typer.Option(None, "--output", "-o", help="Output directory for JSON and plots.")
_OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output directory.")
_WORKERS = typer.Option(None, "--workers", help="Start a local Dask cluster with N workers.")
_SCHEDULER = typer.Option(None, "--scheduler", help="Address of a running Dask scheduler.")
_CHUNK = typer.Option(None, "--chunk-size", help="Events (or pseudo-experiments) per chunk.")
_TRUE_OPT = "--true"


def _load(path: Path) -> Any:
    from unfoldmem.inference.likelihood_file import read_likelihoods

    lik = read_likelihoods(path)
    if lik.n_flagged and not state.quiet:
        typer.echo(f"excluded {lik.n_flagged} of {lik.n_events} events with nonzero flag")
    return lik


def _write(out: Path | None, overwrite: bool, payload: dict[str, Any], name: str, plot: Any) -> None:
    """Write ``name``.json and ``name``.png into ``out`` as one atomic directory."""
    if out is None:
        return
    from unfoldmem.io.atomic import atomic_path

    check_writable(out, overwrite)
    with atomic_path(out, overwrite, directory=True) as tmp:
        (tmp / f"{name}.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
        plot(tmp / f"{name}.png")
    if not state.quiet:
        typer.echo(f"wrote {out / f'{name}.json'} and {out / f'{name}.png'}")


def _fmt_interval(lo: float | None, hi: float | None) -> str:
    return f"[{'open' if lo is None else f'{lo:.6g}'}, {'open' if hi is None else f'{hi:.6g}'}]"


def scan(
    ll: Path = _LL,
    param: list[str] = typer.Option(None, "--param", "-p", help="Parameter(s) to scan (1 or 2)."),
    output: Path = _OUT,
    overwrite: bool = _OVERWRITE,
    workers: int = _WORKERS,
    scheduler: str = _SCHEDULER,
    chunk_size: int = _CHUNK,
) -> None:
    """−2ΔlnL scan with 68%/95% intervals.  Example: unfoldmem scan ll.root -p m_t -o out/"""
    from unfoldmem.inference.plots import plot_contour, plot_scan
    from unfoldmem.inference.scan import Scan1D
    from unfoldmem.inference.scan import scan as do_scan

    res = do_scan(_load(ll), param or None, chunk_size=chunk_size, scheduler=scheduler,
                  workers=workers)
    if isinstance(res, Scan1D):
        typer.echo(f"{res.name} = {res.theta_hat:.6g} ± {res.sigma:.3g}  (−2ΔlnL spline minimum)")
        for cl, (lo, hi) in res.intervals.items():
            typer.echo(f"  {100 * cl:.1f}% CL interval: {_fmt_interval(lo, hi)}")
        if res.mc_error:
            typer.echo(f"  MC-integration error on {res.name}: {res.mc_error['theta_hat']:.3g}")
        _write(output, overwrite, res.to_dict(), "scan", lambda p: plot_scan(res, p))
    else:
        typer.echo("minimum: " + ", ".join(f"{n} = {v:.6g}" for n, v in
                                           zip(res.names, res.theta_hat, strict=True)))
        for n, d in res.profile_intervals.items():
            for cl, (lo, hi) in d.items():
                typer.echo(f"  {n}: {100 * cl:.1f}% CL profile interval {_fmt_interval(lo, hi)}")
        _write(output, overwrite, res.to_dict(), "scan", lambda p: plot_contour(res, p))


def fit(
    ll: Path = _LL,
    method: str = typer.Option("minuit", "--method", help="minuit (MIGRAD/HESSE/MINOS) or lbfgs (autograd Hessian errors)."),
    output: Path = _OUT,
    overwrite: bool = _OVERWRITE,
) -> None:
    """Maximum-likelihood fit on the interpolated scan.  Example: unfoldmem fit ll.root"""
    from unfoldmem.inference.fit import fit as do_fit
    from unfoldmem.inference.fit import grid_objective

    if method not in ("minuit", "lbfgs"):
        opt = "--method"
        raise CardError(opt, method, "expected minuit or lbfgs")
    if output is not None:
        check_writable(output, overwrite)
    lik = _load(ll)
    res = do_fit(grid_objective(lik), method=method)
    typer.echo(f"fit ({res.method}) {'valid' if res.valid else 'NOT valid'}, −lnL = {res.nll_min:.6g}")
    for n, v, e in zip(res.names, res.values, res.errors, strict=True):
        line = f"  {n} = {v:.6g} ± {e:.3g} (HESSE)"
        for _cl, (lo, hi) in res.minos[n].items():
            line += f", MINOS {'?' if lo is None else f'{lo:+.3g}'} {'?' if hi is None else f'{hi:+.3g}'}"
        typer.echo(line)
    if len(res.names) > 1:
        typer.echo("correlation:\n" + "\n".join("  " + " ".join(f"{c:+.3f}" for c in row)
                                                  for row in res.correlation))
    if output is not None:
        from unfoldmem.inference.plots import plot_contour, plot_scan
        from unfoldmem.inference.scan import Scan1D
        from unfoldmem.inference.scan import scan as do_scan

        sc = do_scan(lik, n_replicas=0) if len(res.names) <= 2 else None
        plot = (lambda p: plot_scan(sc, p, fit=res)) if isinstance(sc, Scan1D) else (
            lambda p: plot_contour(sc, p))
        _write(output, overwrite, res.to_dict(), "fit", plot)


def posterior(
    ll: Path = _LL,
    prior: list[str] = typer.Option(..., "--prior", help="NAME=uniform:LOW:HIGH or NAME=normal:MEAN:SIGMA"),
    samples: int = typer.Option(1000, "--samples", help="NUTS samples per chain."),
    warmup: int = typer.Option(500, "--warmup", help="NUTS warm-up steps per chain."),
    chains: int = typer.Option(2, "--chains", help="Chains, run one after another."),
    seed: int = typer.Option(0, "--seed"),
    output: Path = _OUT,
    overwrite: bool = _OVERWRITE,
) -> None:
    """NUTS posterior of θ.  Example: unfoldmem posterior ll.root --prior m_t=uniform:170:176"""
    from unfoldmem.inference.fit import grid_objective
    from unfoldmem.inference.plots import plot_posterior
    from unfoldmem.inference.posterior import parse_prior, sample_posterior

    priors = dict(parse_prior(p) for p in prior)
    if output is not None:
        check_writable(output, overwrite)
    res = sample_posterior(grid_objective(_load(ll)), priors, num_samples=samples, warmup=warmup,
                           num_chains=chains, seed=seed, progress=not state.quiet)
    for n, s in res.summary().items():
        typer.echo(f"{n} = {s['mean']:.6g} ± {s['std']:.3g}  68% CI [{s['ci68'][0]:.6g}, "
                   f"{s['ci68'][1]:.6g}]  95% CI [{s['ci95'][0]:.6g}, {s['ci95'][1]:.6g}]  "
                   f"ESS {s['ess']:.0f}  R-hat {s['r_hat']:.3f}")
    _write(output, overwrite, res.to_dict(), "posterior", lambda p: plot_posterior(res, p))


def _parse_true(items: list[str]) -> dict[str, float]:
    out = {}
    for text in items:
        name, _, value = text.partition("=")
        try:
            out[name] = float(value)
        except ValueError as exc:
            raise CardError(_TRUE_OPT, text, "expected NAME=VALUE, e.g. m_t=173") from exc
    return out


def calibrate(
    ll: Path = _LL,
    true: list[str] = typer.Option(..., "--true", help="The θ the events were simulated at: NAME=VALUE."),
    n_pseudo: int = typer.Option(200, "--n-pseudo", help="Number of pseudo-experiments."),
    n_events: float = typer.Option(None, "--n-events", help="Expected events per pseudo-experiment (default N/10)."),
    seed: int = typer.Option(0, "--seed"),
    output: Path = _OUT,
    overwrite: bool = _OVERWRITE,
    workers: int = _WORKERS,
    scheduler: str = _SCHEDULER,
    chunk_size: int = _CHUNK,
) -> None:
    """Bootstrap pseudo-experiments: bias, pulls, coverage.  Example: unfoldmem calibrate ll.root --true m_t=173"""
    from unfoldmem.inference.calibration import calibrate as do_calibrate
    from unfoldmem.inference.plots import plot_calibration

    theta_true = _parse_true(true)
    lik = _load(ll)
    missing = [n for n in lik.names if n not in theta_true]
    if missing:
        raise CardError(_TRUE_OPT, missing[0], f"no true value given; parameters: {lik.names}")
    if output is not None:
        check_writable(output, overwrite)
    res = do_calibrate(lik, theta_true, n_pseudo, n_events, seed=seed, chunk_size=chunk_size,
                       scheduler=scheduler, workers=workers)
    for n, s in res.summary().items():
        typer.echo(
            f"{n}: bias {s['bias']:+.3g} ± {s['bias_err']:.2g} ({s['bias_over_sigma']:+.2f} σ), "
            f"pull mean {s['pull_mean']:+.3f} ± {s['pull_mean_err']:.3f}, "
            f"width {s['pull_width']:.3f} ± {s['pull_width_err']:.3f}, "
            f"coverage 68% {s['coverage_0.6827']:.3f}, 95% {s['coverage_0.9500']:.3f} "
            f"({s['n_pseudo']} good pseudo-experiments, {s['n_failed']} failed or at the grid "
            f"edge, {res.n_events_mean:.0f} events each)")
    _write(output, overwrite, res.to_dict(), "calibration", lambda p: plot_calibration(res, p))


def register(app: typer.Typer) -> None:
    """Add ``scan``, ``fit``, ``posterior`` and ``calibrate`` to ``app``."""
    app.command("scan")(scan)
    app.command("fit")(fit)
    app.command("posterior")(posterior)
    app.command("calibrate")(calibrate)
