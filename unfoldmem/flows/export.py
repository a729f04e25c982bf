r"""Deployment: the cINN sampler and the transfer-flow log-density as ONNX (or TorchScript) graphs.

The trained modules select features with boolean buffers, which ``torch.export`` sees as
data-dependent shapes; the exported graphs therefore run the *same* weights through the
export-friendly twins of :mod:`unfoldmem.flows.export_twins`, one static graph for every batch
size and multiplicity. Every exported graph is checked against the torch model on the export
inputs.

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

from unfoldmem.flows.cinn import CINN
from unfoldmem.flows.encoding import ObjectEncoding
from unfoldmem.flows.export_twins import CINNSampler, TransferLogDensity
from unfoldmem.flows.transfer import TransferFlow

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
            if net.parton_encoding.redraws:
                shapes["partons"] += ("; NaN rows lie outside the physical region: draw a new "
                                      "z for them (CINN.sample_partons does)")
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
