"""Adaptation of the sampler's discrete draws (unfoldmem/mem/adaptation.py)."""

from __future__ import annotations

import torch

from unfoldmem.mem.adaptation import CELL_FLOOR, adapted_cells


def test_adapted_cells_keep_a_floor_on_every_valid_pair() -> None:
    """Joint (assignment, law) adaptation: π(σ) β_v(σ) is a distribution over the valid pairs
    (sums to 1, 0 on padding), equals (1 − CELL_FLOOR) × the pair's share + CELL_FLOOR ×
    uniform (the reference: that formula on hand-made shares), so a pair with no estimate
    keeps CELL_FLOOR/(P_valid V) > 0; an event without any estimate keeps its old laws."""
    valid = torch.tensor([[True, True, True, False], [True, True, False, False]])
    cell = torch.zeros(2, 1, 4, 3, dtype=torch.float64)
    cell[0, 0, 1, 2] = 3.0
    cell[0, 0, 0, 0] = 1.0
    old_law = torch.log(torch.full((2, 4, 3), 1 / 3, dtype=torch.float64))
    pick, law = adapted_cells(cell, valid, None, old_law)
    joint = torch.exp(pick[..., None] + law)
    assert torch.allclose(joint[0].sum(), torch.tensor(1.0, dtype=torch.float64))
    assert float(joint[0, 3].sum()) == 0.0
    expect = torch.full((3, 3), CELL_FLOOR / 9, dtype=torch.float64)
    expect[1, 2] += (1 - CELL_FLOOR) * 0.75
    expect[0, 0] += (1 - CELL_FLOOR) * 0.25
    torch.testing.assert_close(joint[0, :3], expect, rtol=1e-12, atol=0)
    # no estimate: uniform assignments, the old law probabilities
    torch.testing.assert_close(torch.exp(pick[1, :2]), torch.full((2,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(law[1], old_law[1])
