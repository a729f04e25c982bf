r"""OmniFold replicas for uncertainties: a classifier-seed ensemble and a Poisson bootstrap."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from unfoldmem.unfold.classifier import EventFeatures, train_classifier
from unfoldmem.unfold.omnifold_config import OmniFoldConfig
from unfoldmem.unfold.omnifold_iteration import omnifold
from unfoldmem.unfold.omnifold_step import Trainer

__all__ = ["omnifold_replicas"]


def omnifold_replicas(
    data: EventFeatures,
    sim_reco: EventFeatures,
    sim_gen: EventFeatures,
    *,
    n_ensemble: int = 1,
    n_bootstrap: int = 0,
    seed: int = 0,
    bootstrap_sim: bool = True,
    sim_weights: Tensor | None = None,
    data_weights: Tensor | None = None,
    pass_reco: Tensor | None = None,
    pass_gen: Tensor | None = None,
    config: OmniFoldConfig | None = None,
    trainer: Trainer = train_classifier,
) -> dict[str, Any]:
    """Replicas of the unfolded weights for uncertainties: an ensemble and a data bootstrap.

    The ensemble repeats OmniFold with different classifier seeds (the spread is the
    training/model uncertainty); the bootstrap multiplies the data weights by Poisson(1)
    counts (the spread is the data's statistical uncertainty) and also changes the seeds. With
    ``bootstrap_sim`` (default) each bootstrap replica also multiplies the simulation's weights
    by independent Poisson(1) counts: the finite simulation enters both the unfolded
    histogram and every classifier it trains, and only a resampling of it carries the second
    part (measured on tt̄: the data-only bootstrap under-covered the top-pt bins). Combine
    them with :func:`unfoldmem.unfold.omnifold_uncertainty.unfolded_covariance`.

    Returns:
        dict with ``ensemble`` ((n_ensemble, n_sim) final weights), ``bootstrap``
        ((n_bootstrap, n_sim), the simulation's Poisson counts included), and ``results``
        (every :class:`OmniFoldResult`, ensemble first). A replica that diverged carries the
        weights of its last usable iteration (the prior if it diverged at once): leave it out
        of a spread (``results[i].diverged``).
    """
    config = config or OmniFoldConfig()
    rng = np.random.default_rng(seed)
    wd = (
        torch.ones(len(data), dtype=torch.float64)
        if data_weights is None
        else torch.as_tensor(data_weights).double()
    )
    n_sim = len(sim_gen)
    ws = (
        torch.ones(n_sim, dtype=torch.float64)
        if sim_weights is None
        else torch.as_tensor(sim_weights).double()
    )
    sim_rng = np.random.default_rng([seed, 1])
    kw = {
        "pass_reco": pass_reco,
        "pass_gen": pass_gen,
        "trainer": trainer,
    }
    out: dict[str, Any] = {"ensemble": [], "bootstrap": [], "results": []}
    for i in range(n_ensemble + n_bootstrap):
        c = config.model_copy(deep=True)
        c.classifier.seed = config.classifier.seed + 1000 * (i + 1)
        dw, sw = wd, ws
        if i >= n_ensemble:
            dw = wd * torch.from_numpy(rng.poisson(1.0, len(data)).astype(np.float64))
            if bootstrap_sim:
                sw = ws * torch.from_numpy(sim_rng.poisson(1.0, n_sim).astype(np.float64))
        res = omnifold(data, sim_reco, sim_gen, data_weights=dw, sim_weights=sw, config=c, **kw)
        out["results"].append(res)
        out["ensemble" if i < n_ensemble else "bootstrap"].append(res.weights())
    for key in ("ensemble", "bootstrap"):
        out[key] = torch.stack(out[key]) if out[key] else torch.zeros(0, n_sim, dtype=torch.float64)
    return out
