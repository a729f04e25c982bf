r"""The dimuon Gaussian toy of the cINN unfolding tests, and its cINN trained once per session.

Two muons (μ⁻, μ⁺) with independent log-normal pt (40 GeV · e^{0.25 z}), η ~ N(η₀, 1) and
uniform φ, plus two beam partons along z; the parametric detector smears pt by 10 %, η by
σ_η = 0.4 and φ by 0.1 rad. For η the posterior is the conjugate Gaussian
N(η_r/(1+σ²), σ²/(1+σ²)) (η₀ = 0). Used by the unfolding, acceptance, iterative, weighted-data,
CLI and CUDA tests.
"""

from __future__ import annotations

import functools

import awkward as ak
import numpy as np
import torch

from unfoldmem.cards.detector import DetectorCard
from unfoldmem.cards.model import ModelCard
from unfoldmem.simulate.detector import ParametricDetector
from unfoldmem.unfold.cinn_unfold import ModelLayout
from unfoldmem.unfold.iterative import Simulation, train_cinn

__all__ = ["KW", "MODEL_CARD", "SIGMA_ETA", "make_toy", "toy_detector", "trained_toy"]

SIGMA_ETA = 0.4
MODEL_CARD = ModelCard(
    name="toy",
    flow={"transforms": 4, "hidden": [48, 48], "bins": 8},
    condition={"embed": 32, "hidden": [64], "context": 16},
    training={"epochs": 30, "batch_size": 128, "lr": 6e-3, "patience": 0, "seed": 1},
    encoding={"max_jets": 1, "max_leptons": 2},
)


def toy_detector(eta_max: float = 10.0, efficiency: float = 1.0) -> DetectorCard:
    """Muon-only parametric detector of the toy (no ISR, small MET noise)."""
    return DetectorCard(
        muons={
            "mass": 0.1056583755,
            "pt_min": 1.0,
            "eta_max": eta_max,
            "eta_edges": [0.0, 20.0],
            "resolution": {"a": [0.10], "b": [0.0]},
            "sigma_eta": [SIGMA_ETA],
            "sigma_phi": [0.1],
            "efficiency": [efficiency],
        },
        isr={"distribution": "none", "mean": 0.0},
        met={"noise": 5.0, "noise_sumet": 0.0},
    )


def make_toy(
    n: int,
    seed: int = 1,
    eta_mean: float = 0.0,
    pt_scale: float = 40.0,
    eta_max: float = 10.0,
    efficiency: float = 1.0,
    weight: np.ndarray | None = None,
) -> tuple[ak.Array, ak.Array]:
    """Detector records (passing events) and parton records (all events) of the toy."""
    g = np.random.default_rng(seed)
    pt = pt_scale * np.exp(0.25 * g.standard_normal((n, 2)))
    eta = g.normal(eta_mean, 1.0, (n, 2))
    phi = g.uniform(-np.pi, np.pi, (n, 2))
    m = 0.1056583755
    mom = np.stack(
        [
            np.sqrt((pt * np.cosh(eta)) ** 2 + m * m),
            pt * np.cos(phi),
            pt * np.sin(phi),
            pt * np.sinh(eta),
        ],
        -1,
    )
    beam = np.zeros((n, 2, 4))
    beam[:, 0, [0, 3]] = 100.0
    beam[:, 1, 0], beam[:, 1, 3] = 100.0, -100.0
    allp = np.concatenate([beam, mom], 1)
    out = ParametricDetector(toy_detector(eta_max, efficiency)).simulate(
        torch.from_numpy(mom),
        torch.tensor([[13, -13]]).expand(n, 2),
        torch.Generator().manual_seed(seed),
    )
    reco = out.to_awkward()
    passed = (out.muons.count == 2).numpy()
    eid = np.arange(n, dtype=np.int64) + 1_000_000 * seed
    w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
    pdg = np.tile(np.array([2, -2, 13, -13], dtype=np.int32), (n, 1))
    parts = {k: allp[..., i].reshape(-1) for i, k in enumerate(("E", "px", "py", "pz"))}
    parts["pdgId"] = pdg.reshape(-1)
    partons = ak.zip(
        {
            "event_id": eid,
            "weight": w,
            "pass_reco": passed,
            "x1": np.full(n, 0.01),
            "x2": np.full(n, 0.01),
            "id1": np.full(n, 2, np.int32),
            "id2": np.full(n, -2, np.int32),
            "partons": ak.unflatten(ak.zip(parts), np.full(n, 4)),
        },
        depth_limit=1,
    )
    f = ("pt", "eta", "phi", "mass")
    det = ak.zip(
        {
            "event_id": eid,
            "weight": w,
            "jets": reco.jets[[*f, "btag"]],
            "muons": reco.muons[[*f, "charge"]],
            "electrons": reco.electrons[[*f, "charge"]],
            "met": reco.met,
        },
        depth_limit=1,
    )
    return det[passed], partons


@functools.cache
def trained_toy() -> tuple[torch.nn.Module, Simulation, ModelLayout]:
    """A small cINN trained once per session on 4000 toy events (η₀ = 0), ~25 s of one core."""
    torch.set_num_threads(1)
    det, par = make_toy(4000, seed=1)
    sim = Simulation(det, par)
    model, _ = train_cinn(MODEL_CARD, sim)
    return model, sim, ModelLayout.from_training(par[sim.pass_index], det)


KW = {"max_jets": 1, "max_leptons": 2, "quiet": True}
