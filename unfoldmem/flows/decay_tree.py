r"""Decay trees of parton final states: from PDG ids, from narrow invariant masses, pruned.

A decay tree is a list of roots; each root is a parton slot index or a node ``[child, child]``
(nested lists). The parton parametrisations (:mod:`unfoldmem.flows.parametrization`,
:mod:`unfoldmem.flows.onshell`) describe the partons through such a tree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from unfoldmem.flows.encoding import StandardisedEncoding, weighted_mean_std
from unfoldmem.physics import lorentz

__all__ = [
    "DecayTreeEncoding",
    "decay_tree",
    "flatten_tree",
    "infer_tree",
    "invisible_slots",
    "narrow_tree",
    "nest_tree",
    "orient_tree",
]

_LEPTONS = {11: 12, 13: 14, 15: 16}
_NEUTRINOS = {12, 14, 16}
_CHARGED = {11, 13, 15}


def _charge3(pid: int) -> int:
    """Three times the electric charge of a quark or lepton PDG id (0 for anything else)."""
    a, s = abs(pid), (1 if pid > 0 else -1)
    if a in (2, 4, 6):
        return 2 * s
    if a in (1, 3, 5):
        return -s
    if a in (11, 13, 15):
        return -3 * s
    return 0


def decay_tree(pdg: Sequence[int]) -> list[Any]:
    r"""Decay tree of a final state from its PDG ids: W → ℓν, W → qq̄′, t → bW, Z/γ* → ℓ⁺ℓ⁻.

    Greedy in slot order: first W bosons (a charged lepton with its neutrino, or an up- and a
    down-type quark of opposite fermion number, b excluded, total charge ±1), then tops (a b
    with a W⁺, a b̄ with a W⁻), then Z/γ* (a same-flavour lepton–antilepton pair). This is the
    decay structure of every built-in process (:mod:`unfoldmem.physics.processes`).

    Arguments:
        pdg: (k,) PDG id of each parton slot.

    Returns:
        The roots: a slot index or a node ``[child, child]`` (nested lists), e.g.
        ``[[0, [1, 2]], [3, [4, 5]]]`` for (b, μ⁺, ν, b̄, d, ū).
    """
    ids = [int(p) for p in pdg]
    items: list[Any] = list(range(len(ids)))
    charge = {i: _charge3(p) for i, p in enumerate(ids)}

    def w_pair(a: int, b: int) -> bool:
        pa, pb = ids[a], ids[b]
        if abs(charge[a] + charge[b]) != 3:
            return False
        la, lb = abs(pa), abs(pb)
        if la in _LEPTONS or lb in _LEPTONS:
            return _LEPTONS.get(la) == lb or _LEPTONS.get(lb) == la
        quarks = la <= 4 and lb <= 4 and la != lb
        return quarks and (la % 2) != (lb % 2) and (pa > 0) != (pb > 0)

    def merge(test: Any) -> None:
        i = 0
        while i < len(items):
            for j in range(i + 1, len(items)):
                if test(items[i], items[j]):
                    node = [items[i], items[j]]
                    del items[j]
                    items[i] = node
                    break
            i += 1

    def q(item: Any) -> int | None:
        return charge[item] if isinstance(item, int) else None

    merge(lambda a, b: isinstance(a, int) and isinstance(b, int) and w_pair(a, b))
    wq = {id(n): sum(charge[c] for c in n) for n in items if isinstance(n, list)}

    def top(a: Any, b: Any) -> bool:
        if isinstance(a, list):
            a, b = b, a
        return (isinstance(a, int) and isinstance(b, list) and abs(ids[a]) == 5
                and id(b) in wq and (ids[a] > 0) == (wq[id(b)] > 0))

    merge(top)
    merge(lambda a, b: isinstance(a, int) and isinstance(b, int) and abs(ids[a]) in _LEPTONS
          and ids[a] == -ids[b] and q(a) != 0)
    return items


def _spread(m: Tensor) -> float:
    lo, med, hi = torch.quantile(m.float(), torch.tensor([0.25, 0.5, 0.75])).tolist()
    return (hi - lo) / med if med > 0 else math.inf


def infer_tree(objects: Tensor, tolerance: float = 0.05, max_events: int = 20000) -> list[Any]:
    """Decay tree from kinematics alone (when PDG ids are not known): narrow invariant masses.

    Repeatedly joins the two items (partons or nodes) whose invariant mass has the smallest
    interquartile range relative to its median, while that ratio is below ``tolerance``
    (a W: Γ/M ≈ 0.03; a top: 0.01; a random pair: ≳ 0.3).

    Arguments:
        objects: (n, k, 4) partons (pt GeV, eta, phi, m GeV).

    Returns:
        The roots, as :func:`decay_tree`.
    """
    p = lorentz.from_ptetaphim(objects[:max_events].double())
    items: list[tuple[Any, Tensor]] = [(i, p[:, i]) for i in range(p.shape[1])]
    while len(items) > 1:
        best = min(((_spread(lorentz.mass(a[1] + b[1])), i, j)
                    for i, a in enumerate(items) for j, b in enumerate(items) if i < j))
        if not best[0] < tolerance:
            break
        _, i, j = best
        node = ([items[i][0], items[j][0]], items[i][1] + items[j][1])
        items = [node if t == i else x for t, x in enumerate(items) if t != j]
    return [c for c, _ in items]


def narrow_tree(roots: Sequence[Any], objects: Tensor, tolerance: float = 0.05,
                max_events: int = 20000) -> list[Any]:
    """Keep only the nodes of a decay tree whose invariant mass is narrow in the data.

    A PDG-allowed pairing is not always a resonance (two independent muons, a γ*-dominated
    mass range); a node whose mass has an interquartile range above ``tolerance`` × its median
    (as in :func:`infer_tree`) is dissolved into its children, which become roots.

    Arguments:
        roots: a tree as returned by :func:`decay_tree`.
        objects: (n, k, 4) partons (pt GeV, eta, phi, m GeV).

    Returns:
        The pruned roots.
    """
    p = lorentz.from_ptetaphim(objects[:max_events].double())

    def visit(t: Any) -> tuple[list[Any], Tensor]:
        if not isinstance(t, list):
            return [t], p[:, t]
        (ra, pa), (rb, pb) = visit(t[0]), visit(t[1])
        total = pa + pb
        if len(ra) == 1 and len(rb) == 1 and _spread(lorentz.mass(total)) < tolerance:
            return [[ra[0], rb[0]]], total
        return ra + rb, total

    out: list[Any] = []
    for r in roots:
        out += visit(r)[0]
    return out


def flatten_tree(roots: Sequence[Any]) -> tuple[list[tuple[int, int]], list[int]]:
    """Nested roots -> post-order nodes [(a, b)] (children before parents) and root codes.

    A code >= 0 is a parton slot, a code < 0 is node ``-code - 1``.
    """
    nodes: list[tuple[int, int]] = []

    def visit(t: Any) -> int:
        if isinstance(t, int):
            return int(t)
        a, b = (visit(c) for c in t)
        nodes.append((a, b))
        return -len(nodes)

    return nodes, [visit(r) for r in roots]


def nest_tree(nodes: Sequence[tuple[int, int]], code: int) -> Any:
    """Inverse of :func:`flatten_tree` for one code: a slot index or nested lists."""
    return code if code >= 0 else [nest_tree(nodes, c) for c in nodes[-code - 1]]


def orient_tree(roots: Sequence[Any], pdg: Sequence[int]) -> list[Any]:
    """Order children so that neutrinos come second and the root holding a charged lepton first.

    The bottom-up secondary of a node is its second child when that is a massless leaf, so the
    charged lepton of W → ℓν stays a lab-frame coordinate; the root with the lepton is the
    bottom-up half of a Σp_T = 0 event (the well-measured lepton is not derived).

    Arguments:
        roots: a decay tree (:func:`decay_tree`).
        pdg: (k,) PDG id per slot.
    """
    ids = [abs(int(p)) for p in pdg]

    def has(t: Any, kind: set[int]) -> bool:
        return ids[t] in kind if isinstance(t, int) else any(has(c, kind) for c in t)

    def visit(t: Any) -> Any:
        if isinstance(t, int):
            return t
        a, b = visit(t[0]), visit(t[1])
        return [b, a] if isinstance(a, int) and ids[a] in _NEUTRINOS else [a, b]

    out = [visit(r) for r in roots]
    return sorted(out, key=lambda t: not has(t, _CHARGED))


def invisible_slots(pdg: Sequence[int]) -> list[int]:
    """Slots of neutrinos (PDG 12, 14, 16), whose lab direction is not measured."""
    return [i for i, p in enumerate(pdg) if abs(int(p)) in _NEUTRINOS]


class DecayTreeEncoding(StandardisedEncoding):
    """What the decay-tree parton encodings share: sizes, the tree, and the standardised
    forward map built from a subclass's ``_raw(v) -> (raw features, log|det|)``.

    Subclasses call :meth:`_set_tree` and set the ``mean``/``std`` buffers; their ``fit`` starts
    from :meth:`fit_layout` and ends with :meth:`_fit_standardisation`.
    """

    def _set_tree(self, tree: Sequence[Any], free_mass: Sequence[bool] | Tensor,
                  fixed_mass: Sequence[float] | Tensor | None) -> tuple[Tensor, Tensor]:
        """Flatten ``tree`` (it must use each of the k partons once) and register the
        ``free_mass`` (k,) bool and ``fixed_mass`` (k,) float64 buffers; returns both."""
        free = torch.as_tensor(free_mass, dtype=torch.bool)
        k = free.shape[0]
        fixed = torch.zeros(k) if fixed_mass is None else torch.as_tensor(fixed_mass)
        fixed = fixed.to(torch.float64)
        self.nodes, self.roots = flatten_tree(tree)
        leaves = [c for n in self.nodes for c in n if c >= 0] + [r for r in self.roots if r >= 0]
        if sorted(leaves) != list(range(k)):
            msg = f"decay tree {list(tree)} does not use each of the {k} partons exactly once"
            raise ValueError(msg)
        self.register_buffer("free_mass", free)
        self.register_buffer("fixed_mass", fixed)
        # plain indices, so that inverse() traces without data-dependent shapes (export)
        self.free_index = [i for i, f in enumerate(free.tolist()) if f]
        return free, fixed

    @staticmethod
    def fit_layout(objects: Tensor, weight: Tensor | None, tree: Sequence[Any] | None,
                   mass_tolerance: float, pt_tolerance: float
                   ) -> tuple[list[Any], Tensor, Tensor, bool]:
        r"""Tree, free-mass flags (k,), fixed masses (k,) GeV and ``fixed_pt`` from training
        partons (n, k, 4) (pt GeV, eta, phi, m GeV).

        A parton whose mass spread is below ``mass_tolerance`` has a fixed mass (snapped to 0
        below it: massless partons rebuilt from (E, p) carry ~1e-7 GeV of jitter); if
        :math:`|\sum\vec p_T| / \sum p_T < ` ``pt_tolerance`` in every event the roots are
        joined (first two, repeatedly) into one whose :math:`\vec P_T` is fixed. ``tree``
        None: :func:`infer_tree` from the kinematics.
        """
        tree = infer_tree(objects) if tree is None else list(tree)
        m = objects[..., 3]
        mean_m, _ = weighted_mean_std(m, weight)
        free = (m.amax(0) - m.amin(0)) > mass_tolerance
        p = lorentz.from_ptetaphim(objects)
        ratio = torch.linalg.vector_norm(p[..., 1:3].sum(-2), dim=-1) / objects[..., 0].sum(-1)
        fixed_pt = bool((ratio < pt_tolerance).all())
        while fixed_pt and len(tree) > 1:
            tree = [[tree[0], tree[1]], *tree[2:]]
        fixed = torch.where(free | (mean_m.abs() < mass_tolerance), 0.0, mean_m)
        return tree, free, fixed, fixed_pt

    def _fit_standardisation(self, objects: Tensor, weight: Tensor | None) -> None:
        """Set ``mean``/``std`` to the weighted statistics of the raw features of ``objects``."""
        raw, _ = self._raw(objects)
        self.mean, self.std = weighted_mean_std(raw, weight)

    def _dict_common(self, parametrization: str) -> dict[str, Any]:
        """The :meth:`to_dict` entries every decay-tree encoding has."""
        return {
            "parametrization": parametrization,
            "tree": self.tree,
            "free_mass": self.free_mass.tolist(),
            "fixed_mass": self.fixed_mass.tolist(),
            "fixed_pt": self.fixed_pt,
            "pt_sigma": self.pt_sigma,
            "mass_offset": self.mass_offset,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }

    def _raw_and_transverse(self, x: Tensor, transverse: Tensor | None
                            ) -> tuple[Tensor, Tensor | None]:
        """Un-standardised features (..., D) float64 of ``x`` and the fixed transverse momentum
        (..., 2) GeV of a ``fixed_pt`` encoding: ``transverse`` if given, else drawn from
        N(0, pt_sigma²) with torch's global generator (None without ``fixed_pt``)."""
        raw = x.to(self.mean.device, torch.float64) * self.std + self.mean
        if self.fixed_pt and transverse is None:
            transverse = self.pt_sigma * torch.randn(*raw.shape[:-1], 2, dtype=torch.float64,
                                                     device=raw.device)
        return raw, transverse

    def _objects(self, mom: dict[int, Tensor], m_leaf: Tensor) -> Tensor:
        """Decoded four-momenta {slot: (..., 4)} -> (..., k, 4) (pt, eta, phi, m) with each
        parton's mass ``m_leaf`` (..., k) as encoded (not re-derived from E² − p²)."""
        v = lorentz.to_ptetaphim(torch.stack([mom[i] for i in range(self.n_objects)], -2))
        return torch.cat([v[..., :3], m_leaf[..., None]], -1)

    @property
    def tree(self) -> list[Any]:
        """The roots as nested lists of slot indices."""
        return [nest_tree(self.nodes, r) for r in self.roots]
