"""Dask scale-out: the cluster run equals the in-process run (same chunks, same code path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unfoldmem.inference.calibration import ExponentialToy, calibrate, toy_likelihoods
from unfoldmem.inference.scaleout import chunk_slices, dask_client, map_chunks, single_threaded
from unfoldmem.inference.scan import summed_log_likelihood


def _square(x: int) -> int:
    return x * x


def test_chunk_slices_cover_once() -> None:
    """Chunks are consecutive, disjoint and cover range(n)."""
    for n, c in ((10, 3), (10, 10), (10, None), (1, 5), (7, 1)):
        idx = np.concatenate([np.arange(n)[s] for s in chunk_slices(n, c)])
        np.testing.assert_array_equal(idx, np.arange(n))
    with pytest.raises(ValueError, match="positive"):
        chunk_slices(10, 0)


def test_local_map_and_threads_restored() -> None:
    """In-process map keeps order; torch's thread setting is restored afterwards."""
    before = torch.get_num_threads()
    assert map_chunks(_square, [3, 1, 2]) == [9, 1, 4]
    with single_threaded():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="not both"):
        map_chunks(_square, [1], scheduler="tcp://x:1", workers=2)


@pytest.fixture(scope="module")
def lik():
    toy = ExponentialToy.sample(1.0, 20_000, seed=3)
    return toy_likelihoods(toy, {"tau": np.linspace(0.8, 1.25, 10)}, mc_noise=1e-3)


def test_two_local_worker_processes_equal_local_run(lik) -> None:
    """LocalCluster with 2 worker processes (the real path): summed lnL and a calibration equal
    the in-process run to 1e-12 relative (reference: the local run)."""
    lnl_local, var_local = summed_log_likelihood(lik, chunk_size=3000)
    cal_local = calibrate(lik, {"tau": 1.0}, n_pseudo=6, n_events=500, seed=7, chunk_size=2)
    with dask_client(workers=2) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        lnl, var = summed_log_likelihood(lik, chunk_size=3000, client=client)
        cal = calibrate(lik, {"tau": 1.0}, n_pseudo=6, n_events=500, seed=7, chunk_size=2,
                        client=client)
    np.testing.assert_allclose(lnl.numpy(), lnl_local.numpy(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(var.numpy(), var_local.numpy(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(cal.estimates, cal_local.estimates, rtol=1e-12, atol=0)
    np.testing.assert_allclose(cal.errors, cal_local.errors, rtol=1e-12, atol=0)


def test_existing_scheduler_address(lik) -> None:
    """scheduler=ADDRESS connects to a running cluster (threads here, to start quickly)."""
    from distributed import LocalCluster

    local, _ = summed_log_likelihood(lik, chunk_size=5000)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster:
        remote, _ = summed_log_likelihood(lik, chunk_size=5000, scheduler=cluster.scheduler_address)
    np.testing.assert_allclose(remote.numpy(), local.numpy(), rtol=1e-12, atol=0)
