r"""The coordinate plan of :class:`~unfoldmem.flows.onshell.OnShellEncoding` from a decay tree.

The plan says, step by step, how each parton gets its coordinates: a root leaf by its lab
:math:`(\log p_T, \eta, \phi)`; a node :math:`j \to c\,k` *bottom-up* (``"bu"``; ``"rel"`` for an
invisible :math:`k`, whose direction is taken about :math:`c`'s) from the primary :math:`c` and
the direction of the massless :math:`k`; or *top-down* (``"td"``) by rest-frame decay angles from
the ``"anchor"`` half of a fixed-:math:`\vec P_T` event. The encoding and its inverse walk the
same steps in the same order.

Nodes and roots are coded as in :func:`~unfoldmem.flows.decay_tree.flatten_tree`: a code
``c >= 0`` is parton slot c, ``c < 0`` is node ``-c - 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from unfoldmem.flows.decay_tree import nest_tree

__all__ = ["OnShellPlan", "plan_onshell", "subtree_leaves", "subtree_nodes"]


@dataclass
class OnShellPlan:
    r"""The steps of an on-shell encoding.

    Attributes:
        steps: ``("leaf", i)`` | ``("bu" | "rel", j, k, c)`` | ``("anchor", b, a)`` |
            ``("td", j, k, c)``, in encoding order; ``a = -1``: no bottom-up half.
        other: node j -> its child c in the mass coordinate :math:`s_j = \log(m_j^2 - m_c^2)`.
        massed: nodes whose :math:`s_j` is a coordinate, post-order.
        top_down_codes: codes of the subtrees decayed top-down (empty without a fixed
            :math:`\vec P_T`).
    """

    steps: list[tuple[Any, ...]]
    other: dict[int, int]
    massed: list[int]
    top_down_codes: list[int]


def plan_onshell(
    nodes: Sequence[tuple[int, int]],
    roots: Sequence[int],
    massless: Sequence[bool],
    invisible: Sequence[int],
    fixed_pt: bool,
) -> OnShellPlan:
    r"""The steps of the on-shell coordinates of a flattened decay tree.

    Arguments:
        nodes, roots: the tree as :func:`~unfoldmem.flows.decay_tree.flatten_tree` gives it.
        massless: (k,) per parton slot, whether its mass is fixed at 0.
        invisible: slots whose bottom-up direction is taken about the primary's axis.
        fixed_pt: the partons sum to :math:`\vec p_T = 0` (a single root node).

    Raises:
        ValueError: a node has no massless parton child.
    """
    steps: list[tuple[Any, ...]] = []
    other: dict[int, int] = {}

    def split(j: int, prefer: int) -> tuple[int, int]:
        a, b = nodes[j]
        kids = (a, b) if prefer == 0 else (b, a)
        for kk, cc in (kids, kids[::-1]):
            if kk >= 0 and massless[kk]:
                return kk, cc
        msg = f"node {nest_tree(nodes, -j - 1)} has no massless parton child"
        raise ValueError(msg)

    def bottom_up(code: int) -> None:
        if code >= 0:
            steps.append(("leaf", code))
            return
        j = -code - 1
        kk, cc = split(j, 1)
        bottom_up(cc)
        other[j] = cc
        steps.append(("rel" if kk in invisible else "bu", j, kk, cc))

    def top_down(code: int) -> None:
        if code >= 0:
            return
        j = -code - 1
        kk, cc = split(j, 0)
        other[j] = cc
        steps.append(("td", j, kk, cc))
        top_down(cc)

    top_down_codes: list[int] = []
    if fixed_pt:
        r = -roots[0] - 1
        a, b = nodes[r]
        if any(c >= 0 and massless[c] for c in (a, b)):
            a, b = -1, roots[0]
        else:
            bottom_up(a)
        steps.append(("anchor", b, a))
        top_down(b)
        top_down_codes = [b]
    else:
        for root in roots:
            bottom_up(root)
    return OnShellPlan(steps, other, sorted(other), top_down_codes)


def subtree_leaves(nodes: Sequence[tuple[int, int]], code: int) -> list[int]:
    """Parton slots below ``code`` (a slot is its own leaf)."""
    if code >= 0:
        return [code]
    a, b = nodes[-code - 1]
    return subtree_leaves(nodes, a) + subtree_leaves(nodes, b)


def subtree_nodes(nodes: Sequence[tuple[int, int]], codes: Sequence[int]) -> list[int]:
    """Node indices at and below each of ``codes``, pre-order."""
    out: list[int] = []

    def visit(code: int) -> None:
        if code < 0:
            out.append(-code - 1)
            for c in nodes[-code - 1]:
                visit(c)

    for code in codes:
        visit(code)
    return out
