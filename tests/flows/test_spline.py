"""Tests of unfoldmem.flows.spline: the fused spline inverse, exp and SiLU kernels, and the
feature-major sampler built on them (CouplingNSF.inverse_many)."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from zuko.transforms import MonotonicRQSTransform

from unfoldmem.cards.model import FlowConfig
from unfoldmem.flows.cinn import CouplingNSF, _pool
from unfoldmem.flows.spline import _expf, rqs_inverse, silu_


def test_fused_spline_inverse_equals_zuko() -> None:
    """rqs_inverse (numba column loops) equals zuko's MonotonicRQSTransform(widths, heights,
    derivatives, bound 5, slope 1e-3).inv: to 1e-10 in float64, including points at the knots
    and outside [-5, 5] (identity); in float32 it is no further from the float64 result than
    zuko's own float32 inverse (x 1.5). 4000 rows: more than one column block of the kernel.
    Reference: zuko's transform."""
    g = torch.Generator().manual_seed(0)
    bins = 8
    params = torch.randn(4000, 3, 3 * bins - 1, generator=g, dtype=torch.float64)
    y = 3 * torch.randn(4000, 3, generator=g, dtype=torch.float64)

    def zuko_inv(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        p = params.to(dtype)
        t = MonotonicRQSTransform(p[..., :bins], p[..., bins : 2 * bins], p[..., 2 * bins :],
                                  slope=1e-3)
        return t.inv(y.to(dtype)).double(), t.vertical.double()

    _, knots = zuko_inv(torch.float64)
    j = torch.randint(0, bins + 1, (200, 3), generator=g)  # inner knots and both ends
    y[:200] = knots[:200].gather(-1, j[..., None])[..., 0]
    ref, _ = zuko_inv(torch.float64)
    got = rqs_inverse(params, y, bins, slope=1e-3)
    assert float((got - ref).abs().max()) < 1e-10
    outside = y.abs() >= 5
    assert int(outside.sum()) > 100 and bool((got[outside] == y[outside]).all())
    got32 = rqs_inverse(params.float(), y.float(), bins, slope=1e-3).double()
    zuko32 = zuko_inv(torch.float32)[0]
    assert float((got32 - ref).abs().max()) < 1.5 * float((zuko32 - ref).abs().max())


def test_float32_exp_and_silu_accuracy() -> None:
    """The kernels' float32 exp (Cody–Waite reduction, degree-7 polynomial, 2^n from the exponent
    bits) is within 1.5 ulp (9e-8 relative) of the exact exp over |v| <= 87, and the numba SiLU
    is no further from the float64 SiLU than torch's float32 SiLU (+ 1 ulp). Reference: numpy's
    exp and torch's SiLU in float64."""

    @numba.njit
    def apply(v: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
        out = np.empty_like(v)
        for i in range(v.shape[0]):
            out[i] = _expf(v[i])
        return out

    v = np.linspace(-87, 87, 400001).astype(np.float32)
    rel = np.abs(apply(v).astype(np.float64) / np.exp(v.astype(np.float64)) - 1)
    assert float(rel.max()) < 9e-8
    h = 6 * torch.randn(100000, generator=torch.Generator().manual_seed(1))
    ref = F.silu(h.double())
    mine = silu_(h.clone()).double()
    bound = float((F.silu(h).double() - ref).abs().max()) + 6e-8 * float(ref.abs().max())
    assert float((mine - ref).abs().max()) <= bound
    h64 = h.double()
    assert torch.allclose(silu_(h64.clone()), ref, rtol=1e-14, atol=1e-300)


def _flow(scale: float = 2.0) -> CouplingNSF:
    """A flow (7 features, context 3) with its last layers scaled: O(1) spline parameters."""
    torch.manual_seed(0)
    flow = CouplingNSF(7, 3, FlowConfig(transforms=4, hidden=[16, 16], bins=6))
    with torch.no_grad():
        for layer in flow.transform.transforms:
            layer.hyper[-1].weight.mul_(scale)
    return flow


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampler_with_event_blocks_matches_zuko(dtype: torch.dtype) -> None:
    """inverse_many with fewer rows per task than events (events split in blocks, one sample per
    task) and with several samples per task equals zuko's ``flow(c).transform.inv(z)`` for the
    same z: 1e-5 in float32, 1e-10 in float64; the log-density is consistent: zuko's forward
    transform of the samples returns z (1e-4 in float32) and log q(x) = log N(z) + log|dz/dx|.
    Reference: zuko's stock transform and density."""
    flow = _flow().to(dtype)
    c = torch.randn(50, 3, generator=torch.Generator().manual_seed(2), dtype=dtype)
    z = torch.randn(5, 50, 7, generator=torch.Generator().manual_seed(3), dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    with torch.no_grad():
        dist = flow(c)
        ref = dist.transform.inv(z)
        for chunk in (16, 50, 120):  # 4 event blocks; 1 sample x 50 events; 2 samples x 50
            assert torch.allclose(flow.inverse_many(z, c, chunk), ref, atol=tol, rtol=0)
        x = flow.inverse_many(z, c, 16)
        back, ladj = dist.transform.call_and_ladj(x)
        assert torch.allclose(back, z, atol=1e-4 if dtype == torch.float32 else 1e-9)
        base = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        assert torch.allclose(dist.log_prob(x), base + ladj, atol=1e-3 if dtype == torch.float32
                              else 1e-8)


def test_sampler_float32_accuracy_with_steep_bins() -> None:
    """With extreme spline parameters (last layers x 8: bins of slope ~1e-3 and ~1e3) float32
    inversion is ill-conditioned; the sampler is then no further from the float64 inverse than
    zuko's own float32 inverse (x 1.5). Reference: zuko's inverse in float64."""
    flow = _flow(8.0)
    c = torch.randn(50, 3, generator=torch.Generator().manual_seed(2))
    z = torch.randn(5, 50, 7, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mine = flow.inverse_many(z, c, 16).double()
        zuko32 = flow(c).transform.inv(z).double()
        ref = flow.double()(c.double()).transform.inv(z.double())
    assert float((mine - ref).abs().max()) < 1.5 * float((zuko32 - ref).abs().max())


def test_sampler_deterministic_and_thread_independent() -> None:
    """sample_many is reproducible under a torch seed, and with event blocks (B > chunk) two
    workers give bit-identical results to one thread, in grad and inference modes; the workers
    stay single-threaded (their GEMMs open no OpenMP teams) while the caller keeps 2."""
    flow = _flow()
    c = torch.randn(40, 3, generator=torch.Generator().manual_seed(4))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.manual_seed(5)
        one = flow.sample_many(6, c, chunk=16)
        torch.manual_seed(5)
        assert torch.equal(flow.sample_many(6, c, chunk=16), one)
        torch.set_num_threads(2)
        torch.manual_seed(5)
        assert torch.equal(flow.sample_many(6, c, chunk=16), one)
        with torch.inference_mode():
            torch.manual_seed(5)
            assert torch.equal(flow.sample_many(6, c, chunk=16), one)
        assert _pool(2).submit(torch.get_num_threads).result() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert one.shape == (6, 40, 7) and bool(torch.isfinite(one).all())


def test_sampler_batch_shape_and_dtype() -> None:
    """A context with two batch dimensions gives samples (n, *batch, D) in the context dtype, and
    a dtype without a numba kernel (bfloat16) takes zuko's spline on the CPU and still agrees."""
    flow = _flow()
    c = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(6))
    assert flow.sample_many(3, c).shape == (3, 4, 5, 7)
    z = torch.randn(2, 20, 7, generator=torch.Generator().manual_seed(7))
    c2 = c.reshape(20, 3)
    with torch.no_grad():
        ref = flow(c2).transform.inv(z)
        low = flow.to(torch.bfloat16).inverse_many(z.bfloat16(), c2.bfloat16()).float()
    assert math.isfinite(float(low.abs().max()))
    assert float((low - ref).abs().median()) < 0.1
