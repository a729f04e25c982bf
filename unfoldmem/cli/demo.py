r"""`unfoldmem demo`: a complete small analysis, each step the command a user would type.

generate (simulation + pseudo-data at a shifted θ) → train cINN and transfer flows → unfold →
omnifold → MEM likelihoods → scan and fit, then ``report.md`` with the figures and numbers.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from unfoldmem.cli._common import console, state
from unfoldmem.errors import UnfoldmemError
from unfoldmem.io.atomic import check_writable

__all__ = ["register"]


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and parameter points of one demo (Drell–Yan: θ = m_Z; tt̄: θ = m_t), GeV."""

    process: str
    run_card: str
    process_card: str
    param: str
    theta_sim: float
    theta_data: float
    grid: str
    n_sim: int
    n_data: int
    n_mem_events: int
    cinn_card: str
    transfer_card: str
    epochs: int
    transfer_epochs: int = 2


PLANS = {
    "drell_yan": DemoPlan(
        "drell_yan", "cards/runs/drell_yan_demo.yaml", "cards/processes/drell_yan.yaml", "m_z",
        91.1876, 91.6876, "90.4:92.8:7", 20000, 6000, 150, "cards/models/cinn_demo.yaml",
        "cards/models/transfer_demo.yaml", 5,
    ),
    "ttbar": DemoPlan(
        "ttbar_semileptonic", "cards/runs/ttbar_small.yaml", "cards/processes/ttbar_semileptonic.yaml",
        "m_t", 172.5, 173.5, "170.5:176.5:7", 12000, 3000, 60, "cards/models/cinn_demo.yaml",
        "cards/models/transfer_demo.yaml", 4,
    ),
}


class DemoStepError(UnfoldmemError):
    """Raised when one step of the demo fails; names the command and its last error line."""


def _run(cmd: list[str], log: list[dict[str, Any]], cwd: Path) -> None:
    shown = "unfoldmem " + " ".join(shlex.quote(c) for c in cmd)
    if not state.quiet:
        console.print(f"[bold]$ {shown}[/bold]")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "unfoldmem", "--quiet", *cmd], cwd=cwd,
                          capture_output=True, text=True)
    dt = time.perf_counter() - t0
    log.append({"command": shown, "seconds": round(dt, 1), "stdout": proc.stdout.strip()})
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        msg = f"demo step failed after {dt:.0f} s: `{shown}`: {last}"
        raise DemoStepError(msg)
    if not state.quiet:
        console.print(f"  done in {dt:.1f} s")


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _figures(folder: Path, root: Path) -> list[str]:
    return [f"![{p.stem}]({p.relative_to(root).as_posix()})" for p in sorted(folder.rglob("*.png"))]


def run_demo(out: Path, plan: DemoPlan, seed: int = 1) -> Path:
    """Run every step into ``out`` (which must not exist yet) and write ``out/report.md``."""
    (out / "models").mkdir(parents=True)
    repo = Path.cwd()
    p = lambda name: str(out / name)  # noqa: E731
    log: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    th = f"{plan.param}="
    _run(["generate", plan.run_card, "-n", str(plan.n_sim), "-o", p("sim.root"), "--seed", str(seed)], log, repo)
    # pseudo-data: another seed and a shifted parameter, so unfolding and fit must find it
    data_card = out / "data_run.yaml"
    import yaml

    card = yaml.safe_load((repo / plan.run_card).read_text())
    card["process"] = str((repo / plan.process_card).resolve())
    card["detector"] = str((repo / plan.run_card).parent.joinpath(card["detector"]).resolve())
    card["theta"] = {**(card.get("theta") or {}), plan.param: plan.theta_data}
    data_card.write_text(yaml.safe_dump(card))
    _run(["generate", str(data_card), "-n", str(plan.n_data), "-o", p("data.root"), "--seed", str(seed + 100)], log, repo)
    _run(["train", plan.cinn_card, "--data", p("sim.root"), "-o", p("models/cinn"), "--epochs", str(plan.epochs)], log, repo)
    _run(["train", plan.transfer_card, "--data", p("sim.root"), "-o", p("models/transfer"), "--epochs", str(plan.transfer_epochs)], log, repo)
    _run(["unfold", p("data.root"), "--model", p("models/cinn"), "-n", "20", "-o", p("unfold"), "--process", plan.process], log, repo)
    _run(["omnifold", p("data.root"), "--sim", p("sim.root"), "-k", "3", "--epochs", "8", "-o", p("omnifold")], log, repo)
    _run(["likelihood", p("data.root"), "--process", plan.process_card, "--model", p("models/cinn"),
          "--theta", f"{th}{plan.grid}", "--tf", "exact", "--sim", p("sim.root"),
          "--max-events", str(plan.n_mem_events), "--precision", "0.02", "--n-max", "4096",
          "-o", p("ll.root")], log, repo)
    _run(["scan", p("ll.root"), "-p", plan.param, "-o", p("scan")], log, repo)
    _run(["fit", p("ll.root"), "-o", p("fit")], log, repo)
    total = time.perf_counter() - t_start
    report = out / "report.md"
    report.write_text(_report(out, plan, log, total))
    return report


def _report(out: Path, plan: DemoPlan, log: list[dict[str, Any]], total: float) -> str:
    unfold = _json(out / "unfold" / "summary.json")
    omni = _json(out / "omnifold" / "summary.json")
    fit = _json(out / "fit" / "fit.json")
    scan = _json(out / "scan" / "scan.json")
    lines = [
        f"# unfoldmem demo: {plan.process}",
        "",
        f"Simulation at {plan.param} = {plan.theta_sim} GeV ({plan.n_sim} events), pseudo-data at "
        f"{plan.param} = {plan.theta_data} GeV ({plan.n_data} events, another seed). "
        f"Total time {total / 60:.1f} min.",
        "",
        "## Steps",
        "",
        "| command | seconds |",
        "|---|---|",
        *[f"| `{s['command']}` | {s['seconds']} |" for s in log],
        "",
        "## Fitted parameter vs the value the pseudo-data was made with",
        "",
        f"True {plan.param} = {plan.theta_data} GeV.",
        "",
        "```json",
        json.dumps({"fit": fit, "scan": scan}, indent=1, default=str)[:4000],
        "```",
        "",
        "## cINN unfolding vs truth",
        "",
        "```json",
        json.dumps(unfold, indent=1, default=str)[:4000],
        "```",
        "",
        *_figures(out / "unfold", out),
        "",
        "## OmniFold (and IBU) vs truth",
        "",
        "```json",
        json.dumps(omni, indent=1, default=str)[:4000],
        "```",
        "",
        *_figures(out / "omnifold", out),
        "",
        "## Likelihood scan",
        "",
        *_figures(out / "scan", out),
        *_figures(out / "fit", out),
        "",
    ]
    return "\n".join(lines)


def demo(
    output: Path = typer.Option(Path("demo-output"), "--output", "-o", help="Output directory."),
    process: str = typer.Option("drell_yan", help=f"One of: {', '.join(PLANS)}."),
    seed: int = typer.Option(1, help="Seed of the simulation (data uses seed + 100)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
) -> None:
    """Run a complete small analysis and write OUTPUT/report.md.

    Example: ``unfoldmem demo -o demo-output --overwrite`` (about 10 minutes on 2 CPU cores).
    """
    if process not in PLANS:
        msg = f"--process must be one of {', '.join(PLANS)}, not {process!r}"
        raise typer.BadParameter(msg)
    check_writable(output, overwrite)
    if output.exists():
        import shutil

        shutil.rmtree(output)
    report = run_demo(output, PLANS[process], seed)
    console.print(f"report: {report}")


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""
    app.command("demo")(demo)
