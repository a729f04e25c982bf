r"""The Drell–Yan-like dimuon toy with misses and fakes of the OmniFold CLI tests (CPU, CUDA)."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import torch

from unfoldmem.io import write_events
from unfoldmem.physics.lorentz import from_ptetaphim

__all__ = ["write_dimuon_omnifold_file"]


def _j(x: np.ndarray) -> ak.Array:
    return ak.from_regular(ak.Array(x))


def write_dimuon_omnifold_file(path: Path, n: int, pt_mean: float, seed: int, id0: int) -> None:
    """μ⁺μ⁻ pairs (pt ~ N(pt_mean, 8) GeV) smeared 5% in pt; reco needs pt > 25, |η| < 2.4;
    misses stay in the parton tree (``pass_reco`` false), n/20 fakes are detector-only."""
    rng = np.random.default_rng(seed)
    pt = np.abs(rng.normal(pt_mean, 8.0, (n, 2))) + 1.0
    eta = rng.normal(0.0, 1.3, (n, 2))
    phi = rng.uniform(-np.pi, np.pi, (n, 2))
    m = np.full((n, 2), 0.10566)
    mom = from_ptetaphim(torch.from_numpy(np.stack([pt, eta, phi, m], -1))).numpy()
    ids = np.arange(id0, id0 + n, dtype=np.int64)
    rpt = pt * (1 + 0.05 * rng.normal(size=(n, 2)))
    reco = np.all((rpt > 25) & (np.abs(eta) < 2.4), axis=1)
    n_fake = n // 20  # detector-only events: fakes
    fpt = rng.uniform(25, 60, (n_fake, 2))
    feta = rng.normal(0, 1, (n_fake, 2))
    fphi = rng.uniform(-np.pi, np.pi, (n_fake, 2))

    def muons(p: np.ndarray, e: np.ndarray, f: np.ndarray) -> ak.Array:
        k = len(p)
        return ak.zip(
            {
                "pt": _j(p),
                "eta": _j(e),
                "phi": _j(f),
                "mass": _j(np.full((k, 2), 0.10566)),
                "charge": _j(np.tile([-1.0, 1.0], (k, 1))),
            }
        )

    mu = ak.concatenate([muons(rpt[reco], eta[reco], phi[reco]), muons(fpt, feta, fphi)])
    nd = len(mu)
    empty = ak.unflatten(np.zeros(0), np.zeros(nd, dtype=np.int64))
    jets = ak.zip({"pt": empty, "eta": empty, "phi": empty, "mass": empty, "btag": empty})
    ele = ak.zip({"pt": empty, "eta": empty, "phi": empty, "mass": empty, "charge": empty})
    det = ak.zip(
        {
            "event_id": np.concatenate([ids[reco], np.arange(10**7 + id0, 10**7 + id0 + n_fake)]),
            "weight": np.ones(nd),
            "jets": jets,
            "muons": mu,
            "electrons": ele,
            "met": ak.zip({"pt": rng.exponential(5.0, nd), "phi": rng.uniform(-3, 3, nd)}),
        },
        depth_limit=1,
    )
    par = ak.zip(
        {
            "event_id": ids,
            "weight": np.ones(n),
            "pass_reco": reco,
            "x1": np.full(n, 0.1),
            "x2": np.full(n, 0.1),
            "id1": np.full(n, 2, np.int32),
            "id2": np.full(n, -2, np.int32),
            "partons": ak.zip(
                {
                    "E": _j(mom[..., 0]),
                    "px": _j(mom[..., 1]),
                    "py": _j(mom[..., 2]),
                    "pz": _j(mom[..., 3]),
                    "pdgId": _j(np.tile(np.array([13, -13], np.int32), (n, 1))),
                }
            ),
        },
        depth_limit=1,
    )
    write_events(path, det, par)
