r"""Run every benchmarks/bench_*.py, echo their JSON lines and collect them in results.json.

Each benchmark runs as ``python -m benchmarks.<name>`` from the repository root, one after the
other (they time themselves; running two at once would slow both). Every JSON line it prints
(``{"figure", "value", "unit", "baseline", "baseline_value", "ratio", ...}``) is echoed with
``"bench"`` added and the peer keys present (``null`` where a figure has no peer). A benchmark
that exits non-zero, prints a malformed JSON line or no line at all is *failed*: its name and
the end of its stderr are printed and ``run_all`` exits 1; the others still run.

``benchmarks/results.json`` (written atomically, also when something failed) holds ``meta``
(date, machine load, CPU count, torch version and threads, OMP_NUM_THREADS, python, quick mode),
``benches`` (per benchmark: arguments, end date, wall seconds, load before and after, exit
code, problems) and ``results`` (every row). ``--only NAME`` re-runs some benchmarks and keeps
the other benchmarks' rows and records (``meta`` then describes the latest run).

``--quick`` passes small sizes: a benchmark's own ``--quick`` when it has one, else the sizes
of :data:`QUICK_ARGS` for the options its argparse defines (read from its source, so a renamed
option is simply not passed). Quick numbers are smoke tests, not measurements.

``--docs`` rewrites the results table of docs/benchmarks.md from results.json (runs nothing).

Run: ``python -m benchmarks.run_all [--quick] [--only bench_nis ...] [--timeout S]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results.json"
DOCS = ROOT / "docs" / "benchmarks.md"
PEER_KEYS = ("baseline", "baseline_value", "ratio")

# Small sizes per benchmark for --quick, passed only for options the script defines.
QUICK_ARGS: dict[str, dict[str, str]] = {
    "bench_flows": {"--events": "200", "--samples": "20", "--train-events": "2000"},
    "bench_matrix_elements": {"--batch": "5000"},
    "bench_mem": {"--events": "2", "--ttbar-events": "1", "--n-max": "65536", "--epochs": "2",
                  "--train-events": "2000", "--precision": "0.05"},
    "bench_physics_core": {"--n": "10000"},
    "bench_simulation": {"--events": "2000", "--detector-events": "100000",
                         "--rss-events": "20000"},
}

__all__ = ["QUICK_ARGS", "bench_args", "main", "parse_rows", "results_markdown"]


def benches() -> list[str]:
    """Module names of every benchmark script, sorted."""
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def _defines(source: str, option: str) -> bool:
    return re.search(rf"add_argument\(\s*[\"']{re.escape(option)}[\"']", source) is not None


def bench_args(name: str, quick: bool) -> list[str]:
    """Command-line arguments for one benchmark (none unless ``quick``)."""
    if not quick:
        return []
    source = (HERE / f"{name}.py").read_text()
    if _defines(source, "--quick"):
        return ["--quick"]
    args: list[str] = []
    for option, value in QUICK_ARGS.get(name, {}).items():
        if _defines(source, option):
            args += [option, value]
    return args


def parse_rows(stdout: str, name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON rows of a benchmark's stdout (peer keys filled in) and problems with them."""
    rows, problems = [], []
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"malformed JSON line ({exc}): {line[:200]}")
            continue
        missing = [k for k in ("figure", "value", "unit") if k not in row]
        if missing:
            problems.append(f"JSON line without {', '.join(missing)}: {line[:200]}")
            continue
        rows.append({"bench": name, **{k: None for k in PEER_KEYS}, **row})
    if not rows and not problems:
        problems.append("printed no JSON line")
    return rows, problems


def _load() -> str:
    """The 1, 5 and 15 minute load averages."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_bench(name: str, args: list[str], timeout: float | None) -> dict[str, Any]:
    """Run one benchmark, echoing its JSON lines as they come; its record for results.json."""
    load_before, t0 = _load(), time.perf_counter()
    cmd = [sys.executable, "-m", f"benchmarks.{name}", *args]
    print(f"# {name} {' '.join(args)}  (load {load_before})", file=sys.stderr, flush=True)
    killed: list[bool] = []

    def kill() -> None:
        killed.append(True)
        proc.kill()

    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        # stdout is read line by line until the benchmark ends, so the timeout is a timer
        timer = threading.Timer(timeout, kill) if timeout else None
        if timer:
            timer.start()
        out: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if line.startswith("{"):
                rows, _ = parse_rows(line, name)
                for row in rows:
                    print(json.dumps(row), flush=True)
        returncode = proc.wait()
        if timer:
            timer.cancel()
        err.seek(0)
        stderr = err.read()
    rows, problems = parse_rows("".join(out), name)
    if returncode != 0:
        problems.insert(0, f"timed out after {timeout} s" if killed else f"exit code {returncode}")
    return {"args": args, "date": _now(), "seconds": round(time.perf_counter() - t0, 1),
            "load_before": load_before, "load_after": _load(), "returncode": returncode,
            "problems": problems, "stderr_tail": stderr[-2000:] if problems else "",
            "rows": rows}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _meta(quick: bool) -> dict[str, Any]:
    import torch

    return {
        "date": _now(),
        "load": _load(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "quick": quick,
    }


def _previous() -> dict[str, Any]:
    try:
        data = json.loads(RESULTS.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) and "results" in data else {}


def write_results(data: dict[str, Any]) -> None:
    """results.json, atomically (a crash leaves the previous file)."""
    from unfoldmem.io.atomic import atomic_path

    with atomic_path(RESULTS, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x).replace("|", "\\|")


def results_markdown(data: dict[str, Any]) -> str:
    """The results table of docs/benchmarks.md: one row per figure, with its peer and ratio."""
    meta = data.get("meta", {})
    lines = [f"Latest run: {meta.get('date', '?')}, load {meta.get('load', '?')}, "
             f"{meta.get('cpu_count', '?')} CPUs, torch {meta.get('torch', '?')} "
             f"({meta.get('torch_threads', '?')} threads, OMP_NUM_THREADS="
             f"{meta.get('omp_num_threads')}){', QUICK sizes (smoke test)' if meta.get('quick') else ''}.",
             "", "| bench | figure | value | unit | peer | peer value | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in data.get("results", []):
        lines.append(f"| {r['bench']} | `{r['figure']}` | {_fmt(r['value'])} | {_fmt(r['unit'])} | "
                     f"{_fmt(r['baseline'])} | {_fmt(r['baseline_value'])} | {_fmt(r['ratio'])} |")
    lines += ["", "| bench | arguments | finished | wall s | load before | load after | status |",
              "|---|---|---|---|---|---|---|"]
    for name, b in sorted(data.get("benches", {}).items()):
        status = ("; ".join(b.get("problems", [])) or "ok").replace("|", "\\|")[:200]
        lines.append(f"| {name} | `{' '.join(b.get('args', [])) or '(defaults)'}` | "
                     f"{b.get('date', '?')} | {b.get('seconds')} | {b.get('load_before')} | {b.get('load_after')} | "
                     f"{status} |")
    return "\n".join(lines)


def update_docs(data: dict[str, Any]) -> None:
    """Replace the text between the results markers of docs/benchmarks.md."""
    text = DOCS.read_text()
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    DOCS.write_text(f"{head}{begin}\n{results_markdown(data)}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; 0 when all succeeded, 1 when any failed (named on stderr)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run these benchmarks only")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
    ap.add_argument("--docs", action="store_true",
                    help="rewrite the table of docs/benchmarks.md from results.json and exit")
    args = ap.parse_args(argv)
    if args.docs:
        update_docs(_previous())
        return 0
    names = benches()
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        ap.error(f"no benchmark {', '.join(unknown)}; have {', '.join(names)}")
    todo = [n for n in names if not args.only or n in args.only]
    data = _previous() if args.only else {}
    data = {"meta": _meta(args.quick), "benches": data.get("benches", {}),
            "results": [r for r in data.get("results", []) if r.get("bench") not in todo]}
    t0 = time.perf_counter()
    for name in todo:
        record = run_bench(name, bench_args(name, args.quick), args.timeout)
        data["results"] += record.pop("rows")
        data["benches"][name] = record
        if record["problems"]:
            print(f"FAILED {name}: {'; '.join(record['problems'])}\n{record['stderr_tail']}",
                  file=sys.stderr, flush=True)
    data["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    data["meta"]["load_after"] = _load()
    write_results(data)
    failed = [n for n in todo if data["benches"][n]["problems"]]
    n_rows = sum(r["bench"] in todo for r in data["results"])
    print(f"# {n_rows} figures from {len(todo)} benchmarks in {data['meta']['seconds']} s "
          f"-> {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    if failed:
        print(f"# failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
