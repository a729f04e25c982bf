"""Adaptation of the sampler's discrete draws (unfoldmem/mem/adaptation.py)."""

from __future__ import annotations

import torch

from unfoldmem.mem.adaptation import (
    CELL_FLOOR,
    PARTNER_SHARE,
    adapted_cells,
    adapted_pick,
    swap_partners,
)


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


def test_w_swap_partners_share_their_probability() -> None:
    """Assignments differing by the swap of partons 1 and 2 (a W's daughters) are partners
    (reference: the hand-made index table, where 0 ↔ 1 and 2 ↔ 3 swap partons 1 and 2, 4 has
    no valid partner, 5 is padding). Pooled cells keep their sum (swapping is an involution)
    and equal (1 − PARTNER_SHARE/2) × own + PARTNER_SHARE/2 × partner of the un-pooled
    formula, per law; a starved partner then keeps ≥ PARTNER_SHARE/2 of the pair's weight."""
    index = torch.tensor([[[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]]])
    valid = torch.tensor([[True, True, True, True, True, False]])
    (pt,) = swap_partners(index, valid, [(1, 2)])
    assert pt.tolist() == [[1, 0, 3, 2, 4, 5]]
    cell = torch.zeros(1, 1, 6, 2, dtype=torch.float64)
    cell[0, 0, 0, 0], cell[0, 0, 2, 1], cell[0, 0, 4, 0] = 8.0, 1.0, 1.0
    old_law = torch.zeros(1, 6, 2, dtype=torch.float64)
    p0, l0 = adapted_cells(cell, valid, None, old_law)
    p1, l1 = adapted_cells(cell, valid, None, old_law, [pt])
    j0, j1 = torch.exp(p0[..., None] + l0), torch.exp(p1[..., None] + l1)
    torch.testing.assert_close(j1.sum(), torch.tensor(1.0, dtype=torch.float64))
    h = PARTNER_SHARE / 2
    torch.testing.assert_close(j1[0], (1 - h) * j0[0] + h * j0[0, pt[0]], rtol=1e-12, atol=0)
    assert float(j1[0, 1, 0]) >= h * float(j1[0, 0, 0] + j1[0, 1, 0])
    assert float(j1[0, 5].sum()) == 0.0
    perm = cell.sum(-1)
    q0, q1 = torch.exp(adapted_pick(perm, valid)), torch.exp(adapted_pick(perm, valid, [pt]))
    torch.testing.assert_close(q1[0], (1 - h) * q0[0] + h * q0[0, pt[0]], rtol=1e-12, atol=0)
