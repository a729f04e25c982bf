r"""The cINN: a conditional spline coupling flow p(parton | reco) with a jointly trained deep set.

The posterior density of the parton-level objects given a detector event is

.. math:: p(v \mid \text{reco}) = q_\theta\big(x(v) \mid h_\psi(\text{reco})\big)\,
    \left|\det \partial x/\partial v\right|,

where :math:`x(v)` is the :class:`~unfoldmem.flows.encoding.ObjectEncoding` of the partons,
:math:`q_\theta` a rational-quadratic spline coupling flow (zuko) and :math:`h_\psi` a deep set
(optionally with self-attention) over the variable number of reco objects (MET, leptons, jets),
so one network serves every jet multiplicity.

References:
    | Invertible networks or partons to detector and back again (Bellagente et al., 2020)
    | https://arxiv.org/abs/2006.06685
    | Neural Spline Flows (Durkan et al., 2019) https://arxiv.org/abs/1906.04032
    | Deep Sets (Zaheer et al., 2017) https://arxiv.org/abs/1703.06114

Example:
    >>> objs = torch.rand(16, 3, 4) + torch.tensor([10.0, 0.0, 0.0, 1.0])
    >>> reco = torch.zeros(16, 5, 7); reco[..., :4] = objs[:, :1] + torch.rand(16, 5, 4)
    >>> mask = torch.ones(16, 5, dtype=torch.bool)
    >>> model = CINN.from_data(objs, reco, mask, flow=FlowConfig(transforms=2, hidden=[16]))
    >>> x = model.encode_partons(objs)[0]
    >>> model(reco, mask).log_prob(x).shape
    torch.Size([16])
    >>> model.sample_partons(100, reco, mask).shape
    torch.Size([100, 16, 3, 4])
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution
from zuko.distributions import DiagNormal
from zuko.flows import Flow, GeneralCouplingTransform, UnconditionalDistribution
from zuko.flows.gaussianization import ElementWiseTransform
from zuko.nn import MLP
from zuko.transforms import MonotonicRQSTransform
from zuko.utils import unpack

from unfoldmem.cards.model import ConditionConfig, EncodingConfig, FlowConfig
from unfoldmem.flows.encoding import RECO_TYPES, ObjectEncoding, RecoEncoding
from unfoldmem.flows.parametrization import ResonanceEncoding, decay_tree, narrow_tree
from unfoldmem.flows.spline import silu_, spline_cols_inverse, spline_constants

__all__ = ["CouplingNSF", "ConditionNet", "CINN"]

#: Rounds of new draws for the samples an encoding decodes outside its physical region
#: (``parton_encoding.redraws``) before the rest are moved onto the region's edge, and the
#: largest number of draws per event in a round (each round doubles the last).
MAX_REDRAWS = 100
REDRAW_BATCH = 4096
#: at most this many new draws in one round, over all events (memory)
REDRAW_TOTAL = 1 << 20


_ONEHOT = RecoEncoding.onehot_start
_MET, _MUON, _ELECTRON = (RECO_TYPES.index(t) for t in ("met", "muon", "electron"))

_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}  # by (process, workers): a fork has none


def coupling_masks(features: int, transforms: int) -> list[Tensor]:
    """Coupling masks cycling through even/odd and first/second-half splits (mixes all pairs)."""
    idx = torch.arange(features)
    half = idx < features // 2
    patterns = [idx % 2 == 0, idx % 2 == 1, half, ~half]
    return [patterns[i % 4] for i in range(transforms)]


class CouplingNSF(Flow):
    r"""Conditional coupling flow with monotonic rational-quadratic spline couplings (zuko parts).

    Like ``zuko.flows.NSF(features, context, passes=2)``, but built from
    :class:`zuko.flows.GeneralCouplingTransform`: one hyper-network call per layer in both
    directions, so sampling costs the same as density evaluation. Splines act on [-5, 5];
    features should be standardised.

    Arguments:
        features: number of features D.
        context: number of context features (0: unconditional).
        config: transforms, bins, hidden widths and minimum slope.

    Example:
        >>> flow = CouplingNSF(3, 2, FlowConfig(transforms=2, hidden=[8]))
        >>> flow(torch.randn(5, 2)).sample((7,)).shape
        torch.Size([7, 5, 3])
    """

    def __init__(self, features: int, context: int = 0, config: FlowConfig | None = None) -> None:
        config = config or FlowConfig()
        uni = partial(MonotonicRQSTransform, slope=config.slope)
        shapes = [(config.bins,), (config.bins,), (config.bins - 1,)]
        layers = [
            GeneralCouplingTransform(
                features, context, mask=m, univariate=uni, shapes=shapes,
                hidden_features=list(config.hidden), activation=nn.SiLU,
            )
            for m in coupling_masks(features, config.transforms)
        ]
        if config.affine and context > 0:
            layers.insert(0, ElementWiseTransform(features, context,
                                                  hidden_features=list(config.hidden),
                                                  activation=nn.SiLU))
        base = UnconditionalDistribution(
            DiagNormal, torch.zeros(features), torch.ones(features), buffer=True
        )
        super().__init__(layers, base)
        self.bins, self.slope = config.bins, config.slope

    @torch.no_grad()
    def sample_many(self, n: int, context: Tensor, chunk: int = 2048) -> Tensor:
        r"""n samples per context row in one batched pass: (B, C) -> (n, B, D).

        The same distribution as ``self(context).sample((n,))`` (see :meth:`inverse_many`).
        """
        z = self.base().sample((n, *context.shape[:-1])).to(context.dtype)
        return self.inverse_many(z, context, chunk)

    @torch.no_grad()
    def inverse_many(self, z: Tensor, context: Tensor, chunk: int = 2048) -> Tensor:
        r"""Base points z (n, B, D) -> features (n, B, D) given context (B, C).

        Equals ``self(context).transform.inv(z)`` (tested); what depends on the context alone
        is computed once per event: the element-wise affine map and each coupling's
        :math:`W [x_a; c] + b = W_a x_a + (W_c c + b)`. Tasks of ~``chunk`` draws (whole
        events, or blocks of ``chunk`` events) run feature-major, (D, rows), in reused buffers,
        so the hyper-networks are matrix products :math:`W h` and, on the CPU, the SiLUs and
        splines are column loops compiled to SIMD code (:mod:`~unfoldmem.flows.spline`). With
        T = ``torch.get_num_threads()`` > 1 the tasks go to T single-threaded workers (the
        GIL is released): no barrier inside a task, and the result does not depend on T.
        """
        n_s, d = z.shape[0], z.shape[-1]
        lead = context.shape[:-1]
        context = context.reshape(lead.numel(), context.shape[-1])
        z = z.reshape(n_s, -1, d)
        b_ev = z.shape[1]
        eb = max(1, min(b_ev, chunk))  # events per task
        per = max(1, chunk // eb)  # samples per task
        cpu = z.is_cpu and z.dtype in (torch.float32, torch.float64)
        steps = [[s(context[e : e + eb]) for e in range(0, b_ev, eb)] if isinstance(s, nn.Module)
                 else s for s in self._plan(context, per, cpu)]  # a transform per event block
        cst = spline_constants(self.slope, 5.0, z.dtype)
        act = silu_ if cpu else partial(F.silu, inplace=True)
        out = torch.empty_like(z)

        local, inference = threading.local(), torch.is_inference_mode_enabled()

        def buf(name: object, rows: int, cols: int) -> Tensor:  # a worker's buffer, reused
            if (name, rows) not in local.__dict__:
                local.__dict__[name, rows] = z.new_empty(rows * per * eb)
            return local.__dict__[name, rows][: rows * cols].view(rows, cols)

        def run(task: tuple[int, int]) -> None:
            # grad and inference modes are per thread: a worker takes the caller's
            with torch.inference_mode() if inference else torch.no_grad():
                s0, e0 = task
                m, ne = min(per, n_s - s0), min(eb, b_ev - e0)
                rows = m * ne
                x = buf("x", d, rows)
                x.view(d, m, ne).copy_(z[s0 : s0 + m, e0 : e0 + ne].permute(2, 0, 1))
                for step in steps:
                    if isinstance(step, list):  # a zuko transform per event block
                        y = step[e0 // eb].inv(x.view(d, m, ne).permute(1, 2, 0))
                        x.view(d, m, ne).copy_(y.permute(2, 0, 1))
                        continue
                    w_in, idx_a, h_c, mid, w_out, b_out, idx_b, layer = step
                    xa = torch.index_select(x, 0, idx_a, out=buf("a", idx_a.numel(), rows))
                    # h_c's columns: the block's events (m = 1), or all events m times (e0 = 0)
                    h = torch.addmm(h_c[:, e0 : e0 + rows], w_in, xa, out=buf(0, w_in.shape[0], rows))
                    for j, (w, b) in enumerate(mid):
                        h = torch.addmm(b, w, act(h), out=buf((j + 1) % 2, w.shape[0], rows))
                    p = torch.addmm(b_out, w_out, act(h), out=buf("p", w_out.shape[0], rows))
                    if layer is None:
                        spline_cols_inverse(p, x, idx_b, self.bins, cst)
                    else:  # not on the CPU: zuko's spline
                        phi = unpack(p.t().unflatten(-1, (-1, layer.total)), layer.shapes)
                        x[idx_b] = layer.univariate(*phi).inv(x[idx_b].t()).t()
                out[s0 : s0 + m, e0 : e0 + ne] = x.view(d, m, ne).permute(1, 2, 0)

        tasks = [(s0, e0) for e0 in range(0, b_ev, eb) for s0 in range(0, n_s, per)]
        workers = min(torch.get_num_threads(), len(tasks)) if z.is_cpu else 1
        if workers <= 1:
            for task in tasks:
                run(task)
        else:
            list(_pool(workers).map(run, tasks))
        return out.reshape(n_s, *lead, d)

    def _plan(self, context: Tensor, per: int, cpu: bool) -> list:
        """Per layer, inverse order: the lazy zuko transform, or the coupling's parts
        feature-major, with the context part of the first layer's pre-activation, (hidden, B),
        repeated ``per`` times along the columns."""
        steps: list = []
        for layer in reversed(self.transform.transforms):
            mods = list(getattr(layer, "hyper", []))
            lins, acts = mods[0::2], mods[1::2]
            if not isinstance(layer, GeneralCouplingTransform) or len(lins) < 2 or not all(
                isinstance(a, nn.SiLU) for a in acts
            ):
                steps.append(layer)
                continue
            idx_a, idx_b = layer.mask.nonzero()[:, 0], (~layer.mask).nonzero()[:, 0]
            first, last = lins[0], lins[-1]
            na = idx_a.numel()
            h_c = F.linear(context, first.weight[:, na:], first.bias).t().repeat(1, per)
            # zuko's order of the output rows (widths, heights, derivatives of each feature) is
            # the kernel's: no permutation
            mid = [(lin.weight, lin.bias[:, None]) for lin in lins[1:-1]]
            steps.append((first.weight[:, :na].contiguous(), idx_a, h_c, mid, last.weight,
                          last.bias[:, None], idx_b, None if cpu else layer))
        return steps


def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool of single-threaded torch workers (each chunk is one unsynchronised task)."""
    key = (os.getpid(), workers)
    if key not in _POOLS:
        threads = torch.get_num_threads()
        # torch.set_num_threads sets the calling thread's OpenMP/MKL count and the global
        # default, which ATen copies into a thread at its first parallel op: get_num_threads
        # does that now, while the default is 1. (Without it each worker's GEMMs ran 2 OpenMP
        # threads once the caller's count was restored: 4 spinning threads on 2 cores.)
        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="unfoldmem-sample",
                                         initializer=_single_threaded)
        barrier = threading.Barrier(workers)  # start them all now, while the count is 1
        list(_POOLS[key].map(lambda _: barrier.wait(), range(workers)))
        torch.set_num_threads(threads)
    return _POOLS[key]


def _single_threaded() -> None:
    torch.set_num_threads(1)
    torch.get_num_threads()


def _phi_coordinate(cos: Tensor, sin: Tensor) -> Tensor:
    """atanh(φ/π) from (cos φ, sin φ), (...) -> (..., 1): the parton encoding's φ coordinate.

    With it the location of a φ posterior in feature space is close to linear in the input;
    from (cos φ, sin φ) alone the network has to learn the steep atanh near ±π, which trained
    many times slower (toy KL 5 nats after 20 epochs without, see tests/flows/test_cinn.py).
    """
    # float32 atan2: onnxruntime has Atan kernels for float only; a network input needs no more
    u = (torch.atan2(sin.float(), cos.float()).to(sin.dtype) / math.pi).clamp(-1 + 1e-6, 1 - 1e-6)
    return (0.5 * (torch.log1p(u) - torch.log1p(-u)))[..., None]  # atanh as logs (ONNX float)


class _AttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        lead = h.shape[:-2]
        h, mask = h.reshape(-1, *h.shape[-2:]), mask.reshape(-1, mask.shape[-1])
        a = self.norm1(h)
        h = h + self.attn(a, a, a, key_padding_mask=~mask, need_weights=False)[0]
        return (h + self.mlp(self.norm2(h))).view(*lead, *h.shape[-2:])


class ConditionNet(nn.Module):
    r"""Deep set over padded reco objects: :math:`\rho(\sum_i \phi(o_i), \bar\phi, \log n)`.

    Arguments:
        in_features: per-object features (11 from :class:`RecoEncoding`).
        config: embedding width, hidden widths, context size, attention blocks, direct objects.

    Input (..., slots, in_features) and mask (..., slots); output (..., out_features) with
    ``out_features = context + in_features * (direct_leptons + direct_met)``: the deep set's
    context, then the unmixed features of MET and of the hardest leptons (found by their
    one-hot type, so the slot layout does not matter). Padded slots never change the output
    (tested), so events of any multiplicity share the network.
    """

    def __init__(self, in_features: int, config: ConditionConfig | None = None) -> None:
        super().__init__()
        config = config or ConditionConfig()
        self.direct_leptons, self.direct_met = config.direct_leptons, config.direct_met
        self.out_features = config.context + in_features * (config.direct_leptons
                                                            + int(config.direct_met))
        self.phi = MLP(in_features + 1, config.embed, list(config.hidden), activation=nn.SiLU)
        self.blocks = nn.ModuleList(
            _AttentionBlock(config.embed, config.heads) for _ in range(config.attention_layers)
        )
        self.rho = MLP(2 * config.embed + 1, config.context, list(config.hidden), activation=nn.SiLU)

    def forward(self, feats: Tensor, mask: Tensor) -> Tensor:
        """(..., slots, F), (..., slots) bool -> (..., context)."""
        h = self.phi(torch.cat([feats, _phi_coordinate(feats[..., 2], feats[..., 3])], -1))
        for block in self.blocks:
            h = block(h, mask)
        m = mask[..., None].to(h.dtype)
        n = m.sum(-2).clamp_min(1.0)
        total = (h * m).sum(-2)
        context = self.rho(torch.cat([total / 4.0, total / n, n.log()], -1))
        if not (self.direct_leptons or self.direct_met):
            return context
        return torch.cat([context, *self.direct(feats, mask)], -1)

    def direct(self, feats: Tensor, mask: Tensor) -> list[Tensor]:
        """Encoded features of MET (if ``direct_met``) and of the ``direct_leptons`` hardest
        leptons, each (..., F), zeros where absent; argmax/gather only, so it exports to ONNX."""
        kind = feats[..., _ONEHOT : _ONEHOT + len(RECO_TYPES)] > 0.5  # one-hot type; 0 if padded
        out = []
        if self.direct_met:
            out.append((feats * (mask & kind[..., _MET])[..., None]).sum(-2))
        is_lep = mask & (kind[..., _MUON] | kind[..., _ELECTRON])
        key = torch.where(is_lep, feats[..., 0], torch.finfo(feats.dtype).min)  # standard log pT
        for _ in range(self.direct_leptons):
            i = key.argmax(-1, keepdim=True)
            obj = torch.gather(feats, -2, i[..., None].expand(*i.shape, feats.shape[-1]))
            out.append(obj.squeeze(-2) * torch.gather(is_lep, -1, i).to(feats.dtype))
            is_lep = is_lep.scatter(-1, i, False)
            key = torch.where(is_lep, key, torch.finfo(feats.dtype).min)
        return out


class CINN(nn.Module):
    r"""Conditional INN for unfolding: ``model(reco, mask)`` is p(parton features | reco).

    Arguments:
        parton_encoding: bijection partons (pt, eta, phi, m) ↔ features x.
        reco_encoding: per-object features of padded reco objects.
        flow: coupling-flow architecture.
        condition: condition-network architecture.

    ``forward(reco, mask)`` returns a :class:`torch.distributions.Distribution` over the
    *encoded* features (batch (B,), event (D,)), zuko's lazy-flow habit:
    ``model(reco, mask).log_prob(x)``, ``model(reco, mask).sample((n,))``. For physical
    variables use :meth:`log_prob_partons` and :meth:`sample_partons`.
    """

    def __init__(
        self,
        parton_encoding: ObjectEncoding,
        reco_encoding: RecoEncoding,
        flow: FlowConfig | None = None,
        condition: ConditionConfig | None = None,
    ) -> None:
        super().__init__()
        condition = condition or ConditionConfig()
        self.parton_encoding = parton_encoding
        self.reco_encoding = reco_encoding
        self.condition = ConditionNet(RecoEncoding.n_features, condition)
        self.flow = CouplingNSF(parton_encoding.n_features, self.condition.out_features, flow)

    @classmethod
    def from_data(
        cls,
        partons: Tensor,
        reco: Tensor,
        mask: Tensor,
        weight: Tensor | None = None,
        flow: FlowConfig | None = None,
        condition: ConditionConfig | None = None,
        encoding: EncodingConfig | None = None,
        pdg: Sequence[int] | None = None,
    ) -> CINN:
        """Build a cINN with encodings fitted to (weighted) training data.

        With ``encoding.parton_coordinates`` ``"resonances"`` or ``"onshell"`` the partons are
        encoded by their decay tree (:class:`~unfoldmem.flows.parametrization.ResonanceEncoding`,
        :class:`~unfoldmem.flows.onshell.OnShellEncoding`): from the PDG ids
        (:func:`~unfoldmem.flows.decay_tree.decay_tree`) or, without them, from narrow
        invariant masses (:func:`~unfoldmem.flows.decay_tree.infer_tree`). A tree without
        any resonance is the plain :class:`ObjectEncoding`. Resonance coordinates take the decay
        angles of nested nodes (W in t → bW) about the parent's flight direction
        (``helicity=True``); roots keep the lab axes. ``encoding.leptonic_chain`` gives a
        leptonic t → bW, W → ℓν chain (found from ``pdg``) bottom-up coordinates
        (``"lepton"``: :class:`~unfoldmem.flows.lepton_anchored.LeptonAnchoredEncoding`;
        ``"ellipse"``: :class:`~unfoldmem.flows.neutrino_ellipse.NeutrinoEllipseEncoding`;
        ``"top_lepton"``: :class:`~unfoldmem.flows.top_lepton.TopLeptonEncoding`, for a top
        chain only).

        Arguments:
            partons: (n, n_partons, 4) (pt GeV, eta, phi, m GeV).
            reco: (n, slots, 7) padded reco objects (:func:`~unfoldmem.flows.encoding.pad_reco`).
            mask: (n, slots) bool.
            weight: (n,) event weights.
            pdg: (n_partons,) PDG id of each parton slot, for the decay tree.
        """
        encoding = encoding or EncodingConfig()
        penc: nn.Module
        penc = ObjectEncoding.fit(partons, weight, encoding.relative_phi, encoding.mass_offset)
        tree = None if pdg is None else narrow_tree(decay_tree(pdg), partons)
        if encoding.parton_coordinates == "resonances":
            # helicity angles of nested decays: measured better in the tt̄ closure (#8,
            # docs/unfolding.md); a saved model keeps the angles it was trained with
            renc = ResonanceEncoding.fit(partons, weight, tree, encoding.relative_phi,
                                         encoding.mass_offset, helicity=True)
            if encoding.leptonic_chain != "resonances" and pdg is not None and renc.nodes:
                # imported here: only this option needs them
                from unfoldmem.flows.lepton_anchored import LeptonAnchoredEncoding, leptonic_chain
                from unfoldmem.flows.neutrino_ellipse import NeutrinoEllipseEncoding
                from unfoldmem.flows.top_lepton import TopLeptonEncoding

                anchor = leptonic_chain(renc.tree, pdg, renc.free_mass, renc.fixed_mass,
                                        renc.fixed_pt)
                kind = None
                if anchor is not None:
                    top = anchor[2] >= 0
                    # a W → ℓν without a top: 'ellipse' gets 'lepton', 'top_lepton' keeps resonances
                    kind = {"lepton": LeptonAnchoredEncoding,
                            "ellipse": NeutrinoEllipseEncoding if top else LeptonAnchoredEncoding,
                            "top_lepton": TopLeptonEncoding if top else None,
                            }[encoding.leptonic_chain]
                if kind is not None:
                    renc = kind.fit(partons, weight, renc.tree, encoding.relative_phi,
                                    encoding.mass_offset, helicity=True, anchor=anchor)
            if renc.nodes:
                penc = renc
        elif encoding.parton_coordinates == "onshell":
            # imported here: this method is the only part of the module that needs it
            from unfoldmem.flows.decay_tree import invisible_slots, orient_tree
            from unfoldmem.flows.onshell import OnShellEncoding

            if tree is not None and pdg is not None:
                tree = orient_tree(tree, pdg)
            oenc = OnShellEncoding.fit(partons, weight, tree, encoding.mass_offset,
                                       invisible=invisible_slots(pdg or []))
            if oenc.nodes:
                penc = oenc
        return cls(penc, RecoEncoding.fit(reco, mask, weight), flow, condition)

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.flow.parameters()).dtype

    def encode_partons(self, partons: Tensor) -> tuple[Tensor, Tensor]:
        """Partons (..., n, 4) -> features (..., D) in the network dtype, log|det dx/dv| (...)."""
        x, ladj = self.parton_encoding(partons)
        return x.to(self._dtype), ladj

    def context(self, reco: Tensor, mask: Tensor) -> Tensor:
        """Condition vector (..., context) from padded reco (..., slots, 7) and mask."""
        mask = mask.to(self.reco_encoding.mean.device)
        feats = self.reco_encoding(reco, mask).to(self._dtype)
        return self.condition(feats, mask)

    def forward(self, reco: Tensor, mask: Tensor) -> Distribution:
        """p(x | reco) over encoded parton features; batch shape reco.shape[:-2]."""
        return self.flow(self.context(reco, mask))

    def log_prob_partons(self, partons: Tensor, reco: Tensor, mask: Tensor) -> Tensor:
        r"""log p(partons | reco) in physical variables (pt, eta, phi[, m]); (B, n, 4) -> (B,).

        The density is per unit :math:`p_T\,\eta\,\phi` (and m for free-mass partons), float64.
        """
        x, ladj = self.encode_partons(partons)
        return self(reco, mask).log_prob(x).double() + ladj

    @torch.no_grad()
    def sample_partons(self, n: int, reco: Tensor, mask: Tensor) -> Tensor:
        """n posterior samples per event: (n, B, n_partons, 4) float64 (pt, eta, phi, m).

        The condition network runs once per event and all n × B draws go through the flow in
        one batched pass (:meth:`CouplingNSF.sample_many`), in the network dtype (float32 by
        default); only the decoding to physical variables is float64. A resonance encoding of
        LO partons (Σp_T = 0) draws the system's p_T from its fixed Gaussian (torch's generator),
        as :meth:`log_prob_partons` assumes.
        """
        context = self.context(reco, mask)
        x = self.flow.sample_many(n, context)
        v = self.parton_encoding.inverse(x)
        if self.parton_encoding.redraws:
            v = self._redraw(v, x, context)
        return v

    def _redraw(self, v: Tensor, x: Tensor, context: Tensor) -> Tensor:
        """Replace the draws (n, B, k, 4) that decode to NaN (outside an encoding's physical
        region, e.g. :class:`~unfoldmem.flows.top_lepton.TopLeptonEncoding`) by physical draws
        of the same event, so the samples follow the flow restricted to the physical region.
        Each round draws again for the events that still lack some, twice as many per event as
        the round before (at most REDRAW_BATCH); draws still outside after MAX_REDRAWS rounds
        (an event where the flow puts almost no probability in the region) are moved onto the
        region's edge (``inverse(clamp=True)``) with a warning that counts them."""
        n = v.shape[0]
        m = n
        for _ in range(MAX_REDRAWS):
            bad = ~torch.isfinite(v).all(-1).all(-1)  # (n, B)
            cols = bad.any(0).nonzero()[:, 0]
            if not len(cols):
                return v
            m = max(n, min(m, REDRAW_TOTAL // len(cols)))  # memory: ≤ REDRAW_TOTAL draws
            xn = self.flow.sample_many(m, context[cols])  # (m, C, D)
            w = self.parton_encoding.inverse(xn)
            good = torch.isfinite(w).all(-1).all(-1)  # (m, C)
            # the r-th missing slot of an event takes its r-th physical new draw, if any
            first = torch.argsort((~good).to(torch.int8), dim=0, stable=True)
            sel = bad[:, cols]
            rank = (sel.cumsum(0) - 1).clamp(min=0, max=m - 1)
            src = torch.gather(first, 0, rank)  # (n, C) index into the new draws
            take = sel & (rank < good.sum(0, keepdim=True))
            wi = torch.gather(w, 0, src[..., None, None].expand(n, len(cols), *w.shape[2:]))
            xi = torch.gather(xn, 0, src[..., None].expand(n, len(cols), xn.shape[-1]))
            v[:, cols] = torch.where(take[..., None, None], wi, v[:, cols])
            x[:, cols] = torch.where(sel[..., None], xi.to(x.dtype), x[:, cols])
            m = min(2 * m, max(n, REDRAW_BATCH))
        bad = ~torch.isfinite(v).all(-1).all(-1)
        if not bool(bad.any()):
            return v
        warnings.warn(f"{int(bad.sum())} of {bad.numel()} posterior draws ({int(bad.any(0).sum())} "
                      f"event(s)) were still outside the model's physical region after "
                      f"{MAX_REDRAWS} rounds of redraws; they were moved onto its edge",
                      RuntimeWarning, stacklevel=3)
        edge = self.parton_encoding.inverse(x, clamp=True)
        return torch.where(bad[..., None, None], edge, v)

    def prepare(
        self, partons: Tensor, reco: Tensor, mask: Tensor, weight: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Encode training data once: a dict of tensors for :func:`unfoldmem.flows.training.train`."""
        x, _ = self.encode_partons(partons)
        feats = self.reco_encoding(reco, mask).to(self._dtype)
        w = torch.ones(x.shape[0], dtype=torch.float64) if weight is None else weight.double()
        return {"x": x, "reco": feats, "mask": mask.bool(), "weight": w}

    def nll(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-event negative log-likelihood in feature space, (B,), of a :meth:`prepare` batch."""
        c = self.condition(batch["reco"], batch["mask"])
        return -self.flow(c).log_prob(batch["x"])
