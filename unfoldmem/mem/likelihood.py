r"""Public MEM API: per-event log P(x|θ) on a θ grid (chunked, progress bar) and a differentiable
θ → per-event log P for fits.

.. math:: \log P(x\mid\theta) = \log\int F(z;\theta)\,dz - \log\sigma_{\rm fid}(\theta),

with the integral from :func:`unfoldmem.mem.sampling.importance_sample` (cINN + detector-driven
channels) and σ_fid from :mod:`unfoldmem.mem.normalisation` (or 1 pb when none is given: then
only θ-independent normalisations are right, and the result says so with
``log_sigma_fid = 0``).

Example::

    mem = MEMLikelihood(hadronic, ExactTransfer(detector), detector=detector)
    result = mem.evaluate(events, {"m_z": torch.linspace(90, 92, 5)})
    f = mem.log_p_function(events, n_samples=1024)      # θ -> (B,) log P, differentiable
    g = torch.autograd.grad(f({"m_z": torch.tensor(91.2, requires_grad=True)}).sum(), ...)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unfoldmem.mem.integrand import (
    FLAG_OK,
    ExactTransfer,
    LearnedTransfer,
    MEMIntegrand,
    RecoEvents,
)
from unfoldmem.mem.sampling import (
    CINNChannel,
    ISResult,
    RecoChannel,
    SamplingContext,
    diagnose,
    importance_sample,
)
from unfoldmem.weights import WeightDiagnosticsConfig

__all__ = ["MEMConfig", "MEMLikelihood", "MEMResult", "chunk_generator", "chunk_seed",
           "theta_grid_points"]


@dataclass
class MEMConfig:
    """Settings of the MEM integration.

    Arguments:
        precision: target relative error of each integral (= error of log P).
        n_start, n_max: first and largest number of samples per event.
        chunk_size: events per chunk.
        cinn_fraction: mixture weight of the cINN channel (the detector channels get the rest).
        reco_scale: width factor of the plain (defensive) detector channel over the resolutions.
        physics_channel: add the MoMEMta-style detector channel with resonance blocks
            (:class:`~unfoldmem.mem.channels.RecoChannel` ``physics=True``).
        physics_scale: its width factor over the resolutions.
        defensive_fraction: mixture weight of the plain detector channel when the physics
            channel or a cINN is used (it keeps the mixture positive everywhere).
        kernel_sigma: recoil-kernel width in GeV; None: from a cINN pilot (else 10 GeV).
        per_permutation: also return per-assignment log integrals.
        seed: random seed of the sampling.
        diagnostics: weight-diagnostic thresholds.
    """

    precision: float = 0.01
    n_start: int = 256
    n_max: int = 16384
    chunk_size: int = 32
    cinn_fraction: float = 0.8
    reco_scale: float = 1.5
    physics_channel: bool = True
    physics_scale: float = 1.1
    defensive_fraction: float = 0.1
    kernel_sigma: float | None = None
    per_permutation: bool = False
    seed: int = 1
    diagnostics: WeightDiagnosticsConfig = field(default_factory=WeightDiagnosticsConfig)


def chunk_seed(seed: int, first_event: int) -> int:
    """A 64-bit seed from the pair (``seed``, index of a chunk's first event) through numpy's
    ``SeedSequence`` (well-mixed, distinct streams for distinct pairs)."""
    state = np.random.SeedSequence([int(seed), int(first_event)]).generate_state(1, np.uint64)
    return int(state[0])


def chunk_generator(seed: int, first_event: int) -> torch.Generator:
    """The random stream of the chunk whose first event has global index ``first_event``:
    a generator seeded with :func:`chunk_seed`, so results do not depend on the chunking."""
    return torch.Generator().manual_seed(chunk_seed(seed, first_event))


def theta_grid_points(grid: Mapping[str, Tensor | Sequence[float]]) -> tuple[dict[str, Tensor],
                                                                           list[dict[str, float]]]:
    """Cartesian product of per-parameter values: (name → (K,) columns, K θ dicts)."""
    names = list(grid)
    values = [torch.as_tensor(grid[n], dtype=torch.float64).reshape(-1).tolist() for n in names]
    points = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]
    cols = {n: torch.tensor([p[n] for p in points], dtype=torch.float64) for n in names}
    return cols, points


@dataclass
class MEMResult:
    """Per-event log-likelihoods on a grid of K θ points (N events, P assignments).

    The first nine fields are those of
    :class:`unfoldmem.inference.likelihood_file.PerEventLikelihoods` (``fields()`` gives them
    as a dict), so the CLI writes ``ll.root`` with ``write_likelihoods``.

    Arguments:
        theta_grid: name → (K,). log_p, log_p_err, ess: (N, K). weight: (N,). event_id: (N,).
        flag: (N,) int32 (:data:`unfoldmem.mem.integrand.FLAGS`). log_sigma_fid(_err): (K,).
        log_p_perm: (N, K, P) per-assignment log P or None. diagnostics: per-event weight
        figures. n_samples: (N,). seconds: wall time of the integrals.
    """

    theta_grid: dict[str, Tensor]
    log_p: Tensor
    log_p_err: Tensor
    weight: Tensor
    event_id: Tensor
    flag: Tensor
    ess: Tensor
    log_sigma_fid: Tensor
    log_sigma_fid_err: Tensor
    log_p_perm: Tensor | None = None
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    n_samples: Tensor | None = None
    seconds: float = 0.0

    def fields(self) -> dict[str, Any]:
        """The PerEventLikelihoods keyword arguments."""
        return {k: getattr(self, k) for k in ("theta_grid", "log_p", "log_p_err", "weight",
                                              "event_id", "flag", "ess", "log_sigma_fid",
                                              "log_sigma_fid_err")}

    @property
    def n_flagged(self) -> int:
        """Events with a nonzero flag."""
        return int((self.flag != FLAG_OK).sum())


class MEMLikelihood:
    """Per-event MEM likelihoods of one process.

    Arguments:
        hadronic: :class:`~unfoldmem.physics.hadronic.HadronicIntegrand`.
        transfer: :class:`~unfoldmem.mem.integrand.ExactTransfer` or
            :class:`~unfoldmem.mem.integrand.LearnedTransfer`.
        detector: parametric detector (resolutions of the detector-driven channel), or None.
        cinn: trained :class:`~unfoldmem.flows.cinn.CINN` proposal, or None (detector channel
            only). cinn_order: its object index of each process parton.
        normalisation: object with ``log_sigma_fid(theta) -> (value, error)``, or None.
        config: :class:`MEMConfig`.
    """

    def __init__(self, hadronic: Any, transfer: ExactTransfer | LearnedTransfer,
                 detector: Any = None, cinn: Any = None, cinn_order: Sequence[int] | None = None,
                 normalisation: Any = None, config: MEMConfig | None = None) -> None:
        self.integrand = MEMIntegrand(hadronic, transfer)
        self.detector = detector
        self.config = config or MEMConfig()
        self.normalisation = normalisation
        cfg = self.config
        self.channels: list[Any] = [RecoChannel(detector, scale=cfg.reco_scale)]
        self.alphas = [1.0]
        if cfg.physics_channel:
            self.channels.insert(0, RecoChannel(detector, scale=cfg.physics_scale, physics=True))
            self.alphas = [1.0 - cfg.defensive_fraction, cfg.defensive_fraction]
        self.cinn = None if cinn is None else CINNChannel(cinn, cinn_order)
        if self.cinn is not None:
            f = cfg.cinn_fraction
            self.channels.insert(0, self.cinn)
            if len(self.alphas) == 1:
                self.alphas = [f, 1.0 - f]
            else:
                d = min(cfg.defensive_fraction, 1.0 - f)
                self.alphas = [f, 1.0 - f - d, d]

    def kernel_sigma(self, events: RecoEvents, generator: torch.Generator) -> Tensor:
        """(B,) recoil-kernel width: the spread of the cINN's recoil imbalance, or the config."""
        b = len(events)
        if self.config.kernel_sigma is not None or self.cinn is None:
            return torch.full((b,), self.config.kernel_sigma or 10.0, dtype=torch.float64)
        integ = self.integrand
        prep = integ.prepare(events)
        ctx = SamplingContext(integ, events, prep, torch.full((b,), 10.0, dtype=torch.float64))
        z = self.cinn.sample(64, ctx, generator)
        from unfoldmem.physics import lorentz

        m = integ.masses.expand(z.shape[:-1])[..., None]
        p = lorentz.from_ptetaphim(torch.cat([z, m], -1))
        imb = p[..., 1:3].sum(-2)  # the recoil's own momentum minus the balance value
        rms = torch.sqrt((imb**2).mean((0, 2)))
        return torch.where(torch.isfinite(rms), rms, 10.0).clamp(1.0, 100.0)

    def _log_sigma(self, points: list[dict[str, float]]) -> tuple[Tensor, Tensor]:
        if self.normalisation is None:
            z = torch.zeros(len(points), dtype=torch.float64)
            return z, z.clone()
        vals, errs = [], []
        with torch.no_grad():
            for th in points:
                v, e = self.normalisation.log_sigma_fid(th)
                vals.append(float(v))
                errs.append(float(e))
        return torch.tensor(vals, dtype=torch.float64), torch.tensor(errs, dtype=torch.float64)

    def evaluate(self, events: RecoEvents, grid: Mapping[str, Tensor | Sequence[float]],
                 event_id: Tensor | None = None, weight: Tensor | None = None,
                 progress: bool = True, first_index: int = 0) -> MEMResult:
        """log P(x_i | θ_k) for every event and grid point.

        Each chunk of ``config.chunk_size`` events draws from its own generator,
        :func:`chunk_generator` (``config.seed``, index of its first event), so a chunk's
        result depends only on the seed and its own events: evaluating the events in pieces
        whose sizes are multiples of ``chunk_size`` (e.g. on Dask workers, passing each
        piece's ``first_index``) gives the same numbers as one call.

        Arguments:
            events: N reco events. grid: parameter → values (Cartesian product, K points).
            event_id, weight: (N,) ids and event weights (default arange and 1).
            progress: show a progress bar over chunks.
            first_index: index of ``events[0]`` in the full sample (seeds the chunks).

        Returns:
            :class:`MEMResult` (log P already divided by σ_fid(θ_k)).
        """
        import time

        from rich.progress import Progress

        cols, points = theta_grid_points(grid)
        n, k = len(events), len(points)
        cfg = self.config
        results: list[ISResult] = []
        t0 = time.perf_counter()
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("MEM integrals", total=n)
            for start in range(0, n, cfg.chunk_size):
                ev = events[start : start + cfg.chunk_size]
                gen = chunk_generator(cfg.seed, first_index + start)
                sig = self.kernel_sigma(ev, gen)
                results.append(importance_sample(
                    self.integrand, ev, points, self.channels, self.alphas,
                    precision=cfg.precision, n_start=cfg.n_start, n_max=cfg.n_max,
                    kernel_sigma=sig, per_permutation=cfg.per_permutation, generator=gen))
                bar.advance(task, len(ev))
        seconds = time.perf_counter() - t0
        log_i = torch.cat([r.log_p for r in results]) if results else torch.zeros(0, k)
        err = torch.cat([r.log_p_err for r in results]) if results else torch.zeros(0, k)
        ess = torch.cat([r.ess for r in results]) if results else torch.zeros(0, k)
        flag = torch.cat([r.flag for r in results]) if results else torch.zeros(0)
        ls, ls_err = self._log_sigma(points)
        log_p = log_i - ls
        perm = None
        if cfg.per_permutation and results:
            p_max = max(r.log_p_perm.shape[-1] for r in results)
            perm = torch.cat([torch.nn.functional.pad(r.log_p_perm, (0, p_max - r.log_p_perm.shape[-1]),
                                                      value=-math.inf) for r in results])
            perm = perm - ls[None, :, None]
        diag = [d for r in results for d in diagnose(r, cfg.diagnostics, name="mem")["events"]]
        n_samples = torch.cat([r.n_samples for r in results]) if results else torch.zeros(0)
        return MEMResult(
            theta_grid=cols, log_p=log_p, log_p_err=err,
            weight=torch.ones(n, dtype=torch.float64) if weight is None else weight.double(),
            event_id=torch.arange(n) if event_id is None else event_id, flag=flag, ess=ess,
            log_sigma_fid=ls, log_sigma_fid_err=ls_err, log_p_perm=perm, diagnostics=diag,
            n_samples=n_samples, seconds=seconds)

    def log_p_function(self, events: RecoEvents, n_samples: int = 2048,
                       seed: int | None = None, with_error: bool = False,
                       ) -> Callable[[Mapping[str, Any]], Any]:
        r"""A differentiable θ → (B,) log P(x_i|θ) on fixed samples (for fits and gradients).

        Samples (z and the assignment) are drawn once per event from the channel mixture
        (:math:`n_c = \alpha_c n`);
        the θ-free part of the integrand is stored, and each call re-evaluates only
        :math:`\sum_c f f |M_c(\theta)|^2`, so ``torch.autograd`` gives d log P/dθ through |M|²
        (and through σ_fid when the normalisation is differentiable). Flagged events give −inf.
        ``with_error=True``: the function returns (log P, its MC standard error, a noise
        replica), all (B,): the error is :math:`\hat s_w/(\sqrt n\,\bar w)` of the sample
        weights at that θ (inf where log P = −inf); the replica is half the difference of
        log P from the even- and odd-numbered samples, which has (to second order) the same
        noise as log P, correlated across θ like it, and no signal (NaN where a half is empty).
        """
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
        integ = self.integrand
        prep = integ.prepare(events)
        sig = self.kernel_sigma(events, gen)
        ctx = SamplingContext(integ, events, prep, sig)
        alphas = torch.tensor(self.alphas, dtype=torch.float64)
        store = []
        for ch, a in zip(self.channels, alphas, strict=True):
            m = max(1, round(float(a) * n_samples))
            z, pick = ch.sample_joint(m, ctx, gen)
            lq = torch.logsumexp(torch.stack([c.log_prob_joint(z, pick, ctx) + math.log(float(w))
                                              for c, w in zip(self.channels, alphas, strict=True)]), 0)
            rest, p, x1, x2 = integ.log_rest(z, events, prep, sig, pick)
            # as in importance_sample: a sample the mixture cannot produce (q = 0, e.g. a
            # channel's overflow to pT = inf) or a zero integrand carries no weight; without
            # this, -inf - (-inf) = NaN made the whole event NaN (more often with more samples)
            lw = torch.where(torch.isneginf(lq) | torch.isneginf(rest), -math.inf, rest - lq)
            store.append((torch.where(torch.isnan(lw), -math.inf, lw), p, x1, x2))
        base = torch.cat([s[0] for s in store])
        p = torch.cat([s[1] for s in store])
        x1 = torch.cat([s[2] for s in store])
        x2 = torch.cat([s[3] for s in store])
        total = base.shape[0]
        flag = prep["flag"]

        def log_p(theta: Mapping[str, Any]) -> Any:
            lw = base + integ.log_theta(p, x1, x2, theta)
            lse = torch.logsumexp(lw, 0)
            out = lse - math.log(total)
            if self.normalisation is not None:
                out = out - self.normalisation.log_sigma_fid(theta)[0]
            out = torch.where(flag == FLAG_OK, out, -math.inf)
            if not with_error:
                return out
            with torch.no_grad():
                # weights relative to their sum: var(w)/(n mean(w)^2) = (n Σ r² − 1)/(n − 1)
                r = torch.exp(lw - torch.where(torch.isfinite(lse), lse, 0.0))
                rel2 = (total * (r**2).sum(0) - 1.0).clamp(min=0.0) / max(total - 1, 1)
                err = torch.where(torch.isfinite(out), torch.sqrt(rel2), math.inf)
                half = 0.5 * ((torch.logsumexp(lw[0::2], 0) - math.log((total + 1) // 2))
                              - (torch.logsumexp(lw[1::2], 0) - math.log(max(total // 2, 1))))
                half = torch.where(torch.isfinite(half) & (flag == FLAG_OK), half, math.nan)
            return out, err, half

        return log_p
