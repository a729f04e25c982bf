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


def write_random_sim_file(path: Path, n: int = 400) -> Path:
    """A simulation file of :func:`make_detector_events` records and gg → dd̄ parton records with
    random kinematics (not physics: for training-mechanics tests)."""
    from unfoldmem.io import write_events

    det = make_detector_events(n, seed=3)
    rng = np.random.default_rng(4)
    pt = rng.uniform(20, 100, (n, 2))
    eta = rng.normal(0, 1, (n, 2))
    phi = rng.uniform(-np.pi, np.pi, (n, 2))
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2)
    beam = np.array([[3000.0, 0, 0, 3000.0], [2000.0, 0, 0, -2000.0]])
    four = np.concatenate([np.broadcast_to(beam, (n, 2, 4)), np.stack([e, px, py, pz], -1)], 1)
    ids = np.broadcast_to(np.array([21, 21, 1, -1], dtype=np.int32), (n, 4))
    partons = ak.zip(
        {
            "event_id": np.arange(n, dtype=np.int64),
            "weight": rng.uniform(0.5, 1.5, n),
            "pass_reco": np.ones(n, dtype=bool),
            "x1": np.full(n, 0.1),
            "x2": np.full(n, 0.2),
            "id1": np.full(n, 21, dtype=np.int32),
            "id2": np.full(n, 21, dtype=np.int32),
            "partons": ak.from_regular(
                ak.zip(
                    {
                        "E": four[..., 0],
                        "px": four[..., 1],
                        "py": four[..., 2],
                        "pz": four[..., 3],
                        "pdgId": ids,
                    }
                ),
                axis=1,
            ),
        },
        depth_limit=1,
    )
    return write_events(path, det, partons)


@pytest.fixture
def detector_events() -> ak.Array:
    return make_detector_events(500)
