r"""Deployment: the cINN sampler and the transfer-flow log-density as ONNX (or TorchScript) graphs.

The trained modules select features with boolean buffers (``x[..., mask]``), which
``torch.export`` sees as data-dependent shapes. The exported graphs therefore run the *same*
weights through export-friendly twins: feature selections become constant integer indices, the
coupling split/merge a constant permutation, and the transfer flow's per-multiplicity
gathering a one-hot contraction, so one static graph serves every batch size and multiplicity.
Every exported graph is checked against the torch model on the export inputs.

Graphs:

* ``cinn_sampler``: ``(reco (B, S, 7), mask (B, S) bool, z (B, D)) → partons (B, n, 4)``
  (pt GeV, eta, phi, m GeV). The base noise ``z ~ N(0, 1)`` is an input, so the graph is
  deterministic: the same z gives the same partons as :meth:`CINN.sample_partons`' flow.
* ``transfer_log_density``: ``(partons (B, n, 4), reco (B, S, 7), mask (B, S) bool) → log W
  (B,)`` float64, the density of :class:`~unfoldmem.flows.transfer.TransferDistribution`
  (−inf for a multiplicity in no class).

References:
    | ONNX operator set, https://onnx.ai/onnx/operators/
    | Invertible networks or partons to detector and back again (Bellagente et al., 2020)
    | https://arxiv.org/abs/2006.06685
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from zuko.flows import Flow, GeneralCouplingTransform

from unfoldmem.flows.cinn import CINN
from unfoldmem.flows.encoding import ObjectEncoding
from unfoldmem.flows.transfer import JET, TransferFlow

__all__ = [
    "FORMATS",
    "CINNSampler",
    "TransferLogDensity",
    "export_graph",
    "run_onnx",
    "exportable_members",
    "export_model",
]

#: Output formats of :func:`export_graph`.
FORMATS = ("onnx", "torchscript")

_U_MAX = 1.0 - 1e-12
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
        u = (phi / math.pi).clamp(-_U_MAX, _U_MAX)
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
        renc = self.model.reco_encoding
        objects = reco.double()
        cont = torch.stack([objects[..., 0].clamp_min(1e-6).log(), objects[..., 1],
                            (objects[..., 3].clamp_min(0) + 1).log()], -1)
        cont = (cont - renc.mean) / renc.std
        phi = objects[..., 2]
        types = torch.arange(4, dtype=torch.float64, device=reco.device)
        onehot = (objects[..., 6:7].clamp(0, 3).floor() == types).double()
        feats = torch.cat([cont[..., :2], phi.cos()[..., None], phi.sin()[..., None],
                           cont[..., 2:], objects[..., 4:6], onehot], -1)
        feats = (feats * mask[..., None].double()).to(self.dtype)
        c = self.model.condition(feats, mask.bool())
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


def exportable_members(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The plain networks of a model: itself, each ensemble member, or a Bayesian mean model.

    Returns:
        (suffix, module) pairs; suffix ``""`` for a plain model, ``"_member{i}"`` for ensemble
        members and ``"_mean"`` for the posterior-mean weights of a Bayesian model.
    """
    from unfoldmem.flows.bayesian import BayesianFlow, DeepEnsemble

    if isinstance(model, DeepEnsemble):
        return [(f"_member{i}", m) for i, m in enumerate(model.ensemble)]
    if isinstance(model, BayesianFlow):
        return [("_mean", model.mean_model())]
    return [("", model)]


def export_graph(
    module: nn.Module,
    inputs: Sequence[Tensor],
    path: str | Path,
    input_names: Sequence[str],
    output_name: str,
    fmt: str = "onnx",
    batch_dims: dict[str, dict[int, str]] | None = None,
) -> dict[str, Any]:
    """Write one graph (ONNX via ``torch.export``, or TorchScript via tracing) and check it.

    Arguments:
        module: :class:`CINNSampler` or :class:`TransferLogDensity` (or any static module).
        inputs: example inputs (their batch size is left free in the ONNX graph).
        path: output file (``.onnx`` or ``.pt``).
        input_names, output_name: graph I/O names.
        fmt: ``"onnx"`` or ``"torchscript"``.
        batch_dims: dynamic axes per input, by name ``"batch"`` or ``"slots"`` (default: axis 0
            of each input is the batch).

    Returns:
        ``{"file", "format", "inputs", "output", "max_abs_dev"}``: the largest |graph − torch|
        on ``inputs``.
    """
    if fmt not in FORMATS:
        msg = f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}"
        raise ValueError(msg)
    path = Path(path)
    module = module.eval()
    with torch.no_grad():
        ref = module(*inputs)
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about constant Python ints
            traced = torch.jit.trace(module, tuple(inputs), check_trace=False)
        traced.save(str(path))
        with torch.no_grad():
            got = torch.jit.load(str(path))(*inputs)
    else:
        named = {"batch": torch.export.Dim("batch", min=1),
                 "slots": torch.export.Dim("slots", min=2, max=64)}
        dims = batch_dims or {name: {0: "batch"} for name in input_names}
        dyn = {name: {ax: named[v] for ax, v in d.items()} for name, d in dims.items()}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(module, tuple(inputs), dynamic_shapes=dyn)
            onnx_program = torch.onnx.export(program, input_names=list(input_names),
                                             output_names=[output_name], dynamo=True,
                                             verbose=False, optimize=False)
        onnx_program.save(str(path))
        got = torch.from_numpy(run_onnx(path, dict(zip(input_names, inputs, strict=True))))
    finite = torch.isfinite(ref)
    dev = float((got.double() - ref.double())[finite].abs().max()) if bool(finite.any()) else 0.0
    same_inf = bool((torch.isfinite(got) == finite).all())
    return {"file": path.name, "format": fmt, "inputs": list(input_names), "output": output_name,
            "max_abs_dev": dev if same_inf else math.inf}


def run_onnx(path: str | Path, feeds: dict[str, Tensor]) -> Any:
    """Run an ONNX graph with onnxruntime (CPU) and return its first output as a numpy array."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # constant-folding notes about CastLike are not problems
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v.detach().cpu().numpy() for k, v in feeds.items()})[0]


def _example_cinn(model: CINN, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Plausible padded reco events (n, S, 7) + mask from the reco encoding's statistics."""
    slots = 6
    mean, std = model.reco_encoding.mean, model.reco_encoding.std
    noise = torch.randn(n, slots, 3, generator=gen, dtype=torch.float64)
    cont = mean + 0.5 * std * noise
    reco = torch.zeros(n, slots, 7, dtype=torch.float64)
    reco[..., 0] = cont[..., 0].exp()
    reco[..., 1] = cont[..., 1]
    reco[..., 2] = (torch.rand(n, slots, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    reco[..., 3] = (cont[..., 2].exp() - 1).clamp_min(0)
    reco[..., 6] = torch.tensor([0.0, 1.0] + [3.0] * (slots - 2))
    reco[:, 0, 1] = 0.0
    mask = torch.ones(n, slots, dtype=torch.bool)
    mask[::3, -1] = False
    return reco * mask[..., None], mask


def export_model(model: nn.Module, out_dir: str | Path, fmt: str = "onnx",
                 dtype: str = "float64", n_example: int = 64, seed: int = 0) -> dict[str, Any]:
    """Export every plain network of a trained model into ``out_dir`` and check each graph.

    Arguments:
        model: a :class:`CINN` or :class:`TransferFlow` (or a Bayesian / ensemble wrapper of
            one, see :func:`exportable_members`).
        out_dir: an existing directory; files ``cinn_sampler{suffix}.onnx`` or
            ``transfer_log_density{suffix}.onnx`` (``.pt`` for TorchScript) are written there.
        fmt: ``"onnx"`` or ``"torchscript"``.
        dtype: ``"float64"`` (weights cast exactly; graph agrees with torch to ~1e-7) or
            ``"float32"`` (as trained; ~1e-6 relative from float32 arithmetic).
        n_example: events of the synthetic example batch used to trace and check the graph.
        seed: seed of the example batch.

    Returns:
        the manifest (also meant for ``export.json``): model kind, dtype, format and per graph
        its file, input/output names and shapes, and the max |graph − torch| on the example.
    """
    import copy

    if dtype not in ("float32", "float64"):
        msg = f"unknown dtype {dtype!r}; expected float32 or float64"
        raise ValueError(msg)
    ext = ".onnx" if fmt == "onnx" else ".pt"
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    kind = ""
    for suffix, member in exportable_members(model):
        net = copy.deepcopy(member).eval()
        if dtype == "float64":
            net = net.double()
        if isinstance(net, CINN):
            if fmt == "onnx" and not isinstance(net.parton_encoding, ObjectEncoding):
                msg = ("a cINN in resonance coordinates (or on-shell ones) does not export to "
                       "ONNX (its decoding needs atan2, which onnxruntime has no kernel for); "
                       "use torchscript")
                raise ValueError(msg)
            kind = "cinn"
            wrapper: nn.Module = CINNSampler(net)
            reco, mask = _example_cinn(net, n_example, gen)
            z = torch.randn(n_example, net.parton_encoding.n_features, generator=gen,
                            dtype=torch.float64).to(net._dtype)
            inputs, names, out_name = (reco, mask, z), ["reco", "mask", "z"], "partons"
            shapes = {"reco": "(batch, slots, 7) float64: pt GeV, eta, phi, m GeV, btag, "
                      "charge, type (0 met, 1 muon, 2 electron, 3 jet)",
                      "mask": "(batch, slots) bool", "z": f"(batch, {z.shape[1]}) {dtype}: N(0, 1)",
                      "partons": f"(batch, {net.parton_encoding.n_objects}, 4) float64: "
                      "pt GeV, eta, phi, m GeV"}
            dims = {"reco": {0: "batch", 1: "slots"}, "mask": {0: "batch", 1: "slots"},
                    "z": {0: "batch"}}
            stem = "cinn_sampler"
        elif isinstance(net, TransferFlow):
            kind = "transfer"
            wrapper = TransferLogDensity(net)
            x = torch.randn(n_example, net.parton_encoding.n_features, generator=gen,
                            dtype=torch.float64)
            partons = net.parton_encoding.inverse(0.5 * x)
            torch.manual_seed(seed)
            reco = net(partons).sample()
            mask = reco[..., 0] > 0
            inputs, names, out_name = (partons, reco, mask), ["partons", "reco", "mask"], "log_w"
            shapes = {"partons": f"(batch, {net.parton_encoding.n_objects}, 4) float64: "
                      "pt GeV, eta, phi, m GeV",
                      "reco": "(batch, slots, 7) float64 (columns as unfoldmem.flows.encoding"
                      ".RECO_COLUMNS)", "mask": "(batch, slots) bool",
                      "log_w": "(batch,) float64: log W(reco | partons), -inf outside classes"}
            dims = {"partons": {0: "batch"}, "reco": {0: "batch", 1: "slots"},
                    "mask": {0: "batch", 1: "slots"}}
            stem = "transfer_log_density"
        else:
            msg = f"cannot export a {type(net).__name__}; expected a CINN or TransferFlow"
            raise TypeError(msg)
        info = export_graph(wrapper, inputs, Path(out_dir) / f"{stem}{suffix}{ext}", names,
                            out_name, fmt, dims)
        info["shapes"] = shapes
        graphs.append(info)
    return {"model": kind, "format": fmt, "dtype": dtype, "n_example": n_example,
            "graphs": graphs, "max_abs_dev": max(g["max_abs_dev"] for g in graphs)}
