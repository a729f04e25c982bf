"""Run every benchmarks/bench_*.py (as `python -m benchmarks.<name>` from the repo root), echo their JSON lines and collect them in results.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    rows, failed = [], []
    for script in sorted(HERE.glob("bench_*.py")):
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.{script.stem}"], capture_output=True, text=True, cwd=HERE.parent)
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                row["script"] = script.name
                rows.append(row)
                print(json.dumps(row), flush=True)
        if proc.returncode != 0:
            failed.append(script.name)
            print(proc.stderr[-2000:], file=sys.stderr)
    (HERE / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
