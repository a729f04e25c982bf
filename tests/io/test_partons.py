"""Tests of unfoldmem.io.partons: parton records as dense momenta and PDG ids."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from unfoldmem.io.partons import parton_arrays


def _records(counts: list[int]) -> ak.Array:
    rng = np.random.default_rng(3)
    n = sum(counts)
    flat = {c: rng.normal(size=n) for c in ("E", "px", "py", "pz")}
    flat["pdgId"] = rng.integers(-6, 7, size=n).astype(np.int32)
    return ak.zip({"partons": ak.unflatten(ak.zip(flat), counts)}, depth_limit=1)


def test_equal_multiplicity_round_trip() -> None:
    """Reference: the records' own fields, slot by slot (no reordering, no padding)."""
    rec = _records([3, 3, 3])
    mom, pdg = parton_arrays(rec)
    assert mom.shape == (3, 3, 4) and mom.dtype == np.float64
    assert pdg.shape == (3, 3) and pdg.dtype == np.int64
    for j, c in enumerate(("E", "px", "py", "pz")):
        np.testing.assert_array_equal(mom[..., j], ak.to_numpy(rec.partons[c]))
    np.testing.assert_array_equal(pdg, ak.to_numpy(rec.partons.pdgId))


def test_varying_multiplicity_needs_pad() -> None:
    """Jagged records are an error without ``pad``; with it, missing slots are zero and id 0."""
    rec = _records([2, 4, 3])
    with pytest.raises(ValueError, match=r"varying multiplicities \[2, 3, 4\]"):
        parton_arrays(rec)
    mom, pdg = parton_arrays(rec, pad=True)
    assert mom.shape == (3, 4, 4)
    assert (mom[0, 2:] == 0).all() and (pdg[0, 2:] == 0).all() and (pdg[2, 3] == 0)
    np.testing.assert_array_equal(mom[1, :, 1], ak.to_numpy(rec.partons.px[1]))


def test_records_without_pdg_ids() -> None:
    """Momentum-only records (as the encodings accept) give PDG id 0, the padding id."""
    rec = ak.zip({"partons": ak.zip({c: [[1.0, 2.0]] for c in ("E", "px", "py", "pz")})},
                 depth_limit=1)
    mom, pdg = parton_arrays(rec)
    assert mom.shape == (1, 2, 4) and (pdg == 0).all()
