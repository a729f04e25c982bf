r"""Export-friendly twins of the trained flows: the same weights with constant indices.

The trained modules select features with boolean buffers (``x[..., mask]``), which
``torch.export`` sees as data-dependent shapes. The twins run the *same* weights with feature
selections as constant integer indices, the coupling split/merge as a constant permutation, and
the transfer flow's per-multiplicity gathering as a one-hot contraction, so one static graph
serves every batch size and multiplicity (:mod:`unfoldmem.flows.export` writes and checks them).

References:
    | ONNX operator set, https://onnx.ai/onnx/operators/
    | Invertible networks or partons to detector and back again (Bellagente et al., 2020)
    | https://arxiv.org/abs/2006.06685
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from zuko.flows import Flow, GeneralCouplingTransform

from unfoldmem.flows.cinn import CINN
from unfoldmem.flows.encoding import U_MAX, ObjectEncoding
from unfoldmem.flows.transfer import JET, TransferFlow

__all__ = ["CINNSampler", "TransferLogDensity"]

_LOG_2PI = math.log(2 * math.pi)


def _idx(mask: Tensor) -> list[int]:
    return [int(i) for i in torch.as_tensor(mask).nonzero().flatten().tolist()]


class _StaticEncoding(nn.Module):
    """:class:`ObjectEncoding` with its boolean selections frozen into constant indices."""

    def __init__(self, enc: ObjectEncoding) -> None:
        super().__init__()
        self.n = enc.n_objects
        self.eta_idx = _idx(enc.free_eta)
        self.mass_idx = _idx(enc.free_mass)
        self.relative_phi = enc.relative_phi and self.n > 1
        self.mass_offset = enc.mass_offset
        self.register_buffer("mean", enc.mean.clone())
        self.register_buffer("std", enc.std.clone())
        self.register_buffer("fixed_mass", enc.fixed_mass.clone())
        free = torch.zeros(self.n, dtype=torch.float64)
        free[self.mass_idx] = 1.0
        self.register_buffer("is_free", free)

    def forward(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """(..., n, 4) (pt, eta, phi, m) → features (..., D), log|det ∂x/∂v| (...)."""
        v = v.double()
        pt, eta, phi, m = v[..., 0], v[..., 1], v[..., 2], v[..., 3]
        if self.relative_phi:
            dphi = torch.remainder(phi[..., 1:] - phi[..., :1] + math.pi, 2 * math.pi) - math.pi
            phi = torch.cat([phi[..., :1], dphi], -1)
        u = (phi / math.pi).clamp(-U_MAX, U_MAX)
        # atanh as logs: onnxruntime has no float64 Atanh kernel
        parts = [torch.log(pt), eta[..., self.eta_idx], 0.5 * (torch.log1p(u) - torch.log1p(-u))]
        ladj = (-torch.log(pt) - math.log(math.pi) - torch.log1p(-u * u)).sum(-1)
        if self.mass_idx:
            lm = torch.log(m[..., self.mass_idx] + self.mass_offset)
            parts.append(lm)
            ladj = ladj - lm.sum(-1)
        raw = torch.cat(parts, -1)
        return (raw - self.mean) / self.std, ladj - self.std.log().sum()

    def inverse(self, x: Tensor) -> Tensor:
        """Features (..., D) → objects (..., n, 4) float64 (pt, eta, phi, m)."""
        raw = x.double() * self.std + self.mean
        n, ne = self.n, len(self.eta_idx)
        pt = torch.exp(raw[..., :n])
        eta = torch.zeros_like(pt)
        if ne:
            # scatter the free etas through a constant one-hot matrix (no index_put)
            place = torch.zeros(ne, n, dtype=torch.float64, device=x.device)
            place[torch.arange(ne), self.eta_idx] = 1.0
            eta = raw[..., n : n + ne] @ place
        phi = math.pi * torch.tanh(raw[..., n + ne : 2 * n + ne])
        if self.relative_phi:
            rest = torch.remainder(phi[..., 1:] + phi[..., :1] + math.pi, 2 * math.pi) - math.pi
            phi = torch.cat([phi[..., :1], rest], -1)
        m = self.fixed_mass * (1 - self.is_free) + torch.zeros_like(pt)
        if self.mass_idx:
            k = len(self.mass_idx)
            place = torch.zeros(k, n, dtype=torch.float64, device=x.device)
            place[torch.arange(k), self.mass_idx] = 1.0
            m = m + (torch.exp(raw[..., 2 * n + ne :]) - self.mass_offset) @ place
        return torch.stack([pt, eta, phi, m], -1)


class _StaticFlow(nn.Module):
    """A zuko :class:`Flow` of coupling / element-wise layers with constant coupling indices."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        t = flow.transform
        self.layers = t.transforms if hasattr(t, "transforms") else nn.ModuleList([t])
        self.base = flow.base
        self.split: list[tuple[list[int], list[int], list[int]] | None] = []
        for layer in self.layers:
            if isinstance(layer, GeneralCouplingTransform):
                a, b = _idx(layer.mask), _idx(~layer.mask)
                perm = a + b
                inv = [perm.index(i) for i in range(len(perm))]
                self.split.append((a, b, inv))
            else:
                self.split.append(None)

    def _base(self) -> tuple[Tensor, Tensor]:
        # the base is a DiagNormal with buffered loc/scale: read the buffers directly, since
        # building the distribution inside torch.export guards on data-dependent sizes
        # (named loc/scale or _0/_1 depending on how zuko built it; constructor order either way)
        loc, scale = list(self.base.buffers())[:2]
        return loc, scale

    def inverse(self, z: Tensor, c: Tensor) -> Tensor:
        """Base point z (B, D) → feature point x (B, D) given context c (B, C)."""
        x = z
        for layer, sp in zip(reversed(self.layers), reversed(self.split), strict=True):
            if sp is None:
                x = layer(c).inv(x)
            else:
                a, b, inv = sp
                xa, xb = x[..., a], x[..., b]
                xb = layer.meta(c, xa).inv(xb)
                x = torch.cat([xa, xb], -1)[..., inv]
        return x

    def log_prob(self, x: Tensor, c: Tensor) -> Tensor:
        """log q(x | c), (B,), for x (B, D) and context c (B, C)."""
        ladj = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
        for layer, sp in zip(self.layers, self.split, strict=True):
            if sp is None:
                x, l_ = layer(c).call_and_ladj(x)
            else:
                a, b, inv = sp
                xa, xb = x[..., a], x[..., b]
                xb, l_ = layer.meta(c, xa).call_and_ladj(xb)
                x = torch.cat([xa, xb], -1)[..., inv]
            ladj = ladj + l_
        loc, scale = self._base()
        zs = (x - loc) / scale
        base = (-0.5 * zs * zs - torch.log(scale) - 0.5 * _LOG_2PI).sum(-1)
        return base + ladj


class CINNSampler(nn.Module):
    """Deterministic cINN sampler: ``(reco, mask, z) → partons``.

    Arguments:
        model: a trained :class:`~unfoldmem.flows.cinn.CINN`.

    ``forward(reco (B, S, 7), mask (B, S) bool, z (B, D))`` returns (B, n_partons, 4) float64
    (pt GeV, eta, phi, m GeV); z in the flow's dtype, D = ``model.parton_encoding.n_features``.
    """

    def __init__(self, model: CINN) -> None:
        super().__init__()
        self.model = model
        enc = model.parton_encoding
        # Resonance/OnShellEncoding.inverse has no boolean selections to freeze: traces as is
        self.enc = _StaticEncoding(enc) if isinstance(enc, ObjectEncoding) else enc
        self.flow = _StaticFlow(model.flow)
        self.dtype = model._dtype
        self.n_features = model.parton_encoding.n_features

    def forward(self, reco: Tensor, mask: Tensor, z: Tensor) -> Tensor:
        """Partons (B, n, 4) for reco (B, S, 7), mask (B, S), noise z (B, D)."""
        c = self.model.context(reco, mask.bool())
        x = self.flow.inverse(z.to(self.dtype), c)
        if isinstance(self.enc, _StaticEncoding) or not self.enc.fixed_pt:
            return self.enc.inverse(x)
        # The resonance encoding draws the partons' total pT from its N(0, 1 GeV) smearing with
        # torch's global generator; a graph must be a function of (reco, mask, z), so the
        # exported sampler puts it at its leading-order value, exactly 0.
        return self.enc.inverse(x, transverse=x.new_zeros(*x.shape[:-1], 2, dtype=torch.float64))


class TransferLogDensity(nn.Module):
    """log W(reco | partons) of a :class:`~unfoldmem.flows.transfer.TransferFlow` as one graph.

    ``forward(partons (B, n, 4), reco (B, S, 7), mask (B, S) bool)`` → (B,) float64; every
    multiplicity class is evaluated on every event and the event's own class selected, so the
    graph has no data-dependent shapes (cost ∝ number of classes).
    """

    def __init__(self, model: TransferFlow) -> None:
        super().__init__()
        self.model = model
        model.freeze_pairs()
        self.penc = _StaticEncoding(model.parton_encoding)
        self.rencs = nn.ModuleList(_StaticEncoding(e) for e in model.reco_encodings)
        self.flows = nn.ModuleList(_StaticFlow(f) for f in model.flows)
        self.mult = list(model.multiplicities)
        self.open_last = bool(model.config.open_last)
        self.nfix = int(model.fixed_types.shape[0])
        self.dtype = model._dtype

    def forward(self, partons: Tensor, reco: Tensor, mask: Tensor) -> Tensor:
        """log W (B,) float64; −inf where the jet count is in no class."""
        ctx = self.penc(partons)[0].to(self.dtype)
        logits = torch.log_softmax(self.model.classifier(ctx), -1).double()
        mask = mask.bool()
        is_jet = mask & (reco[..., 6] == JET)
        n_jets = is_jet.long().sum(-1)
        rank = torch.cumsum(is_jet.long(), -1)
        out = torch.full(n_jets.shape, -math.inf, dtype=torch.float64, device=reco.device)
        last = len(self.mult) - 1
        for k, (m, enc, flow) in enumerate(zip(self.mult, self.rencs, self.flows, strict=True)):
            keep = mask & ~(is_jet & (rank > m))
            pos = torch.cumsum(keep.long(), -1) - 1
            slots = torch.arange(self.nfix + m, device=reco.device)
            # one-hot (B, S, count): the kept objects in slot order, as TransferFlow gathers them
            onehot = (keep[..., None] & (pos[..., None] == slots)).double()
            objs = torch.einsum("bsj,bsf->bjf", onehot, reco[..., :4].double())
            # parton-relative residuals and the unpaired jets' acceptance map, as TransferFlow
            objs, l_pseudo = self.model.pseudo_objects(k, objs, partons.double())
            y, ladj = enc(objs)
            lp = (logits[..., k] + flow.log_prob(y.to(self.dtype), ctx).double() + ladj
                  + l_pseudo)
            hit = n_jets >= m if (k == last and self.open_last) else n_jets == m
            out = torch.where(hit, lp, out)
        return out
