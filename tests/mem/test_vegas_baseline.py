"""The VEGAS baseline against the deterministic quadrature and against importance sampling."""

from __future__ import annotations

import math

import torch

from tests.mem.test_integrand import dy_setup, make_dy_events
from tests.mem.test_sampling import quadrature_log_integral
from unfoldmem.mem.sampling import RecoChannel, importance_sample
from unfoldmem.mem.vegas_baseline import vegas_log_integral

torch.set_num_threads(1)


def test_vegas_matches_quadrature_and_importance_sampling() -> None:
    """On 2 DY events (exact W) VEGAS at 1 % agrees with the quadrature reference and with the
    importance-sampling estimate within 4 combined standard errors."""
    _, det, integ = dy_setup()
    ev, _ = make_dy_events(2, seed=13)
    vg = vegas_log_integral(integ, ev, {}, detector=det, precision=0.01, neval=1000)
    assert (vg.flag == 0).all() and (vg.log_p_err < 0.011).all()
    res = importance_sample(
        integ,
        ev,
        [{}],
        [RecoChannel(det)],
        precision=0.03,
        n_max=8192,
        generator=torch.Generator().manual_seed(2),
    )
    for i in range(2):
        ref = quadrature_log_integral(ev[i : i + 1])
        assert abs(float(vg.log_p[i]) - ref) < 4 * float(vg.log_p_err[i])
        d = float(vg.log_p[i] - res.log_p[i, 0])
        assert abs(d) < 4 * math.hypot(float(vg.log_p_err[i]), float(res.log_p_err[i, 0]))


def test_vegas_flags_event_without_assignment() -> None:
    """An event missing a muon is flagged (2), with log P = −inf, not 0 and not NaN."""
    _, det, integ = dy_setup()
    ev, _ = make_dy_events(1, seed=14)
    ev.mask[0, 2] = False
    vg = vegas_log_integral(integ, ev, {}, detector=det)
    assert vg.flag.tolist() == [2] and torch.isneginf(vg.log_p).all()
