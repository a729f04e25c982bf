"""Run as `python -m benchmarks.bench_io`. Chunked reading of a 2-million-event file: peak RSS against uproot's own iterate of the same
branches (the peer), each in a fresh process."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import emit
from tests.conftest import make_detector_events
from unfoldmem.io import EventWriter

N_EVENTS = 2_000_000
CHUNK = 200_000

READ_OURS = """
import resource, sys, time
import awkward as ak
from unfoldmem.io import iterate_detector
t0 = time.perf_counter(); n = 0; s = 0.0
for c in iterate_detector(sys.argv[1], step_size="50 MB"):
    n += len(c); s += float(ak.sum(c.jets.pt))
print(n, time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
READ_PEER = """
import resource, sys, time
import awkward as ak, uproot
t0 = time.perf_counter(); n = 0; s = 0.0
with uproot.open(sys.argv[1]) as f:
    t = f["Events"]
    for a in t.iterate(t.keys(), step_size="50 MB"):
        n += len(a); s += float(ak.sum(a["Jet_pt"]))
print(n, time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def _run(code: str, path: Path) -> tuple[int, float, float]:
    out = subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True, text=True)
    n, dt, rss = out.stdout.split()
    return int(n), float(dt), float(rss)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.root"
        chunk = make_detector_events(CHUNK)
        t0 = time.perf_counter()
        with EventWriter(path) as w:
            for i in range(N_EVENTS // CHUNK):
                w.write(detector=_shift(chunk, i * CHUNK))
        write_s = time.perf_counter() - t0
        n, dt, rss = _run(READ_OURS, path)
        n_peer, dt_peer, rss_peer = _run(READ_PEER, path)
        assert n == n_peer == N_EVENTS
        emit("io.read_peak_rss_2M_events", rss, "MiB", "uproot.iterate same file", rss_peer,
             target="< 1024 MiB", file_MB=path.stat().st_size / 2**20)
        emit("io.read_rate", n / dt, "events/s", "uproot.iterate raw arrays", n_peer / dt_peer)
        emit("io.write_rate", N_EVENTS / write_s, "events/s")


def _shift(chunk, offset: int):
    import awkward as ak

    return ak.with_field(chunk, chunk.event_id + offset, "event_id")


if __name__ == "__main__":
    main()
