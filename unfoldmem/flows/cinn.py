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

import itertools
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numba
import numpy as np
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
from unfoldmem.flows.encoding import ObjectEncoding, RecoEncoding
from unfoldmem.flows.parametrization import ResonanceEncoding, decay_tree, narrow_tree

__all__ = ["CouplingNSF", "ConditionNet", "CINN", "rqs_inverse"]


# ---- batched sampler: fused rational-quadratic spline inverse -----------------------------------
# zuko builds a MonotonicRQSTransform object per call (softmax, cumsum, pad, gathers: ~40 tensor
# passes); sampling needs only the inverse, so one numba loop per row does it with the bin
# logits exponentiated in a vectorised pass. Fast math may reorder sums (float rounding only).
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


@numba.njit(nogil=True, cache=True, fastmath=_FAST, error_model="numpy")
def _bin_exps(src: np.ndarray, dst: np.ndarray, cst: np.ndarray, fast: bool) -> None:  # pragma: no cover
    # zuko bounds a bin logit v by v / (1 + |2 v / log slope|) before its softmax. The fast exp
    # is exp(u/8)^8 with a degree-8 Taylor polynomial, |u/8| < 0.45: relative error < 1e-6
    # (tested), vectorisable, unlike a libm call.
    c, one, eighth = cst[0], cst[1], cst[2]
    i2, i3, i4, i5, i6, i7, i8 = cst[3], cst[4], cst[5], cst[6], cst[7], cst[8], cst[9]
    for j in range(dst.shape[0]):
        v = src[j]
        v = v / (one + abs(v) * c)
        if fast:
            u = v * eighth
            e = one + u * (one + u * i2 * (one + u * i3 * (one + u * i4 * (one + u * i5 * (
                one + u * i6 * (one + u * i7 * (one + u * i8)))))))
            e = e * e
            e = e * e
            dst[j] = e * e
        else:
            dst[j] = math.exp(v)


@numba.njit(nogil=True, cache=True, fastmath={"nsz", "arcp", "contract"}, error_model="numpy")
def _rqs_inverse_rows(
    p: np.ndarray, x: np.ndarray, cols: np.ndarray, bins: int, cst: np.ndarray, fast: bool
) -> None:  # pragma: no cover - compiled
    # In place x[r, cols[i]] <- inverse of zuko's MonotonicRQSTransform (bound B) with row r of
    # p laid out [widths_i (K), heights_i (K) for each i | derivatives_i (K - 1) for each i].
    f = cols.shape[0]
    m = 2 * bins * f
    e = np.empty(m, dtype=x.dtype)
    one, dc, b, zero, half, two, four = cst[1], cst[10], cst[11], cst[12], cst[13], cst[14], cst[15]
    for r in range(x.shape[0]):
        row = p[r]
        _bin_exps(row[:m], e, cst, fast)
        for i in range(f):
            y = x[r, cols[i]]
            if not (-b < y < b):  # identity outside [-B, B], as zuko
                continue
            q = i * 2 * bins
            sw = zero
            sh = zero
            for j in range(bins):
                sw += e[q + j]
                sh += e[q + bins + j]
            target = (y + b) * (half / b) * sh  # y's knot coordinate before normalising
            k = 0
            hk = zero
            wk = zero
            while k < bins - 1 and hk + e[q + bins + k] < target:
                hk += e[q + bins + k]
                wk += e[q + k]
                k += 1
            y0 = b * (two * hk / sh - one)
            y1 = b * (two * (hk + e[q + bins + k]) / sh - one)
            x0 = b * (two * wk / sw - one)
            x1 = b * (two * (wk + e[q + k]) / sw - one)
            d0 = one
            d1 = one
            o = m + i * (bins - 1)
            if k > 0:
                u = row[o + k - 1]
                d0 = math.exp(u / (one + abs(u) * dc))
            if k < bins - 1:
                u = row[o + k]
                d1 = math.exp(u / (one + abs(u) * dc))
            dy = y1 - y0
            dx = x1 - x0
            s = dy / dx
            yy = y - y0
            t = d0 + d1 - two * s
            qa = dy * (s - d0) + yy * t
            qb = dy * d0 - yy * t
            qc = -s * yy
            z = two * qc / (-qb - math.sqrt(qb * qb - four * qa * qc))
            x[r, cols[i]] = x0 + z * dx


def rqs_inverse(params: Tensor, y: Tensor, bins: int, slope: float = 1e-3,
                bound: float = 5.0) -> Tensor:
    r"""Inverse of zuko's ``MonotonicRQSTransform`` in one fused pass; (N, F, 3K - 1), (N, F) -> (N, F).

    ``params`` are the unconstrained (widths K, heights K, derivatives K - 1) of each feature in
    zuko's order (``unpack`` of a coupling hyper-network's output). Equals
    ``MonotonicRQSTransform(w, h, d, bound, slope).inv(y)``: in float64 to rounding, in float32
    (polynomial exp) no less accurately than zuko's own float32 inverse (tested).
    """
    n, f = y.shape
    p = torch.cat([params[..., : 2 * bins].reshape(n, -1), params[..., 2 * bins :].reshape(n, -1)], -1)
    x = y.clone(memory_format=torch.contiguous_format)
    cols = torch.arange(f)
    _rqs_inverse_rows(p.detach().numpy(), x.detach().numpy(), cols.numpy(), bins,
                      _constants(slope, bound, x.dtype), _fast_exp(slope, x.dtype))
    return x


_POOLS: dict[int, ThreadPoolExecutor] = {}  # by number of workers, created on first use


def _spline_rows(p: np.ndarray, x: np.ndarray, cols: np.ndarray, bins: int, cst: np.ndarray,
                 fast: bool) -> None:
    """:func:`_rqs_inverse_rows` split over torch's thread count (the kernel releases the GIL)."""
    parts = min(torch.get_num_threads(), x.shape[0] // 256)
    if parts <= 1:
        _rqs_inverse_rows(p, x, cols, bins, cst, fast)
        return
    if parts - 1 not in _POOLS:
        _POOLS[parts - 1] = ThreadPoolExecutor(parts - 1, thread_name_prefix="unfoldmem-spline")
    edges = np.linspace(0, x.shape[0], parts + 1).astype(int)
    jobs = [_POOLS[parts - 1].submit(_rqs_inverse_rows, p[a:b], x[a:b], cols, bins, cst, fast)
            for a, b in itertools.pairwise(edges[1:])]
    _rqs_inverse_rows(p[: edges[1]], x[: edges[1]], cols, bins, cst, fast)
    for job in jobs:
        job.result()


def _constants(slope: float, bound: float, dtype: torch.dtype) -> np.ndarray:
    ls = abs(math.log(slope))
    vals = [2 / ls, 1.0, 0.125, *(1 / k for k in range(2, 9)), 1 / ls, bound, 0.0, 0.5, 2.0, 4.0]
    return np.array(vals, dtype=np.float32 if dtype == torch.float32 else np.float64)


def _fast_exp(slope: float, dtype: torch.dtype) -> bool:
    # bounded logits satisfy |v| < |log slope| / 2; the polynomial is accurate for |v| < 3.6
    return dtype == torch.float32 and abs(math.log(slope)) / 2 < 3.6


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

        Equals ``self(context).transform.inv(z)`` (tested), but everything that depends on the
        context alone is computed once per event, not once per sample: the element-wise affine
        map and, in every coupling hyper-network, the context part of the first linear layer,
        :math:`W [x_a; c] + b = W_a x_a + (W_c c + b)`. Rows go in chunks of about ``chunk``
        (cache-sized GEMMs); on the CPU each spline inverse is one fused numba loop
        (:func:`rqs_inverse`) instead of zuko's transform objects.
        """
        n_s, d = z.shape[0], z.shape[-1]
        lead = context.shape[:-1]
        context = context.reshape(lead.numel(), context.shape[-1])
        z = z.reshape(n_s, -1, d)
        b_ev = z.shape[1]
        per = max(1, chunk // max(1, b_ev))
        steps = self._plan(context, d, per, z.is_cpu)
        cst, fast = _constants(self.slope, 5.0, z.dtype), _fast_exp(self.slope, z.dtype)
        out = torch.empty_like(z)
        for lo in range(0, n_s, per):
            m = min(per, n_s - lo)
            rows = m * b_ev
            x = z[lo : lo + m].reshape(rows, d).clone()
            for step in steps:
                if not isinstance(step, tuple):
                    x = step.inv(x.view(m, b_ev, d)).reshape(rows, d)
                    continue
                w_in, h_c, mid, w_out, b_out, cols, layer = step
                h = F.silu(torch.addmm(h_c[:rows], x, w_in), inplace=True)
                for w, b in mid:
                    h = F.silu(torch.addmm(b, h, w), inplace=True)
                p = torch.addmm(b_out, h, w_out)
                if layer is None:
                    _spline_rows(p.numpy(), x.numpy(), cols.numpy(), self.bins, cst, fast)
                else:  # not on the CPU: zuko's spline
                    phi = unpack(p.unflatten(-1, (-1, layer.total)), layer.shapes)
                    x[:, cols] = layer.univariate(*phi).inv(x[:, cols])
            out[lo : lo + m] = x.view(m, b_ev, d)
        return out.reshape(n_s, *lead, d)

    def _plan(self, context: Tensor, d: int, per: int, cpu: bool) -> list:
        """Per layer, inverse order: a zuko transform of the context, or the coupling's parts."""
        steps: list = []
        k = self.bins
        for layer in reversed(self.transform.transforms):
            mods = list(getattr(layer, "hyper", []))
            lins, acts = mods[0::2], mods[1::2]
            if not isinstance(layer, GeneralCouplingTransform) or len(lins) < 2 or not all(
                isinstance(a, nn.SiLU) for a in acts
            ):
                steps.append(layer(context))
                continue
            idx_a, idx_b = layer.mask.nonzero()[:, 0], (~layer.mask).nonzero()[:, 0]
            first, last = lins[0], lins[-1]
            w_in = first.weight.new_zeros(first.weight.shape[0], d)
            w_in[:, idx_a] = first.weight[:, : idx_a.numel()]
            h_c = F.linear(context, first.weight[:, idx_a.numel() :], first.bias).repeat(per, 1)
            mid = [(lin.weight.t(), lin.bias) for lin in lins[1:-1]]
            w_out, b_out = last.weight, last.bias
            if cpu:  # rows [widths, heights of each feature | derivatives of each feature]
                r = torch.arange(w_out.shape[0], device=w_out.device).view(idx_b.numel(), -1)
                perm = torch.cat([r[:, : 2 * k].reshape(-1), r[:, 2 * k :].reshape(-1)])
                w_out, b_out = w_out[perm], b_out[perm]
            steps.append((w_in.t(), h_c, mid, w_out.t(), b_out, idx_b, None if cpu else layer))
        return steps


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
        config: embedding width, hidden widths, context size, attention blocks.

    Input (..., slots, in_features) and mask (..., slots); output (..., context). Padded slots
    never change the output (tested), so events of any multiplicity share the network.
    """

    def __init__(self, in_features: int, config: ConditionConfig | None = None) -> None:
        super().__init__()
        config = config or ConditionConfig()
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
        return self.rho(torch.cat([total / 4.0, total / n, n.log()], -1))


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
        self.flow = CouplingNSF(parton_encoding.n_features, condition.context, flow)

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

        With ``encoding.parton_coordinates == "resonances"`` the partons are encoded by their
        decay tree (:class:`~unfoldmem.flows.parametrization.ResonanceEncoding`): from the PDG
        ids (:func:`~unfoldmem.flows.parametrization.decay_tree`) or, without them, from narrow
        invariant masses (:func:`~unfoldmem.flows.parametrization.infer_tree`). A tree without
        any resonance and with free total pt is the plain :class:`ObjectEncoding`.

        Arguments:
            partons: (n, n_partons, 4) (pt GeV, eta, phi, m GeV).
            reco: (n, slots, 7) padded reco objects (:func:`~unfoldmem.flows.encoding.pad_reco`).
            mask: (n, slots) bool.
            weight: (n,) event weights.
            pdg: (n_partons,) PDG id of each parton slot, for the decay tree.
        """
        encoding = encoding or EncodingConfig()
        penc: ObjectEncoding | ResonanceEncoding
        penc = ObjectEncoding.fit(partons, weight, encoding.relative_phi, encoding.mass_offset)
        if encoding.parton_coordinates == "resonances":
            tree = None if pdg is None else narrow_tree(decay_tree(pdg), partons)
            renc = ResonanceEncoding.fit(partons, weight, tree, encoding.relative_phi,
                                         encoding.mass_offset)
            if renc.nodes:
                penc = renc
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
        return self.parton_encoding.inverse(self.flow.sample_many(n, self.context(reco, mask)))

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
