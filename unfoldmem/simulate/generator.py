r"""Parton-level event generation: VEGAS-adapted importance sampling of the hadronic integrand,
unweighted (or kept weighted) and streamed in chunks, then detector, selection and writing.

References:
    G. P. Lepage, J. Comput. Phys. 27 (1978) 192; arXiv:2009.05112 (VEGAS, the ``vegas`` package).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import torch
import vegas
from torch import Tensor

from unfoldmem.cards.detector import DetectorCard
from unfoldmem.cards.run import GeneratorConfig, SelectionConfig
from unfoldmem.physics.hadronic import HadronicIntegrand
from unfoldmem.simulate.detector import DetectorOutput, ParametricDetector
from unfoldmem.simulate.selection import select

__all__ = ["EventGenerator", "GenerationSummary", "PartonChunk", "generate_file", "records"]


@dataclass
class PartonChunk:
    """A chunk of parton-level events.

    Arguments:
        momenta: (n, P, 4) final-state four-vectors (E, px, py, pz), GeV, lab frame.
        pdg: (n, P) PDG ids of the final state.
        x1, x2: (n,) momentum fractions; id1, id2: (n,) incoming PDG ids (channel drawn ∝ its
            contribution at this phase-space point).
        weight: (n,) relative weight: 1 for unweighted events (w/w_max for the rare overweight
            ones), w/⟨w⟩ for weighted events, so Σ weight ≈ n either way.
    """

    momenta: Tensor
    pdg: Tensor
    x1: Tensor
    x2: Tensor
    id1: Tensor
    id2: Tensor
    weight: Tensor

    def __len__(self) -> int:
        return int(self.weight.shape[0])


class EventGenerator:
    """Generate parton events of a hadronic integrand at fixed θ.

    VEGAS adapts a map x(y) of the unit hypercube to the integrand (``nitn_adapt`` iterations
    of ``neval`` points); then y ~ U[0,1]^d gives weights w = f(x(y))·|∂x/∂y| with
    E[w] = σ. A presample fixes σ̂ and w_max (set so that the overweight excess is at most
    ``config.max_overweight`` of σ); events are accepted with probability min(1, w/w_max)
    and overweight ones keep weight w/w_max > 1, so nothing is biased.

    Arguments:
        integrand: the :class:`~unfoldmem.physics.hadronic.HadronicIntegrand`.
        config: :class:`~unfoldmem.cards.run.GeneratorConfig`.
        seed: seeds VEGAS adaptation and every draw (same seed → same events).
        theta: θ overrides for the integrand (θ is fixed for the whole run).
    """

    def __init__(self, integrand: HadronicIntegrand, config: GeneratorConfig | None = None,
                 seed: int = 1, theta: dict[str, float] | None = None) -> None:
        self.integrand = integrand
        self.config = config or GeneratorConfig()
        self.theta = dict(theta or {})
        self.seed = seed
        self.rng = torch.Generator().manual_seed(seed)
        self._map: vegas.AdaptiveMap | None = None
        self.sigma = math.nan
        self.sigma_error = math.nan
        self.w_max = math.nan
        self.w_mean_nonzero = math.nan
        self.n_trials = 0
        self.n_overweight = 0
        self._sum_w = 0.0
        self._sum_w2 = 0.0

    # ---- adaptation -----------------------------------------------------------------------------

    def adapt(self) -> None:
        """Adapt the VEGAS map, then presample σ̂ ± error and w_max."""
        c = self.config
        integ = vegas.Integrator([[0.0, 1.0]] * self.integrand.dim)
        nrng = np.random.default_rng(self.seed)
        integ.set(ran_array_generator=lambda size: nrng.random(size))

        @vegas.lbatchintegrand
        def f(x: np.ndarray) -> np.ndarray:
            return self._weights_of_x(torch.from_numpy(np.ascontiguousarray(x))).numpy()

        integ(f, nitn=c.nitn_adapt, neval=c.neval)
        self._map = integ.map
        w = torch.cat([self._trial(min(c.batch, c.n_presample - i))[1]
                       for i in range(0, c.n_presample, c.batch)])
        self.sigma = float(w.mean())
        self.sigma_error = float(w.std() / math.sqrt(w.numel()))
        self.w_max = _w_max(w, self.config.max_overweight)
        nz = w[w > 0]
        if nz.numel() == 0:
            msg = "the integrand is zero at every presampled point (check the cuts and θ)"
            raise RuntimeError(msg)
        self.w_mean_nonzero = float(nz.mean())
        self.n_trials = self._sum_w = self._sum_w2 = 0  # generation statistics start here

    @property
    def efficiency(self) -> float:
        """Unweighting efficiency σ̂ / w_max."""
        return self.sigma / self.w_max

    def _weights_of_x(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            b = self.config.batch
            return torch.cat([self.integrand.weight(x[i:i + b], self.theta)
                              for i in range(0, len(x), b)])

    def _trial(self, n: int) -> tuple[Any, Tensor]:
        assert self._map is not None
        y = torch.rand(n, self.integrand.dim, dtype=torch.float64, generator=self.rng).numpy()
        x = np.empty_like(y)
        jac = np.empty(n, dtype=np.float64)
        self._map.map(y, x, jac)
        with torch.no_grad():
            point = self.integrand(torch.from_numpy(x), self.theta)
        w = point.weight * torch.from_numpy(jac)
        return point, torch.where(torch.isfinite(w), w, 0.0).clamp(min=0.0)

    # ---- generation ----------------------------------------------------------------------------

    def _events(self, point: Any, w: Tensor, keep: Tensor, weight: Tensor) -> PartonChunk:
        cw = point.channel_weights[keep]
        u = torch.rand(cw.shape[0], 1, dtype=torch.float64, generator=self.rng)
        cum = cw.cumsum(-1)
        idx = (cum < u * cum[:, -1:]).sum(-1).clamp(max=cw.shape[1] - 1)
        ch = torch.tensor(point.channels, dtype=torch.int32)[idx]
        mom = point.p_out[keep]
        pdg = torch.tensor(self.integrand.process.final_state, dtype=torch.int64)
        return PartonChunk(mom, pdg.expand(mom.shape[0], -1), point.x1[keep], point.x2[keep],
                           ch[:, 0], ch[:, 1], weight[keep])

    def generate(self, n_events: int, weighted: bool | None = None) -> Iterator[PartonChunk]:
        """Yield chunks of ``config.chunk_size`` events until ``n_events`` are made.

        Arguments:
            n_events: number of events (accepted events if unweighted, non-zero-weight
                trials if weighted).
            weighted: override ``config.weighted``.
        """
        if self._map is None:
            self.adapt()
        weighted = self.config.weighted if weighted is None else weighted
        done = 0
        while done < n_events:
            want = min(self.config.chunk_size, n_events - done)
            parts: list[PartonChunk] = []
            have = 0
            while have < want:
                frac = 1.0 if weighted else self.efficiency
                n_try = int(min(self.config.batch, max(1000, 1.2 * (want - have) / frac)))
                point, w = self._trial(n_try)
                self.n_trials += n_try
                self._sum_w += float(w.sum())
                self._sum_w2 += float((w * w).sum())
                if weighted:
                    keep = w > 0
                    weight = w / self.w_mean_nonzero
                else:
                    u = torch.rand(n_try, dtype=torch.float64, generator=self.rng)
                    keep = u * self.w_max < w
                    weight = (w / self.w_max).clamp(min=1.0)
                    self.n_overweight += int((w > self.w_max).sum())
                chunk = self._events(point, w, keep, weight)
                parts.append(chunk)
                have += len(chunk)
            out = _cat(parts, want)
            done += len(out)
            yield out

    def generation_sigma(self) -> tuple[float, float]:
        """σ ± error in pb from every trial made while generating (independent of the presample)."""
        n = max(self.n_trials, 1)
        mean = self._sum_w / n
        var = max(self._sum_w2 / n - mean * mean, 0.0)
        return mean, math.sqrt(var / n)


def _w_max(w: Tensor, fraction: float) -> float:
    """Smallest w_max whose overweight excess Σ(w - w_max)+ is ≤ ``fraction`` of Σw.

    Overweight events keep weight w/w_max, so this only trades efficiency for a few weights
    above 1; nothing is biased.
    """
    ws = torch.sort(w, descending=True).values
    if fraction <= 0 or ws.numel() < 2:
        return float(ws[0])
    k = torch.arange(1, ws.numel(), dtype=torch.float64)
    excess = torch.cumsum(ws, 0)[:-1] - k * ws[1:]
    bad = torch.nonzero(excess > fraction * float(ws.sum()))
    return float(ws[int(bad[0])]) if bad.numel() else float(ws[-1])


def _cat(parts: list[PartonChunk], n: int) -> PartonChunk:
    fields = [torch.cat([getattr(p, f) for p in parts])[:n] for f in
              ("momenta", "pdg", "x1", "x2", "id1", "id2", "weight")]
    return PartonChunk(*fields)


def records(chunk: PartonChunk, event_id0: int, theta: dict[str, float], det: DetectorOutput,
            pass_reco: Tensor) -> tuple[ak.Array, ak.Array]:
    """Detector records (passing events only) and parton records (all), CONTRACTS.md layout."""
    n = len(chunk)
    event_id = np.arange(event_id0, event_id0 + n, dtype=np.int64)
    weight = chunk.weight.numpy()
    mom = chunk.momenta.numpy()
    parton = ak.zip({
        "E": mom[..., 0], "px": mom[..., 1], "py": mom[..., 2], "pz": mom[..., 3],
        "pdgId": chunk.pdg.numpy().astype(np.int32)})
    fields: dict[str, Any] = {
        "event_id": event_id, "weight": weight, "pass_reco": pass_reco.numpy(),
        "x1": chunk.x1.numpy(), "x2": chunk.x2.numpy(),
        "id1": chunk.id1.numpy().astype(np.int32), "id2": chunk.id2.numpy().astype(np.int32),
        "partons": ak.from_regular(parton, axis=1),
    }
    if theta:
        fields["theta"] = ak.zip({k: np.full(n, v, dtype=np.float64) for k, v in theta.items()})
    partons = ak.zip(fields, depth_limit=1)
    reco = det.to_awkward()
    reco = ak.with_field(reco, event_id, "event_id")
    reco = ak.with_field(reco, weight, "weight")
    keep = pass_reco.numpy()
    return reco[keep], partons


@dataclass
class GenerationSummary:
    """What a generation run did: counts, σ and its error (pb), efficiencies."""

    n_events: int
    n_pass: int
    sigma_pb: float
    sigma_error_pb: float
    unweighting_efficiency: float
    n_trials: int
    n_overweight: int
    weighted: bool
    extra: dict[str, Any] = field(default_factory=dict)


def generate_file(
    path: str | Path,
    integrand: HadronicIntegrand,
    detector: DetectorCard,
    selection: SelectionConfig,
    n_events: int,
    seed: int,
    config: GeneratorConfig | None = None,
    theta: dict[str, float] | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    metadata: dict[str, Any] | None = None,
) -> GenerationSummary:
    """Generate ``n_events`` parton events, pass them through the detector and selection, and
    write both trees to ``path`` (atomically, chunk by chunk; memory stays flat).

    Arguments:
        path: output ROOT file.
        integrand: hadronic integrand of the process at its θ.
        detector: the detector card; selection: the run card's selection.
        n_events: parton-level events; seed: seeds everything.
        config: generator settings (weighted, chunk size, VEGAS).
        theta: θ overrides (also written as ``theta_<name>`` branches with the full θ).
        progress: called with the number of events done after each chunk.
        metadata: extra key/values stored in the file's metadata.
    """
    from unfoldmem.io import EventWriter

    config = config or GeneratorConfig()
    gen = EventGenerator(integrand, config, seed, theta)
    det = ParametricDetector(detector)
    det_rng = torch.Generator().manual_seed(seed * 1_000_003 + 7)
    full = integrand.full_theta(theta)
    theta_rec = {k: float(full[k]) for k in integrand.process.parameters}
    gen.adapt()
    n_pass = done = 0
    meta = {"seed": seed, "process": integrand.process.name, "theta": theta_rec,
            "detector": detector.name, "weighted": config.weighted, **(metadata or {})}
    with EventWriter(path, overwrite=overwrite, metadata=meta) as writer:
        for chunk in gen.generate(n_events):
            out = det.simulate(chunk.momenta, chunk.pdg, det_rng)
            pass_reco = select(out, selection)
            reco, partons = records(chunk, done, theta_rec, out, pass_reco)
            writer.write(detector=reco, partons=partons)
            done += len(chunk)
            n_pass += int(pass_reco.sum())
            if progress is not None:
                progress(done)
        sigma, err = gen.generation_sigma()
        writer.metadata.update({"sigma_pb": sigma, "sigma_error_pb": err,
                                "n_trials": gen.n_trials, "n_pass": n_pass})
    return GenerationSummary(done, n_pass, sigma, err, gen.efficiency, gen.n_trials,
                             gen.n_overweight, config.weighted)
