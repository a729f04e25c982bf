"""Tests of unfoldmem.flows.cinn, and the zuko-style contract test over every flow class."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from scipy import stats

from unfoldmem.cards.model import (
    ConditionConfig,
    EncodingConfig,
    FlowConfig,
    ModelCard,
    TrainingConfig,
    TransferConfig,
)
from unfoldmem.flows.bayesian import BayesianFlow, DeepEnsemble
from unfoldmem.flows.cinn import CINN, CouplingNSF
from unfoldmem.flows.model_dir import build_model, encodings_of
from unfoldmem.flows.training import train
from unfoldmem.flows.transfer import TransferFlow

SMALL_FLOW = FlowConfig(transforms=2, hidden=[16], bins=6)
SMALL_COND = ConditionConfig(embed=8, hidden=[16], context=4, attention_layers=1, heads=2)
S_LOGPT, S_ETA, S_PHI = 0.15, 0.2, 0.2  # toy detector resolutions
P_LOGPT, P_ETA = 0.4, 1.0  # toy prior widths (log pt around log 50, eta around 0)


def toy_events(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two massless partons; reco = both smeared (flagged by btag 1/0) + 0-2 noise jets.

    Returns partons (n, 2, 4), reco (n, 5, 7) padded, mask (n, 5).
    """
    g = torch.Generator().manual_seed(seed)

    def r(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=g, dtype=torch.float64)

    logpt = math.log(50) + P_LOGPT * r(n, 2)
    eta = P_ETA * r(n, 2)
    phi = (2 * torch.rand(n, 2, generator=g, dtype=torch.float64) - 1) * math.pi
    partons = torch.stack([logpt.exp(), eta, phi, torch.zeros_like(eta)], -1)
    reco = torch.zeros(n, 5, 7, dtype=torch.float64)
    reco[:, :2, 0] = (logpt + S_LOGPT * r(n, 2)).exp()
    reco[:, :2, 1] = eta + S_ETA * r(n, 2)
    reco[:, :2, 2] = torch.remainder(phi + S_PHI * r(n, 2) + math.pi, 2 * math.pi) - math.pi
    reco[:, 0, 4] = 1.0
    n_noise = torch.randint(0, 3, (n,), generator=g)
    noise = torch.arange(3)[None] < n_noise[:, None]
    reco[:, 2:, 0] = torch.where(noise, (math.log(30) + 0.3 * r(n, 3)).exp(), 0.0)
    reco[:, 2:, 1] = torch.where(noise, 2 * r(n, 3), 0.0)
    reco[:, 2:, 2] = torch.where(noise, (2 * torch.rand(n, 3, generator=g) - 1) * math.pi, 0.0)
    reco[:, 2:, 5] = noise.double()
    reco[..., 6] = 3.0 * torch.cat([torch.ones(n, 2, dtype=torch.bool), noise], 1)
    mask = torch.cat([torch.ones(n, 2, dtype=torch.bool), noise], 1)
    return partons, reco, mask


def true_posterior_logpdf(partons: torch.Tensor, reco: torch.Tensor) -> torch.Tensor:
    """Exact log p(partons | reco) of the toy in (pt, eta, phi) (conjugate Gaussians)."""
    out = torch.zeros(partons.shape[:-2], dtype=torch.float64)
    for prior_mu, prior_s, s, col, transform in (
        (math.log(50), P_LOGPT, S_LOGPT, 0, torch.log), (0.0, P_ETA, S_ETA, 1, lambda t: t)
    ):
        prec = 1 / prior_s**2 + 1 / s**2
        mu = (prior_mu / prior_s**2 + transform(reco[..., :2, col]) / s**2) / prec
        val = transform(partons[..., col])
        out = out + torch.distributions.Normal(mu, prec**-0.5).log_prob(val).sum(-1)
    out = out - partons[..., 0].log().sum(-1)  # density per pt, not per log pt
    d = partons[..., 2] - reco[..., :2, 2]
    ks = torch.arange(-3, 4, dtype=torch.float64) * 2 * math.pi
    wn = torch.logsumexp(-0.5 * ((d[..., None] + ks) / S_PHI) ** 2, -1) - math.log(
        S_PHI * math.sqrt(2 * math.pi))
    return out + wn.sum(-1)


def true_posterior_sample(k: int, reco: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """k exact posterior samples per event: (k, n, 2, 4)."""
    n = reco.shape[0]
    out = torch.zeros(k, n, 2, 4, dtype=torch.float64)
    for prior_mu, prior_s, s, col, fwd, inv in (
        (math.log(50), P_LOGPT, S_LOGPT, 0, torch.log, torch.exp),
        (0.0, P_ETA, S_ETA, 1, lambda t: t, lambda t: t),
    ):
        prec = 1 / prior_s**2 + 1 / s**2
        mu = (prior_mu / prior_s**2 + fwd(reco[:, :2, col]) / s**2) / prec
        out[..., col] = inv(mu + prec**-0.5 * torch.randn(k, n, 2, generator=g, dtype=torch.float64))
    phi = reco[:, :2, 2] + S_PHI * torch.randn(k, n, 2, generator=g, dtype=torch.float64)
    out[..., 2] = torch.remainder(phi + math.pi, 2 * math.pi) - math.pi
    return out


# ---- contract test over every flow class ------------------------------------------------------


def _cinn() -> tuple[CINN, tuple[Any, ...], torch.Tensor, dict[str, torch.Tensor]]:
    partons, reco, mask = toy_events(64, 0)
    model = CINN.from_data(partons, reco, mask, flow=SMALL_FLOW, condition=SMALL_COND)
    return model, (reco, mask), model.encode_partons(partons)[0], model.prepare(partons, reco, mask)


def _transfer() -> tuple[TransferFlow, tuple[Any, ...], tuple[torch.Tensor, torch.Tensor], dict]:
    partons, reco, mask = toy_events(64, 1)
    cfg = TransferConfig(multiplicities=[2, 3, 4], open_last=True, classifier_hidden=[8])
    model = TransferFlow.from_data(partons, reco, mask, config=cfg, flow=SMALL_FLOW)
    return model, (partons,), (reco, mask), model.prepare(partons, reco, mask)


class _NSFModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flow = CouplingNSF(3, 2, SMALL_FLOW)

    def forward(self, c: torch.Tensor) -> torch.distributions.Distribution:
        return self.flow(c)

    def nll(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return -self.flow(batch["c"]).log_prob(batch["x"])


def _nsf() -> tuple[_NSFModel, tuple[Any, ...], torch.Tensor, dict[str, torch.Tensor]]:
    c, x = torch.randn(64, 2), torch.randn(64, 3)
    return _NSFModel(), (c,), x, {"c": c, "x": x, "weight": torch.ones(64)}


def _bayes() -> tuple[BayesianFlow, tuple[Any, ...], torch.Tensor, dict[str, torch.Tensor]]:
    model, args, x, batch = _cinn()
    return BayesianFlow(model, init_logvar=-6.0), args, x, batch


def _ensemble() -> tuple[DeepEnsemble, tuple[Any, ...], torch.Tensor, dict[str, torch.Tensor]]:
    model, args, x, batch = _cinn()
    enc = encodings_of(model)
    card = ModelCard(name="e", flow=SMALL_FLOW, condition=SMALL_COND)
    return DeepEnsemble(lambda: build_model(card, enc), 2), args, x, batch


BUILDERS: dict[str, Callable[[], tuple[Any, ...]]] = {
    "CouplingNSF": _nsf, "CINN": _cinn, "TransferFlow": _transfer, "BayesianFlow": _bayes,
    "DeepEnsemble": _ensemble,
}


def _log_prob(dist: Any, x: Any) -> torch.Tensor:
    return dist.log_prob(*x) if isinstance(x, tuple) else dist.log_prob(x)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_flow_contract(name: str) -> None:
    """zuko-style contract: log_prob shape/finite, grads reach every parameter, sample shape,
    state_dict round trip (torch.load weights_only) gives identical log_prob."""
    torch.manual_seed(1)
    model, args, x, batch = BUILDERS[name]()
    torch.manual_seed(2)
    lp = _log_prob(model(*args), x)
    assert lp.shape == (64,)
    assert bool(torch.isfinite(lp).all())

    loss = model.nll(batch).mean()
    if hasattr(model, "penalty"):
        loss = loss + model.penalty() / 64
    loss.backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and bool(torch.isfinite(p.grad).all()), pname
            assert float(p.grad.abs().sum()) > 0, pname

    sample = model(*args).sample((3,))
    if name == "TransferFlow":
        assert sample.shape == (3, 64, 4, 7)
        assert bool(torch.isfinite(model(*args).log_prob(sample)).all())
    else:
        assert sample.shape == (3, *x.shape)

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(5)
    fresh = BUILDERS[name]()[0]
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    torch.manual_seed(3)
    a = _log_prob(model(*args), x)
    torch.manual_seed(3)
    b = _log_prob(fresh(*args), x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["CouplingNSF", "CINN"])
def test_flow_invertible_and_jacobian(name: str) -> None:
    """x -> z -> x to 1e-5 (float32) and log|det J| vs autograd (float64), as in zuko's tests."""
    torch.manual_seed(1)
    model, args, x, _ = BUILDERS[name]()
    dist = model(*args)
    with torch.no_grad():
        z = dist.transform(x)
        back = dist.transform.inv(z)
    assert float((back - x).abs().max()) < 1e-5
    model = model.double()
    args64 = tuple(a.double() if a.is_floating_point() else a for a in args)
    t = model(*args64).transform
    for i in range(3):
        xi = x[i].double()

        def f(u: torch.Tensor, i: int = i) -> torch.Tensor:
            full = x.double().clone()
            full[i] = u
            return t(full)[i]

        jac = torch.autograd.functional.jacobian(f, xi)
        full = x.double()
        ladj = t.log_abs_det_jacobian(full, t(full))[i]
        assert torch.allclose(ladj, torch.linalg.slogdet(jac)[1], atol=1e-8)


def test_batched_sampler_matches_flow() -> None:
    """CouplingNSF.inverse_many (context part of every hyper-network computed once per event,
    chunked, fused spline) equals zuko's own inverse ``flow(c).transform.inv(z)`` for the same z,
    also in float64; with two threads (chunks on two workers) the result is bit-identical to one
    thread; and sample_partons decodes draws of the same shape and dtype."""
    torch.manual_seed(0)
    model, (reco, mask), _, _ = _cinn()
    c = model.context(reco, mask).detach()
    z = torch.randn(9, 64, model.parton_encoding.n_features)
    with torch.no_grad():
        ref = model.flow(c).transform.inv(z)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = model.flow.inverse_many(z, c, 64)
            for chunk in (64, 100, 10**6):  # one event-batch per chunk, ragged, everything at once
                assert torch.allclose(model.flow.inverse_many(z, c, chunk), ref, atol=1e-5)
            torch.set_num_threads(2)  # the 9 chunks go to two single-threaded workers
            assert torch.equal(model.flow.inverse_many(z, c, 64), one)
            with torch.inference_mode():  # the workers take the caller's mode
                assert torch.equal(model.flow.inverse_many(z, c, 64), one)
            assert torch.get_num_threads() == 2
        finally:
            torch.set_num_threads(threads)
        flow64 = model.flow.double()
        ref64 = flow64(c.double()).transform.inv(z.double())
        assert torch.allclose(flow64.inverse_many(z.double(), c.double()), ref64, atol=1e-10)
        model.flow.float()
    assert model.flow.sample_many(3, c).shape == (3, 64, model.parton_encoding.n_features)


def test_batched_sampler_accelerator_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The branch taken off the CPU (zuko's spline on the unpermuted, unpadded hyper-network
    output, no worker threads), forced here on the CPU, equals zuko's inverse too."""
    torch.manual_seed(0)
    model, (reco, mask), _, _ = _cinn()
    c = model.context(reco, mask).detach()
    z = torch.randn(5, 64, model.parton_encoding.n_features)
    plan = model.flow._plan
    monkeypatch.setattr(model.flow, "_plan", lambda ctx, per, cpu: plan(ctx, per, False))
    with torch.no_grad():
        ref = model.flow(c).transform.inv(z)
        assert torch.allclose(model.flow.inverse_many(z, c, 100), ref, atol=1e-5)


def test_padding_does_not_change_context() -> None:
    """Extra masked slots with garbage values leave the condition (deep set) unchanged."""
    torch.manual_seed(0)
    model, (reco, mask), _, _ = _cinn()
    extra = torch.full((64, 3, 7), 123.0, dtype=torch.float64)
    reco2 = torch.cat([reco, extra], 1)
    mask2 = torch.cat([mask, torch.zeros(64, 3, dtype=torch.bool)], 1)
    assert torch.allclose(model.context(reco, mask), model.context(reco2, mask2), atol=1e-6)
    perm = torch.tensor([1, 0, 4, 3, 2])  # permuting objects does not matter either
    assert torch.allclose(model.context(reco, mask), model.context(reco[:, perm], mask[:, perm]),
                          atol=1e-5)


def _lepton_events() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The toy with MET and 0-3 leptons of either flavour in front: partons, reco (64, 9, 7), mask."""
    torch.manual_seed(0)
    partons, reco, mask = toy_events(64, 0)
    # MET, then 1-3 leptons of either flavour in shuffled slots, then the toy's jets
    met = torch.tensor([[30.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    lep = torch.zeros(64, 3, 7, dtype=torch.float64)
    lep[..., :3] = torch.rand(64, 3, 3, dtype=torch.float64) * torch.tensor([80.0, 2.0, 3.0]) + 10
    lep[..., 5] = torch.where(torch.rand(64, 3) < 0.5, -1.0, 1.0).double()
    lep[..., 6] = torch.randint(1, 3, (64, 3)).double()
    lmask = torch.rand(64, 3) < 0.6
    lmask[:4] = False  # no lepton at all
    reco = torch.cat([met.expand(64, 1, 7), lep, reco], 1)
    mask = torch.cat([torch.ones(64, 1, dtype=torch.bool), lmask, mask], 1)
    return partons, reco, mask


DIRECT_COND = SMALL_COND.model_copy(update={"direct_leptons": 2, "direct_met": True})


def test_direct_context_is_met_and_hardest_leptons() -> None:
    """Reference: RecoEncoding's features of MET and of the pt-ordered leptons picked by a plain
    loop over slots; padding, slot order and missing leptons (zeros) handled; default off."""
    partons, reco, mask = _lepton_events()
    cfg = DIRECT_COND
    model = CINN.from_data(partons, reco, mask, flow=SMALL_FLOW, condition=cfg)
    assert model.condition.out_features == SMALL_COND.context + 3 * 11
    feats = model.reco_encoding(reco, mask).float()
    c = model.context(reco, mask)
    want = torch.zeros(64, 3, 11)
    for i in range(64):
        want[i, 0] = feats[i, 0]
        leps = sorted((j for j in range(1, 4) if mask[i, j]), key=lambda j: -float(reco[i, j, 0]))
        for k, j in enumerate(leps[:2]):
            want[i, k + 1] = feats[i, j]
    assert torch.equal(c[:, SMALL_COND.context:].detach(), want.flatten(1))
    perm = torch.tensor([0, 5, 3, 1, 4, 2, 8, 6, 7])
    extra = torch.full((64, 2, 7), 123.0, dtype=torch.float64)
    c2 = model.context(torch.cat([reco[:, perm], extra], 1),
                       torch.cat([mask[:, perm], torch.zeros(64, 2, dtype=torch.bool)], 1))
    assert torch.allclose(c, c2, atol=1e-5)
    plain = CINN.from_data(partons, reco, mask, flow=SMALL_FLOW, condition=SMALL_COND)
    assert plain.context(reco, mask).shape == (64, SMALL_COND.context)


def test_direct_context_exports_to_onnx(tmp_path: Any) -> None:
    """Reference: the torch sampler; onnxruntime runs the exported graph with fewer slots."""
    from unfoldmem.flows.export import CINNSampler, export_graph, run_onnx

    partons, reco, mask = _lepton_events()
    model = CINN.from_data(partons, reco, mask, flow=SMALL_FLOW, condition=DIRECT_COND)
    with torch.no_grad():  # move off the identity initialisation
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model = model.double().eval()
    sampler = CINNSampler(model)
    z = torch.randn(64, sampler.n_features, dtype=torch.float64)
    dims = {"reco": {0: "batch", 1: "slots"}, "mask": {0: "batch", 1: "slots"},
            "z": {0: "batch"}}
    info = export_graph(sampler, (reco, mask, z), tmp_path / "c.onnx", ["reco", "mask", "z"],
                        "partons", "onnx", dims)
    assert info["max_abs_dev"] < 1e-5
    keep = torch.tensor([0, 2, 3, 4, 5, 6])  # a lepton slot and two jet slots dropped
    r2, m2, z2 = reco[:9, keep], mask[:9, keep], z[:9]
    out = torch.from_numpy(run_onnx(tmp_path / "c.onnx", {"reco": r2, "mask": m2, "z": z2}))
    with torch.no_grad():
        ref = sampler(r2, m2, z2)
    assert float((out - ref).abs().max()) < 1e-5


def test_physical_density_and_samples() -> None:
    """log_prob_partons = flow log_prob + encoding Jacobian; samples decode to valid kinematics."""
    torch.manual_seed(0)
    model, (reco, mask), x, _ = _cinn()
    partons, _, _ = toy_events(64, 0)
    ref = model(reco, mask).log_prob(x).double() + model.parton_encoding(partons)[1]
    assert torch.allclose(model.log_prob_partons(partons, reco, mask), ref)
    s = model.sample_partons(10, reco, mask)
    assert s.shape == (10, 64, 2, 4) and s.dtype == torch.float64
    assert bool((s[..., 0] > 0).all()) and bool((s[..., 2].abs() <= math.pi).all())
    assert bool((s[..., 3] == 0).all())  # fixed (massless) partons stay massless


@pytest.mark.slow
def test_cinn_calibrated_on_toy() -> None:
    """Trained cINN vs the toy's exact conjugate posterior: rank statistics of the truth among 19
    posterior samples are uniform in every marginal (χ², p > 0.01 after a Bonferroni factor 6), and
    KL(true ‖ cINN) per event, estimated with exact posterior samples, is below 0.1 nats (6 dims;
    the exact posterior has NLL −0.9 nats in feature space, so 0.1 is a 1.5 % density error per
    dimension). The default encoding (absolute parton φ): the posterior's location is then the
    reco φ, which the condition network sees. With ``relative_phi=True`` the location of φ₁ − φ₀
    is wrap(φ₁_reco − φ₀) with φ₀ a flow variable: the coupling networks would have to learn the
    rotation and its wrap, and the same training ends at KL 4.8 nats (docs/flows.md).
    Measured: KL 0.082 nats (median 0.061; 0.14 for events with a reco φ within 3σ of ±π, where
    the posterior wraps), validation NLL −0.78, 6 min on a loaded 2-core machine (before: 4
    couplings, no attention, no atanh φ input: KL 4.1 nats). With 2×128 hidden units and 10 bins
    (2.8× the sampling FLOPs) the same closure gave KL 0.104 (median 0.068, 0.19 near ±π; ranks
    p > 0.11), so the cheaper 2×64 / 8 bins flow is the default of cinn_drell_yan.yaml.

    Reference: the analytic posterior of Gaussian smearing with Gaussian/uniform priors.
    """
    torch.manual_seed(0)
    partons, reco, mask = toy_events(30000, 10)
    model = CINN.from_data(
        partons, reco, mask, flow=FlowConfig(transforms=6, hidden=[64, 64], bins=8),
        condition=ConditionConfig(embed=32, hidden=[64, 64], context=16, attention_layers=1,
                                  heads=2),
        encoding=EncodingConfig(),
    )
    assert not model.parton_encoding.relative_phi
    data = model.prepare(partons, reco, mask)
    res = train(model, data, TrainingConfig(epochs=20, batch_size=256, lr=2e-3, patience=0),
                quiet=True)
    print(f"cINN toy: best validation NLL {res.best_val:.4f}, {res.events_per_second:.0f} ev/s")
    tp, tr, tm = toy_events(600, 11)
    with torch.no_grad():
        samples = model.sample_partons(19, tr, tm)
    kin = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    for obj, col in kin:
        ranks = (samples[..., obj, col] < tp[:, obj, col]).sum(0)
        counts = torch.bincount(ranks, minlength=20).double()
        p = stats.chisquare(counts.numpy()).pvalue
        assert p > 0.01 / len(kin), (obj, col, counts.tolist(), p)
    g = torch.Generator().manual_seed(5)
    truth = true_posterior_sample(20, tr[:300], g)
    with torch.no_grad():
        lq = model.log_prob_partons(truth, tr[:300].expand(20, -1, -1, -1),
                                    tm[:300].expand(20, -1, -1))
    per_event = (true_posterior_logpdf(truth, tr[:300]) - lq).mean(0)
    kl = per_event.mean()
    edge = (tr[:300, :2, 2].abs() > math.pi - 3 * S_PHI).any(-1)
    print(f"KL(true || cINN) = {float(kl):.4f} nats per event; median {float(per_event.median()):.4f};"
          f" events with a reco phi within 3σ of ±π: {float(per_event[edge].mean()):.4f}"
          f" ({int(edge.sum())}), others: {float(per_event[~edge].mean()):.4f}")
    assert float(kl) < 0.1
