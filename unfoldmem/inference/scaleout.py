r"""Scale-out: per-event work split into chunks, run in-process or on a Dask cluster, same path."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

__all__ = ["chunk_slices", "dask_client", "evaluate_mem", "map_chunks", "single_threaded"]

T = TypeVar("T")


def chunk_slices(n: int, chunk_size: int | None) -> list[slice]:
    """Split ``range(n)`` into consecutive slices of at most ``chunk_size`` (``None``: one slice).

    The chunking fixes the order of every partial sum, so a run gives the same floating-point
    result whichever executor runs the chunks.

    Example:
        >>> chunk_slices(5, 2)
        [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    if chunk_size is None or chunk_size >= n:
        return [slice(0, n)]
    if chunk_size < 1:
        msg = f"chunk_size must be a positive integer, got {chunk_size}"
        raise ValueError(msg)
    return [slice(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block, restoring the setting after.

    Chunks are small, and parallelism comes from running chunks side by side: torch's own thread
    pool on top of that oversubscribes the cores (measured 70x slower on 2 busy cores).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _call_single_threaded(fn: Callable[[Any], T], item: Any) -> T:
    with single_threaded():
        return fn(item)


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None, workers: int | None = None, processes: bool = True
) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler`` or a new local cluster of ``workers``; else None.

    Arguments:
        scheduler: address of a running Dask scheduler (``tcp://host:8786``).
        workers: start a ``distributed.LocalCluster`` with this many single-threaded workers.
        processes: local workers are processes (the real path) or threads (quicker to start).
    """
    if scheduler is not None and workers is not None:
        msg = "give either scheduler (an existing cluster) or workers (a local one), not both"
        raise ValueError(msg)
    if scheduler is None and workers is None:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    if workers is not None and workers < 1:
        msg = f"workers must be >= 1, got {workers}"
        raise ValueError(msg)
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=processes,
            dashboard_address=":0",  # a free port: 8787 may belong to another cluster
            silence_logs=40,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def map_chunks(
    fn: Callable[[Any], T],
    items: Sequence[Any],
    scheduler: str | None = None,
    workers: int | None = None,
    client: Any = None,
    processes: bool = True,
) -> list[T]:
    """``[fn(item) for item in items]``, run here or on Dask; results in the order of ``items``.

    ``fn`` and the items must pickle (module-level functions, arrays, dataclasses) when a cluster
    runs them. With ``scheduler=None, workers=None, client=None`` it runs in this process. Every
    chunk runs with torch single-threaded (:func:`single_threaded`), here and on workers alike.

    Arguments:
        fn: the per-chunk work.
        items: one argument per chunk.
        scheduler: address of an existing Dask scheduler.
        workers: number of local worker processes to start for this call.
        client: an open ``distributed.Client`` to reuse (overrides the two above).
        processes: with ``workers``, processes (default) or threads.
    """
    task = functools.partial(_call_single_threaded, fn)
    if client is not None:
        futures = client.map(task, list(items), pure=False)
        return list(client.gather(futures))
    with dask_client(scheduler, workers, processes) as cl:
        if cl is None:
            return [task(item) for item in items]
        futures = cl.map(task, list(items), pure=False)
        return list(cl.gather(futures))


def _mem_piece(args: tuple[Any, ...]) -> Any:
    mem, events, grid, event_id, weight, first = args
    return mem.evaluate(events, grid, event_id=event_id, weight=weight, progress=False,
                        first_index=first)


def evaluate_mem(
    mem: Any,
    events: Any,
    grid: Any,
    event_id: Any = None,
    weight: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Any = None,
) -> Any:
    """:meth:`MEMLikelihood.evaluate <unfoldmem.mem.likelihood.MEMLikelihood.evaluate>` with its
    chunks of ``mem.config.chunk_size`` events run as separate tasks (Dask or in-process).

    Each chunk draws from the stream of (seed, index of its first event), so the result equals
    one in-process ``mem.evaluate`` call bit for bit up to summation order (tested to 1e-12).
    ``mem`` is pickled to the workers once per task (cloudpickle: cards, PDF grids, flows).

    Returns:
        :class:`~unfoldmem.mem.likelihood.MEMResult` of all events; ``seconds`` is the sum of
        the chunks' wall times.
    """
    import torch

    from unfoldmem.mem.likelihood import MEMResult

    n = len(events)
    eid = torch.arange(n) if event_id is None else torch.as_tensor(event_id)
    w = torch.ones(n, dtype=torch.float64) if weight is None else torch.as_tensor(weight)
    items = [(mem, events[s], grid, eid[s], w[s], s.start)
             for s in chunk_slices(n, mem.config.chunk_size)]
    parts = map_chunks(_mem_piece, items, scheduler, workers, client)
    if not parts:
        return mem.evaluate(events, grid, event_id=eid, weight=w, progress=False)
    perm = None
    if parts[0].log_p_perm is not None:
        p_max = max(r.log_p_perm.shape[-1] for r in parts)
        perm = torch.cat([torch.nn.functional.pad(
            r.log_p_perm, (0, p_max - r.log_p_perm.shape[-1]), value=-float("inf"))
            for r in parts])
    cat = {k: torch.cat([getattr(r, k) for r in parts])
           for k in ("log_p", "log_p_err", "weight", "event_id", "flag", "ess")}
    n_samples = (torch.cat([r.n_samples for r in parts])
                 if all(r.n_samples is not None for r in parts) else None)
    return MEMResult(theta_grid=parts[0].theta_grid, log_sigma_fid=parts[0].log_sigma_fid,
                     log_sigma_fid_err=parts[0].log_sigma_fid_err, log_p_perm=perm,
                     diagnostics=[d for r in parts for d in r.diagnostics],
                     n_samples=n_samples, seconds=sum(r.seconds for r in parts), **cat)
