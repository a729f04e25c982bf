"""The fixed-sample MEM log P and its error (``log_p_function(with_error=True)``), Drell–Yan."""

from __future__ import annotations

import numpy as np
import torch

from tests._support.mem_events import dy_setup, make_dy_events
from unfoldmem.mem.integrand import ExactTransfer
from unfoldmem.mem.likelihood import MEMLikelihood


def test_log_p_error_matches_seed_scatter() -> None:
    """Independent reference: the scatter of log P over 24 independent sample sets (seeds).
    The per-seed error from the sample weights (averaged) and the spread of the even/odd
    noise replica both agree with that standard deviation within its statistical precision
    (± 4·√(1/(2·23)) ≈ 60 %, heavy-tailed weights allowed), the replica has mean 0 within 4
    standard errors, every value is finite, and with_error=False returns the same log P."""
    had, det, _ = dy_setup()
    mem = MEMLikelihood(had, ExactTransfer(det), detector=det)
    ev, _ = make_dy_events(3, seed=7)
    vals, errs, reps = [], [], []
    with torch.no_grad():
        for seed in range(24):
            lp, err, half = mem.log_p_function(ev, n_samples=256, seed=seed,
                                               with_error=True)({"m_z": 91.2})
            vals.append(lp)
            errs.append(err)
            reps.append(half)
    v, e, r = (torch.stack(a).numpy() for a in (vals, errs, reps))
    assert np.isfinite(v).all() and np.isfinite(e).all() and (e > 0).all()
    assert np.isfinite(r).all()
    for ratio in (e.mean(0) / v.std(0, ddof=1), r.std(0, ddof=1) / v.std(0, ddof=1)):
        assert ((ratio > 0.4) & (ratio < 1.6)).all(), ratio
    assert (np.abs(r.mean(0)) < 4 * r.std(0, ddof=1) / np.sqrt(24)).all()
    with torch.no_grad():
        plain = mem.log_p_function(ev, n_samples=256, seed=0)({"m_z": 91.2})
    torch.testing.assert_close(plain, torch.from_numpy(v[0]), rtol=0, atol=0)
