"""Export: ONNX graphs run by onnxruntime reproduce the torch models to 1e-5."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unfoldmem.cards.model import ConditionConfig, EncodingConfig, FlowConfig, TransferConfig
from unfoldmem.flows.cinn import CINN
from unfoldmem.flows.export import (
    CINNSampler,
    TransferLogDensity,
    export_graph,
    export_model,
    run_onnx,
)
from unfoldmem.flows.transfer import TransferFlow

TOL = 1e-5


def _cinn() -> tuple[CINN, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    n = 64
    objs = torch.rand(n, 3, 4, dtype=torch.float64) * torch.tensor([50.0, 1, 1, 0]) \
        + torch.tensor([10.0, 0.0, 0.0, 4.7])
    objs[:, 0, 3] += 3 * torch.rand(n, dtype=torch.float64)  # one free mass, two fixed
    reco = torch.zeros(n, 5, 7, dtype=torch.float64)
    reco[..., :4] = objs[:, :1] + torch.rand(n, 5, 4)
    reco[..., 6] = 3.0
    reco[:, 0, 6] = 0.0
    mask = torch.ones(n, 5, dtype=torch.bool)
    mask[::2, 4] = False
    model = CINN.from_data(objs, reco, mask, flow=FlowConfig(transforms=3, hidden=[16]),
                           condition=ConditionConfig(embed=8, hidden=[8], context=4,
                                                     attention_layers=1, heads=2))
    with torch.no_grad():  # move off the identity initialisation
        for p in model.flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.double().eval(), reco, mask


def _transfer() -> tuple[TransferFlow, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    n = 64
    partons = torch.rand(n, 2, 4, dtype=torch.float64) * torch.tensor([50.0, 1, 1, 0]) \
        + torch.tensor([20.0, 0, 0, 0])
    reco = torch.zeros(n, 4, 7, dtype=torch.float64)
    reco[:, 0, :3] = torch.tensor([15.0, 0.0, 0.5]) + torch.rand(n, 3)  # MET (eta = 0)
    reco[:, 0, 1] = 0.0
    reco[:, 1:3, :4] = partons + torch.rand(n, 2, 4)
    reco[: n // 2, 3, :4] = torch.tensor([25.0, 0.1, 0.2, 3.0]) + torch.rand(n // 2, 4)
    reco[:, 1:, 6] = 3.0
    mask = reco[..., 0] > 0
    model = TransferFlow.from_data(partons, reco, mask,
                                   config=TransferConfig(multiplicities=[2, 3],
                                                         classifier_hidden=[8]),
                                   flow=FlowConfig(transforms=2, hidden=[8]))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.double().eval(), partons, reco, mask


def test_cinn_sampler_twin_equals_flow_inverse():
    """Reference: CINN's own sampling path, partons = encoding⁻¹(flow(c).transform⁻¹(z))."""
    model, reco, mask = _cinn()
    z = torch.randn(64, model.parton_encoding.n_features, dtype=torch.float64)
    with torch.no_grad():
        ref = model.parton_encoding.inverse(model(reco, mask).transform.inv(z))
        got = CINNSampler(model)(reco, mask, z)
    assert torch.allclose(got, ref, atol=1e-12, rtol=0)


def test_transfer_twin_equals_transfer_log_prob():
    """Reference: TransferDistribution.log_prob, including −inf for 1-jet events (no class)."""
    model, partons, reco, mask = _transfer()
    bad = mask.clone()
    bad[:4, 2:] = False  # 1 jet: outside the classes [2, 3]
    with torch.no_grad():
        ref = model(partons).log_prob(reco, bad)
        got = TransferLogDensity(model)(partons, reco, bad)
    assert torch.isinf(ref[:4]).all() and torch.isinf(got[:4]).all()
    assert torch.allclose(got[4:], ref[4:], atol=1e-10, rtol=0)


def test_onnx_graphs_match_torch_with_onnxruntime(tmp_path):
    """Reference: the torch models; onnxruntime runs each exported graph on a *different* batch
    size and slot count than the one it was exported with, agreeing to 1e-5."""
    model, reco, mask = _cinn()
    sampler = CINNSampler(model)
    z = torch.randn(64, sampler.n_features, dtype=torch.float64)
    dims = {"reco": {0: "batch", 1: "slots"}, "mask": {0: "batch", 1: "slots"},
            "z": {0: "batch"}}
    info = export_graph(sampler, (reco, mask, z), tmp_path / "c.onnx", ["reco", "mask", "z"],
                        "partons", "onnx", dims)
    assert info["max_abs_dev"] < TOL
    r2, m2, z2 = reco[:7, :4].clone(), mask[:7, :4].clone(), torch.randn(7, z.shape[1]).double()
    out = torch.from_numpy(run_onnx(tmp_path / "c.onnx", {"reco": r2, "mask": m2, "z": z2}))
    with torch.no_grad():
        ref = model.parton_encoding.inverse(model(r2, m2).transform.inv(z2))
    assert out.shape == (7, 3, 4)
    assert float((out - ref).abs().max()) < TOL

    tmodel, partons, treco, tmask = _transfer()
    dims = {"partons": {0: "batch"}, "reco": {0: "batch", 1: "slots"},
            "mask": {0: "batch", 1: "slots"}}
    info = export_graph(TransferLogDensity(tmodel), (partons, treco, tmask),
                        tmp_path / "t.onnx", ["partons", "reco", "mask"], "log_w", "onnx", dims)
    assert info["max_abs_dev"] < TOL
    pad = torch.cat([treco[:9], torch.zeros(9, 2, 7, dtype=torch.float64)], 1)  # 2 empty slots
    pmask = pad[..., 0] > 0
    out = torch.from_numpy(run_onnx(tmp_path / "t.onnx",
                                    {"partons": partons[:9], "reco": pad, "mask": pmask}))
    with torch.no_grad():
        ref = tmodel(partons[:9]).log_prob(pad, pmask)
    assert torch.isfinite(ref).all()
    assert float((out - ref).abs().max()) < TOL


@pytest.mark.parametrize("which", ["cinn", "transfer"])
def test_export_model_torchscript_round_trip(tmp_path, which):
    """Reference: the torch model; the saved TorchScript file reloads and reproduces it."""
    model = _cinn()[0] if which == "cinn" else _transfer()[0]
    manifest = export_model(model, tmp_path, fmt="torchscript", dtype="float64", n_example=16)
    json.dumps(manifest)  # the manifest is plain JSON
    assert manifest["model"] == which and manifest["max_abs_dev"] < TOL
    (graph,) = manifest["graphs"]
    loaded = torch.jit.load(str(tmp_path / graph["file"]))
    assert graph["file"].endswith(".pt") and loaded is not None


def test_export_rejects_unknown_format_and_dtype(tmp_path):
    model, reco, mask = _cinn()
    with pytest.raises(ValueError, match="onnx, torchscript"):
        export_graph(CINNSampler(model), (reco, mask, torch.zeros(64, 7)), tmp_path / "x",
                     ["reco", "mask", "z"], "partons", "tflite")
    with pytest.raises(ValueError, match="float32 or float64"):
        export_model(model, tmp_path, dtype="float16")


def _tree_cinn(objs: torch.Tensor, reco: torch.Tensor, mask: torch.Tensor, coordinates: str,
               pdg: list[int]) -> CINN:
    """A tiny float64 cINN with decay-tree parton coordinates (``resonances`` or ``onshell``)."""
    torch.manual_seed(0)
    return CINN.from_data(objs, reco, mask, flow=FlowConfig(transforms=2, hidden=[8]),
                          condition=ConditionConfig(embed=8, hidden=[8], context=4,
                                                    attention_layers=0),
                          encoding=EncodingConfig(parton_coordinates=coordinates),
                          pdg=pdg).double().eval()


def _torchscript_only(model: CINN, tmp_path: Path, reco: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    """ONNX is refused with a clear error; the TorchScript graph equals the eager sampler
    (1e-10 on 9 events, and the manifest's own check < TOL). Returns the graph's samples."""
    with pytest.raises(ValueError, match="resonance coordinates"):
        export_model(model, tmp_path, "onnx", "float64")
    manifest = export_model(model, tmp_path, "torchscript", "float64")
    assert manifest["max_abs_dev"] < TOL
    graph = torch.jit.load(tmp_path / "cinn_sampler.pt")
    z = torch.randn(9, CINNSampler(model).n_features, dtype=torch.float64)
    with torch.no_grad():
        out = graph(reco[:9], mask[:9], z)
        ref = CINNSampler(model)(reco[:9], mask[:9], z)
    assert torch.allclose(out, ref, atol=1e-10)
    return out


def test_resonance_cinn_exports_to_torchscript(tmp_path):
    """Reference: the torch sampler with the total pT at its LO value 0. A cINN in resonance
    coordinates (Z -> mu mu) exports as TorchScript; its graph reproduces the partons exactly
    and conserves the (zero) total transverse momentum."""
    import math

    from unfoldmem.physics import lorentz

    g = torch.Generator().manual_seed(0)
    n = 128
    m = 91.0 + 2.5 * torch.randn(n, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    ct = 2 * torch.rand(n, generator=g, dtype=torch.float64) - 1
    ph = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    st, e = (1 - ct**2).sqrt(), m / 2
    p1 = torch.stack([e, e * st * ph.cos(), e * st * ph.sin(), e * ct], -1)
    p2 = torch.cat([p1[:, :1], -p1[:, 1:]], -1)
    ch, sh = torch.cosh(y)[:, None], torch.sinh(y)[:, None]
    boost = lambda p: torch.stack([ch[:, 0] * p[:, 0] + sh[:, 0] * p[:, 3], p[:, 1], p[:, 2],  # noqa: E731
                                   ch[:, 0] * p[:, 3] + sh[:, 0] * p[:, 0]], -1)
    objs = lorentz.to_ptetaphim(torch.stack([boost(p1), boost(p2)], 1))
    reco = torch.zeros(n, 3, 7, dtype=torch.float64)
    reco[:, 1:, :4] = objs * (1 + 0.01 * torch.randn(n, 2, 4, generator=g, dtype=torch.float64))
    reco[:, 1:, 6] = 1.0
    reco[:, 0, 0] = 5.0
    mask = torch.ones(n, 3, dtype=torch.bool)
    model = _tree_cinn(objs, reco, mask, "resonances", [13, -13])
    assert type(model.parton_encoding).__name__ == "ResonanceEncoding"
    out = _torchscript_only(model, tmp_path, reco, mask)
    total = lorentz.from_ptetaphim(out).sum(1)
    assert float(lorentz.pt(total).max()) < 1e-9


@pytest.mark.parametrize("pairing", ["slot", "pt"])
def test_residual_transfer_exports_to_onnx(tmp_path, pairing):
    """Reference: TransferFlow.log_prob of a parton-relative (residual) transfer flow;
    onnxruntime's graph agrees to 1e-5 on every event."""
    torch.manual_seed(1)
    n = 64
    partons = torch.rand(n, 2, 4, dtype=torch.float64) * torch.tensor([50.0, 1, 1, 0]) \
        + torch.tensor([20.0, 0, 0, 0])
    reco = torch.zeros(n, 4, 7, dtype=torch.float64)
    reco[:, 0, :3] = torch.tensor([15.0, 0.0, 0.5]) + torch.rand(n, 3)
    reco[:, 0, 1] = 0.0
    reco[:, 1:3, :3] = partons[..., :3] + torch.rand(n, 2, 3)
    reco[: n // 2, 3, :3] = torch.tensor([25.0, 0.1, 0.2]) + torch.rand(n // 2, 3)
    reco[:, 1:, 6] = 3.0
    mask = reco[..., 0] > 0
    cfg = TransferConfig(multiplicities=[2, 3], classifier_hidden=[8], residual=True,
                         pairing=pairing)
    model = TransferFlow.from_data(partons, reco, mask, config=cfg,
                                   flow=FlowConfig(transforms=2, hidden=[8])).double().eval()
    with torch.no_grad():
        ref = model(partons).log_prob(reco, mask)
    ok = torch.isfinite(ref)
    assert int(ok.sum()) > n // 2
    dims = {"partons": {0: "batch"}, "reco": {0: "batch", 1: "slots"},
            "mask": {0: "batch", 1: "slots"}}
    info = export_graph(TransferLogDensity(model), (partons, reco, mask), tmp_path / "t.onnx",
                        ["partons", "reco", "mask"], "log_w", "onnx", dims)
    assert info["max_abs_dev"] < TOL
    out = torch.from_numpy(run_onnx(tmp_path / "t.onnx",
                                    {"partons": partons, "reco": reco, "mask": mask}))
    assert bool((torch.isfinite(out) == ok).all())
    assert float((out - ref)[ok].abs().max()) < TOL


@pytest.mark.parametrize("kick", [False, True])
def test_onshell_cinn_exports_to_torchscript(tmp_path, kick):
    """Reference: the torch sampler (total pT at its LO value 0 when Σp_T = 0). A tt̄ cINN in
    on-shell coordinates (lab leaves, directions relative to the lepton, the top-down hadronic
    top; or all bottom-up for kicked events) exports as TorchScript and reproduces the partons;
    ONNX is refused as for resonance coordinates."""
    from tests._support.encoding_checks import ttbar_partons
    from unfoldmem.physics import lorentz

    objs = ttbar_partons(96, 11, kick)
    n = objs.shape[0]
    g = torch.Generator().manual_seed(1)
    reco = torch.zeros(n, 6, 7, dtype=torch.float64)
    reco[..., :4] = objs * (1 + 0.05 * torch.randn(n, 6, 4, generator=g, dtype=torch.float64))
    reco[..., 6] = 3.0
    reco[:, 1, 6] = 1.0
    mask = torch.ones(n, 6, dtype=torch.bool)
    model = _tree_cinn(objs, reco, mask, "onshell", [5, -13, 14, -5, 1, -2])
    assert type(model.parton_encoding).__name__ == "OnShellEncoding"
    assert model.parton_encoding.fixed_pt is not kick
    out = _torchscript_only(model, tmp_path, reco, mask)
    if not kick:
        assert float(lorentz.pt(lorentz.from_ptetaphim(out).sum(1)).max()) < 1e-9
