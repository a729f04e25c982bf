"""Shared fixtures: seeded RNGs, native event files made on the fly, paths to real test data."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent


# Set at import too: module-scoped fixtures (shared trained toys) run before the one below.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    # Small tensors: one intra-op thread avoids oversubscription (measured 35x slower with 2
    # threads on a loaded 2-core machine, see benchmarks/bench_physics_core.py --threads); reset
    # around every test so a test that changes the thread count cannot leak it.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


def make_detector_events(n: int, seed: int = 1) -> ak.Array:
    """Native detector records with random kinematics (not physics: for I/O tests only)."""
    rng = np.random.default_rng(seed)
    nj = rng.integers(0, 7, n)
    nm = rng.integers(0, 3, n)

    def jag(counts: np.ndarray, lo: float, hi: float) -> ak.Array:
        return ak.unflatten(rng.uniform(lo, hi, int(counts.sum())), counts)

    def coll(counts: np.ndarray, extra: str) -> ak.Array:
        return ak.zip(
            {
                "pt": jag(counts, 20, 200),
                "eta": jag(counts, -2.5, 2.5),
                "phi": jag(counts, -np.pi, np.pi),
                "mass": jag(counts, 0, 10),
                extra: ak.unflatten(rng.integers(0, 2, int(counts.sum())).astype(float), counts),
            }
        )

    return ak.zip(
        {
            "event_id": np.arange(n, dtype=np.int64),
            "weight": rng.uniform(0.5, 1.5, n),
            "jets": coll(nj, "btag"),
            "muons": coll(nm, "charge"),
            "electrons": coll(np.zeros(n, dtype=int), "charge"),
            "met": ak.zip({"pt": rng.exponential(30, n), "phi": rng.uniform(-np.pi, np.pi, n)}),
        },
        depth_limit=1,
    )


@pytest.fixture
def detector_events() -> ak.Array:
    return make_detector_events(500)
