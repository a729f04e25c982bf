r"""Standard parton- and reco-level observables, batched in torch, with a registry by process.

Every observable maps the momenta of one event class to one number per event,

    ``function(momenta, pdg) -> (n,)``,  momenta (n, k, 4) GeV (E, px, py, pz), pdg (k,) or (n, k),

finding the particles it needs by their PDG ids (so the slot order of a generator does not
matter). All kinematic formulas come from :mod:`unfoldmem.physics.lorentz`. The registry
:data:`OBSERVABLES` maps a process name to its :class:`Observable` list (name, function,
binning, label), shared by histograms, plots, the cINN unfolding and OmniFold.

Conventions:

* tt̄ (``ttbar_semileptonic``, :math:`t\bar t \to b\ell\nu\,\bar b q\bar q'` or its conjugate):
  the leptonic top is :math:`\ell\nu b` with the b of the same top: :math:`\ell^+ \Rightarrow b`
  (PDG 5), :math:`\ell^- \Rightarrow \bar b` (PDG -5); the hadronic top is the other b with both
  light quarks. :math:`t` (PDG +6 side) is the top holding the b quark.
  :math:`\cos\theta^*` is the cosine of the polar angle of :math:`t` in the :math:`t\bar t`
  rest frame (reached by a pure boost from the lab), measured from the +z beam axis.
* Drell–Yan: :math:`\ell^-` has PDG id +11/+13/+15, :math:`\ell^+` the negative id;
  :math:`\cos\theta_{CS}` is :func:`~unfoldmem.physics.lorentz.cos_theta_cs`.

Example:
    >>> p = torch.tensor([[[50.0, 0.0, 30.0, 40.0], [50.0, 0.0, -30.0, -40.0]]], dtype=torch.float64)
    >>> v = evaluate("drell_yan", p, torch.tensor([13, -13]))
    >>> round(float(v["m_ll"][0]), 6), round(float(v["cos_cs"][0]), 6)
    (100.0, 0.8)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from unfoldmem.physics import lorentz

__all__ = [
    "Observable",
    "OBSERVABLES",
    "observables_for",
    "evaluate",
    "guess_process",
    "find_particle",
    "ttbar_system",
    "cos_theta_star",
]

Binning = tuple[int, float, float] | Sequence[float]

_LEPTONS = (11, 13, 15)
_NEUTRINOS = (12, 14, 16)
_LIGHT = (1, 2, 3, 4, 21)


@dataclass(frozen=True)
class Observable:
    """One observable: ``function(momenta (n, k, 4), pdg (k,)|(n, k)) -> (n,)``.

    Attributes:
        name: identifier (histogram and file key).
        function: the batched computation (float64 result).
        binning: default binning, ``(n_bins, low, high)`` or edges.
        label: axis label for plots (LaTeX allowed, units in brackets).
    """

    name: str
    function: Callable[[Tensor, Tensor], Tensor]
    binning: Binning
    label: str

    def __call__(self, momenta: Tensor, pdg: Tensor) -> Tensor:
        return self.function(momenta, pdg)


def _pdg2d(momenta: Tensor, pdg: Tensor) -> Tensor:
    pdg = torch.as_tensor(pdg, device=momenta.device).long()
    return pdg.expand(momenta.shape[:-1]) if pdg.ndim == 1 else pdg


def find_particle(
    momenta: Tensor, pdg: Tensor, ids: Sequence[int], rank: int = 0, by_pt: bool = False
) -> Tensor:
    """Four-momentum of the ``rank``-th particle per event whose PDG id is in ``ids``.

    Arguments:
        momenta: (n, k, 4) GeV.
        pdg: (k,) or (n, k) PDG ids.
        ids: accepted (signed) PDG ids.
        rank: 0 for the first match, 1 for the second, ...
        by_pt: order the matches by decreasing pt instead of slot order.

    Returns:
        (n, 4) four-momenta.

    Raises:
        ValueError: some event has fewer than ``rank + 1`` matching particles.
    """
    pdg = _pdg2d(momenta, pdg)
    match = torch.isin(pdg, torch.tensor(list(ids), device=pdg.device))
    n_match = match.sum(-1)
    if bool((n_match <= rank).any()):
        bad = int((n_match <= rank).nonzero()[0, 0])
        msg = (
            f"event {bad} has {int(n_match[bad])} particle(s) with PDG id in {list(ids)}, "
            f"needs {rank + 1}; its ids are {pdg[bad].tolist()}"
        )
        raise ValueError(msg)
    k = momenta.shape[-2]
    slot = torch.arange(k, device=momenta.device, dtype=momenta.dtype)
    key = lorentz.pt(momenta) if by_pt else -slot.expand(match.shape)
    key = torch.where(match, key, torch.full_like(key, -torch.inf))
    idx = torch.sort(key, dim=-1, descending=True, stable=True).indices[:, rank]
    return momenta[torch.arange(momenta.shape[0], device=momenta.device), idx]


# ---- Drell–Yan ---------------------------------------------------------------------------------


def _lminus(p: Tensor, pdg: Tensor) -> Tensor:
    return find_particle(p, pdg, _LEPTONS)


def _lplus(p: Tensor, pdg: Tensor) -> Tensor:
    return find_particle(p, pdg, [-i for i in _LEPTONS])


def _dilepton(p: Tensor, pdg: Tensor) -> Tensor:
    return _lminus(p, pdg) + _lplus(p, pdg)


def _cos_cs(p: Tensor, pdg: Tensor) -> Tensor:
    return lorentz.cos_theta_cs(_lminus(p, pdg), _lplus(p, pdg))


# ---- tt̄ semileptonic ---------------------------------------------------------------------------


def ttbar_system(momenta: Tensor, pdg: Tensor) -> dict[str, Tensor]:
    """Decay products and tops of semileptonic tt̄ events, identified by PDG id (see module).

    Arguments:
        momenta: (n, k, 4) GeV; the event must hold b, b̄, one charged lepton, one neutrino and
            two light quarks (u, d, s, c or g; extra entries such as the tops are ignored).
        pdg: (k,) or (n, k) PDG ids.

    Returns:
        dict of (n, 4) four-vectors: ``lepton``, ``neutrino``, ``b_lep``, ``b_had``, ``q1``,
        ``q2`` (light quarks by decreasing pt), ``t_lep``, ``t_had``, ``top`` (t), ``antitop``
        (t̄), ``ttbar``.
    """
    pdg = _pdg2d(momenta, pdg)
    lep_ids = [*_LEPTONS, *(-i for i in _LEPTONS)]
    lep = find_particle(momenta, pdg, lep_ids)
    lep_pdg = torch.where(torch.isin(pdg, torch.tensor(lep_ids, device=pdg.device)), pdg, 0).sum(-1)
    nu = find_particle(momenta, pdg, [*_NEUTRINOS, *(-i for i in _NEUTRINOS)])
    b, bbar = find_particle(momenta, pdg, [5]), find_particle(momenta, pdg, [-5])
    light = [*_LIGHT, *(-i for i in _LIGHT if i != 21)]
    q1 = find_particle(momenta, pdg, light, 0, by_pt=True)
    q2 = find_particle(momenta, pdg, light, 1, by_pt=True)
    # l+ (negative PDG id) comes from W+ <- t -> b: the leptonic top holds the b quark.
    lplus = (lep_pdg < 0)[:, None]
    b_lep = torch.where(lplus, b, bbar)
    b_had = torch.where(lplus, bbar, b)
    t_lep = lep + nu + b_lep
    t_had = b_had + q1 + q2
    top = torch.where(lplus, t_lep, t_had)
    antitop = torch.where(lplus, t_had, t_lep)
    return {
        "lepton": lep,
        "neutrino": nu,
        "b_lep": b_lep,
        "b_had": b_had,
        "q1": q1,
        "q2": q2,
        "t_lep": t_lep,
        "t_had": t_had,
        "top": top,
        "antitop": antitop,
        "ttbar": top + antitop,
    }


def cos_theta_star(top: Tensor, antitop: Tensor) -> Tensor:
    r""":math:`\cos\theta^*` of ``top`` in the rest frame of ``top + antitop`` w.r.t. the +z axis.

    Arguments:
        top, antitop: (..., 4) GeV.

    Returns:
        (...) cosine in [-1, 1].
    """
    t = lorentz.boost_to_rest(top, top + antitop)
    return (t[..., 3] / lorentz.p3_abs(t)).clamp(-1.0, 1.0)


def _tt(key: str, fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    def f(p: Tensor, pdg: Tensor) -> Tensor:
        return fn(ttbar_system(p, pdg)[key])

    return f


def _tops(p: Tensor, pdg: Tensor) -> Tensor:
    return find_particle(p, pdg, [6]) + find_particle(p, pdg, [-6])


def _tt_cos(p: Tensor, pdg: Tensor) -> Tensor:
    s = ttbar_system(p, pdg)
    return cos_theta_star(s["top"], s["antitop"])


def _single(
    ids: Sequence[int], fn: Callable[[Tensor], Tensor]
) -> Callable[[Tensor, Tensor], Tensor]:
    def f(p: Tensor, pdg: Tensor) -> Tensor:
        return fn(find_particle(p, pdg, ids))

    return f


def _obs(
    name: str, function: Callable[[Tensor, Tensor], Tensor], binning: Binning, label: str
) -> Observable:
    return Observable(name, function, binning, label)


_ANY_LEP = [*_LEPTONS, *(-i for i in _LEPTONS)]
_ANY_NU = [*_NEUTRINOS, *(-i for i in _NEUTRINOS)]

#: Observables by process name; each list is what the reports histogram for that process.
OBSERVABLES: dict[str, tuple[Observable, ...]] = {
    "drell_yan": (
        _obs("pt_lminus", _single(_LEPTONS, lorentz.pt), (25, 0.0, 100.0), r"$p_T(\ell^-)$ [GeV]"),
        _obs("eta_lminus", _single(_LEPTONS, lorentz.eta), (24, -4.8, 4.8), r"$\eta(\ell^-)$"),
        _obs(
            "pt_lplus",
            _single([-i for i in _LEPTONS], lorentz.pt),
            (25, 0.0, 100.0),
            r"$p_T(\ell^+)$ [GeV]",
        ),
        _obs(
            "eta_lplus",
            _single([-i for i in _LEPTONS], lorentz.eta),
            (24, -4.8, 4.8),
            r"$\eta(\ell^+)$",
        ),
        _obs(
            "m_ll",
            lambda p, d: lorentz.mass(_dilepton(p, d)),
            (30, 60.0, 120.0),
            r"$m_{\ell\ell}$ [GeV]",
        ),
        _obs(
            "pt_ll",
            lambda p, d: lorentz.pt(_dilepton(p, d)),
            (20, 0.0, 100.0),
            r"$p_T(\ell\ell)$ [GeV]",
        ),
        _obs(
            "y_ll",
            lambda p, d: lorentz.rapidity(_dilepton(p, d)),
            (24, -4.8, 4.8),
            r"$y_{\ell\ell}$",
        ),
        _obs("cos_cs", _cos_cs, (20, -1.0, 1.0), r"$\cos\theta_{CS}$"),
    ),
    "w_lnu": (
        _obs("pt_l", _single(_ANY_LEP, lorentz.pt), (25, 0.0, 100.0), r"$p_T(\ell)$ [GeV]"),
        _obs("eta_l", _single(_ANY_LEP, lorentz.eta), (24, -4.8, 4.8), r"$\eta(\ell)$"),
        _obs("pt_nu", _single(_ANY_NU, lorentz.pt), (25, 0.0, 100.0), r"$p_T(\nu)$ [GeV]"),
        _obs("eta_nu", _single(_ANY_NU, lorentz.eta), (24, -4.8, 4.8), r"$\eta(\nu)$"),
        _obs(
            "m_lnu",
            lambda p, d: lorentz.mass(find_particle(p, d, _ANY_LEP) + find_particle(p, d, _ANY_NU)),
            (30, 50.0, 110.0),
            r"$m_{\ell\nu}$ [GeV]",
        ),
        _obs(
            "y_lnu",
            lambda p, d: lorentz.rapidity(
                find_particle(p, d, _ANY_LEP) + find_particle(p, d, _ANY_NU)
            ),
            (24, -4.8, 4.8),
            r"$y_{\ell\nu}$",
        ),
    ),
    "ttbar": (
        _obs("pt_t", _single([6], lorentz.pt), (25, 0.0, 500.0), r"$p_T(t)$ [GeV]"),
        _obs("y_t", _single([6], lorentz.rapidity), (20, -3.0, 3.0), r"$y(t)$"),
        _obs("pt_tbar", _single([-6], lorentz.pt), (25, 0.0, 500.0), r"$p_T(\bar t)$ [GeV]"),
        _obs("y_tbar", _single([-6], lorentz.rapidity), (20, -3.0, 3.0), r"$y(\bar t)$"),
        _obs("m_tt", lambda p, d: lorentz.mass(_tops(p, d)), (30, 300.0, 1200.0),
             r"$m_{t\bar t}$ [GeV]"),
        _obs("pt_tt", lambda p, d: lorentz.pt(_tops(p, d)), (25, 0.0, 250.0),
             r"$p_T(t\bar t)$ [GeV]"),
        _obs("y_tt", lambda p, d: lorentz.rapidity(_tops(p, d)), (20, -3.0, 3.0),
             r"$y_{t\bar t}$"),
        _obs("cos_theta_star", lambda p, d: cos_theta_star(find_particle(p, d, [6]),
                                                           find_particle(p, d, [-6])),
             (20, -1.0, 1.0), r"$\cos\theta^*$"),
    ),
    "ttbar_semileptonic": (
        *(
            _obs(f"{q}_{role}", _tt(role, fn), b, lab)
            for role, tex in (
                ("lepton", r"\ell"),
                ("neutrino", r"\nu"),
                ("b_lep", "b_{lep}"),
                ("b_had", "b_{had}"),
                ("q1", "q_1"),
                ("q2", "q_2"),
            )
            for q, fn, b, lab in (
                ("pt", lorentz.pt, (25, 0.0, 250.0), rf"$p_T({tex})$ [GeV]"),
                ("eta", lorentz.eta, (20, -4.0, 4.0), rf"$\eta({tex})$"),
            )
        ),
        _obs("pt_t_had", _tt("t_had", lorentz.pt), (25, 0.0, 500.0), r"$p_T(t_{had})$ [GeV]"),
        _obs("pt_t_lep", _tt("t_lep", lorentz.pt), (25, 0.0, 500.0), r"$p_T(t_{lep})$ [GeV]"),
        _obs("m_t_had", _tt("t_had", lorentz.mass), (30, 150.0, 195.0), r"$m(t_{had})$ [GeV]"),
        _obs("m_t_lep", _tt("t_lep", lorentz.mass), (30, 150.0, 195.0), r"$m(t_{lep})$ [GeV]"),
        _obs("m_tt", _tt("ttbar", lorentz.mass), (30, 300.0, 1200.0), r"$m_{t\bar t}$ [GeV]"),
        _obs("pt_tt", _tt("ttbar", lorentz.pt), (25, 0.0, 250.0), r"$p_T(t\bar t)$ [GeV]"),
        _obs("y_tt", _tt("ttbar", lorentz.rapidity), (20, -3.0, 3.0), r"$y_{t\bar t}$"),
        _obs("cos_theta_star", _tt_cos, (20, -1.0, 1.0), r"$\cos\theta^*$"),
    ),
}


def guess_process(pdg: Sequence[int] | Tensor) -> str:
    """Registry key for a list of final-state PDG ids (one event's slots).

    b, b̄, one charged lepton → ``ttbar_semileptonic``; t t̄ → ``ttbar``; ℓ⁺ℓ⁻ → ``drell_yan``;
    ℓν → ``w_lnu``.

    Raises:
        ValueError: no registered process matches; the message lists the ids.
    """
    ids = [int(i) for i in torch.as_tensor(pdg).reshape(-1).tolist()]
    n_lm = sum(i in _LEPTONS for i in ids)
    n_lp = sum(-i in _LEPTONS for i in ids)
    n_nu = sum(abs(i) in _NEUTRINOS for i in ids)
    if 5 in ids and -5 in ids and n_lm + n_lp == 1:
        return "ttbar_semileptonic"
    if sorted(ids) == [-6, 6]:
        return "ttbar"
    if n_lm == 1 and n_lp == 1 and n_nu == 0:
        return "drell_yan"
    if n_lm + n_lp == 1 and n_nu == 1:
        return "w_lnu"
    msg = (
        f"no observable set matches the final state with PDG ids {ids}; known: {list(OBSERVABLES)}"
    )
    raise ValueError(msg)


def observables_for(process: str) -> tuple[Observable, ...]:
    """The registered observables of ``process``.

    Raises:
        KeyError: unknown process; the message lists the known ones.
    """
    if process not in OBSERVABLES:
        msg = f"no observables registered for process '{process}'; known: {sorted(OBSERVABLES)}"
        raise KeyError(msg)
    return OBSERVABLES[process]


def evaluate(
    process: str, momenta: Tensor, pdg: Tensor, names: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """All (or the named) observables of ``process`` for a batch of events.

    Arguments:
        process: registry key (:func:`guess_process` finds it from PDG ids).
        momenta: (n, k, 4) float64 GeV (E, px, py, pz); more leading dims are flattened.
        pdg: (k,) or (..., k) PDG ids.
        names: subset of observable names (default all).

    Returns:
        ``{name: (n,) float64}``.
    """
    obs = observables_for(process)
    if names is not None:
        known = {o.name for o in obs}
        missing = [n for n in names if n not in known]
        if missing:
            msg = f"unknown observable(s) {missing} for '{process}'; known: {sorted(known)}"
            raise KeyError(msg)
        obs = tuple(o for o in obs if o.name in names)
    momenta = torch.as_tensor(momenta, dtype=torch.float64)
    lead = momenta.shape[:-2]
    p = momenta.reshape(-1, *momenta.shape[-2:])
    pdg = torch.as_tensor(pdg)
    d = pdg if pdg.ndim == 1 else pdg.expand(*lead, pdg.shape[-1]).reshape(-1, pdg.shape[-1])
    return {o.name: o(p, d).reshape(lead) for o in obs}
