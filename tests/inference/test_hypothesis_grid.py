"""Tests of unfoldmem.inference.hypothesis_grid's chunk cache."""

from __future__ import annotations

from pathlib import Path

from unfoldmem.inference.hypothesis_grid import _chunk_file
from unfoldmem.inference.scaleout import chunk_slices


def test_chunk_cache_names_depend_on_pool_samples_and_seed(tmp_path: Path) -> None:
    """The last chunk of a 400-event pool (events 384-399) and the chunk starting at 384 of an
    800-event pool have different files; so do other sample counts and seeds (a cache made for
    one configuration was read back by another and crashed on its shape)."""
    def items(n: int, n_samples: int = 512, seed: int = 1) -> list[tuple]:
        return [(None, range(sl.start, sl.stop), None, n_samples, seed, sl.start)
                for sl in chunk_slices(n, 32)]

    small, large = items(400), items(800)
    assert small[-1][-1] == 384 and len(small[-1][1]) == 16
    assert _chunk_file(tmp_path, small[-1]) != _chunk_file(tmp_path, large[12])
    assert _chunk_file(tmp_path, small[0]) == _chunk_file(tmp_path, large[0])
    assert _chunk_file(tmp_path, items(400, 2048)[0]) != _chunk_file(tmp_path, small[0])
    assert _chunk_file(tmp_path, items(400, seed=2)[0]) != _chunk_file(tmp_path, small[0])
