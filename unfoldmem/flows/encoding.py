r"""Invertible encodings between event records (pt, eta, phi, m) and network tensors.

Two encodings live here:

* :class:`ObjectEncoding` — the *density* encoding of a fixed list of objects (partons for the
  cINN, reco objects of one multiplicity for a transfer flow). It is a bijection
  :math:`v \mapsto x` with an exact :math:`\log|\det \partial x/\partial v|`, so that a flow
  density :math:`q(x)` becomes the physical density
  :math:`p(v) = q(x(v))\,|\det \partial x/\partial v|` in :math:`(p_T, \eta, \phi, m)`.
* :class:`RecoEncoding` — the *condition* encoding of a variable number of reco objects
  (MET, leptons, jets) padded to a fixed length with a mask; it only feeds the condition network,
  so it needs no Jacobian.

Feature map of one object (before standardisation):

.. math::
    (p_T, \eta, \phi, m) \mapsto (\log p_T,\ \eta,\ \operatorname{atanh}(\phi'/\pi),\
    \log(m + m_0)),

with :math:`\phi' = \phi` (default) or, with ``relative_phi``, :math:`\phi' = \phi - \phi_0`
wrapped to :math:`[-\pi, \pi)` for objects after the first (a shift, Jacobian 1). The atanh maps the
periodic interval onto the real line with :math:`d t/d\phi = 1/(\pi (1 - u^2))`, so every density
stays exact. Objects whose mass is the same in every event (massless partons, on-shell b quarks)
get no mass feature: the mass is stored and restored on inversion, and the density is over
:math:`(p_T, \eta, \phi)` only; likewise an eta that is constant (MET: eta = 0) is no feature.
Features are ordered in blocks: all log pT, free etas, all phi coordinates, free log masses.

Example:
    >>> v = torch.tensor([[[50.0, 0.3, 1.0, 10.0], [30.0, -1.0, -2.0, 0.0]]], dtype=torch.float64)
    >>> v = v.repeat(4, 1, 1)
    >>> v[:, :, :2] += torch.rand(4, 2, 2)
    >>> enc = ObjectEncoding.fit(v)
    >>> enc.free_mass.tolist(), enc.n_features
    ([False, False], 6)
    >>> x, ladj = enc(v)
    >>> torch.allclose(enc.inverse(x), v)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from unfoldmem.physics import lorentz

__all__ = [
    "U_MAX",
    "RECO_TYPES",
    "ObjectEncoding",
    "RecoEncoding",
    "StandardisedEncoding",
    "register_standardisation",
    "weighted_mean_std",
    "pad_reco",
    "parton_objects",
    "log_jacobian_fourvector",
]

#: Types of reco objects, in the order of the one-hot code of :class:`RecoEncoding`.
RECO_TYPES = ("met", "muon", "electron", "jet")

# atanh(±(1 - 1e-12)) ≈ ±14: finite, and far outside the spline domain of any flow.
U_MAX = 1.0 - 1e-12


def _wrap(phi: Tensor) -> Tensor:
    return lorentz.delta_phi(phi, torch.zeros((), dtype=phi.dtype, device=phi.device))


def register_standardisation(module: nn.Module, d: int, mean: Tensor | None,
                             std: Tensor | None) -> None:
    """Give ``module`` float64 buffers ``mean`` and ``std`` of length d: copies of the given
    statistics, or 0 and 1 (filled later by ``fit`` or a ``load_state_dict``)."""
    module.register_buffer("mean", torch.zeros(d, dtype=torch.float64) if mean is None
                           else torch.as_tensor(mean, dtype=torch.float64).clone())
    module.register_buffer("std", torch.ones(d, dtype=torch.float64) if std is None
                           else torch.as_tensor(std, dtype=torch.float64).clone())


def weighted_mean_std(values: Tensor, weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Weighted mean and standard deviation over the leading dim; weights may be negative.

    Arguments:
        values: (n, d) features.
        weight: (n,) event weights; ``None`` means 1. If the signed-weight variance of a
            feature is not positive (possible with negative weights), |w| is used for it.

    Returns:
        mean (d,), std (d,), float64; a std of 0 is replaced by 1.
    """
    values = values.to(torch.float64)
    w = torch.ones(values.shape[0], dtype=torch.float64) if weight is None else weight.double()
    w = w.to(values.device)
    mean = (w[:, None] * values).sum(0) / w.sum()
    var = (w[:, None] * (values - mean) ** 2).sum(0) / w.sum()
    wa = w.abs()
    mean_a = (wa[:, None] * values).sum(0) / wa.sum()
    var_a = (wa[:, None] * (values - mean_a) ** 2).sum(0) / wa.sum()
    bad = ~(var > 0)
    mean = torch.where(bad, mean_a, mean)
    var = torch.where(bad, var_a, var)
    std = var.sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean, std


def log_jacobian_fourvector(v: Tensor) -> Tensor:
    r"""log of :math:`|\partial(E,p_x,p_y,p_z)/\partial(p_T,\eta,\phi,m)| = p_T^2\cosh\eta\, m/E`.

    Add it to a density in four-momentum space to get one in :math:`(p_T,\eta,\phi,m)`.
    v: (..., 4) (pt, eta, phi, m) GeV -> (...).
    """
    pt, eta, _, m = v.unbind(-1)
    energy = torch.sqrt((pt * torch.cosh(eta)) ** 2 + m * m)
    return 2 * torch.log(pt) + torch.log(torch.cosh(eta)) + torch.log(m.abs()) - torch.log(energy)


class StandardisedEncoding(nn.Module):
    r"""Base of the parton encodings: a subclass's ``_raw(v) -> (raw features, log|det|)``
    standardised with the ``mean``/``std`` buffers, sized by the ``free_mass`` (k,) buffer."""

    #: True where decoding can give NaN partons (a draw outside the encoding's physical
    #: region, e.g. :class:`~unfoldmem.flows.top_lepton.TopLeptonEncoding`):
    #: :meth:`~unfoldmem.flows.cinn.CINN.sample_partons` then draws again
    redraws: ClassVar[bool] = False

    def _raw(self, v: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @property
    def n_objects(self) -> int:
        """Number of partons (objects) encoded."""
        return int(self.free_mass.shape[0])

    @property
    def n_features(self) -> int:
        """Length of the feature vector."""
        return int(self.mean.shape[0])

    def forward(self, v: Tensor) -> tuple[Tensor, Tensor]:
        r"""Encode partons.

        Arguments:
            v: (..., n_objects, 4) (pt GeV, eta, phi, m GeV).

        Returns:
            x: (..., n_features) standardised features, float64;
            ladj: (...) :math:`\log|\det\partial x/\partial v|` over (pt, eta, phi[, free m]).
        """
        raw, ladj = self._raw(v)
        return (raw - self.mean) / self.std, ladj - self.std.log().sum()

    def log_abs_det_jacobian(self, v: Tensor) -> Tensor:
        """log|det dx/dv| of :meth:`forward`; (..., n_objects, 4) -> (...)."""
        return self.forward(v)[1]


class ObjectEncoding(StandardisedEncoding):
    r"""Bijection between ``n_objects`` objects (pt, eta, phi, m) and standardised features.

    Arguments:
        free_mass: (n_objects,) bool; True where the mass is a feature.
        fixed_mass: (n_objects,) GeV, the mass restored where ``free_mass`` is False.
        relative_phi: phi of objects 1.. relative to object 0 (wrapped); else absolute (the
            default: a conditional flow on relative phi has to learn the rotation of its
            absolute condition, which the cINN toy closure shows it does not, see docs/flows.md).
        mass_offset: :math:`m_0` in :math:`\log(m + m_0)`, GeV (keeps m = 0 jets finite).
        mean, std: (n_features,) standardisation statistics (default 0 and 1).

    The statistics and masses are buffers, so they are saved in ``state_dict``; :meth:`to_dict`
    and :meth:`from_dict` give the same as plain JSON for a model directory.
    """

    def __init__(
        self,
        free_mass: Sequence[bool] | Tensor,
        fixed_mass: Sequence[float] | Tensor | None = None,
        relative_phi: bool = False,
        mass_offset: float = 1.0,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        free_eta: Sequence[bool] | Tensor | None = None,
    ) -> None:
        super().__init__()
        free = torch.as_tensor(free_mass, dtype=torch.bool)
        n = free.shape[0]
        fixed = torch.zeros(n) if fixed_mass is None else torch.as_tensor(fixed_mass)
        feta = torch.ones(n, dtype=torch.bool) if free_eta is None else torch.as_tensor(
            free_eta, dtype=torch.bool)
        self.register_buffer("free_mass", free)
        self.register_buffer("fixed_mass", fixed.to(torch.float64))
        self.register_buffer("free_eta", feta)
        self.relative_phi = bool(relative_phi)
        self.mass_offset = float(mass_offset)
        d = 2 * n + int(feta.sum()) + int(free.sum())
        register_standardisation(self, d, mean, std)

    @classmethod
    def fit(
        cls,
        objects: Tensor,
        weight: Tensor | None = None,
        relative_phi: bool = False,
        mass_offset: float = 1.0,
        mass_tolerance: float = 1e-3,
    ) -> ObjectEncoding:
        """Build an encoding from data: fixed masses detected, statistics weighted.

        Arguments:
            objects: (n_events, n_objects, 4) (pt GeV, eta, phi, m GeV).
            weight: (n_events,) event weights (may be negative).
            mass_tolerance: an object whose mass spread is below this (GeV) has a fixed mass.
        """
        objects = objects.double()
        mean_m, _ = weighted_mean_std(objects[..., 3], weight)
        spread = objects[..., 3].amax(0) - objects[..., 3].amin(0)
        free = spread > mass_tolerance
        eta_spread = objects[..., 1].amax(0) - objects[..., 1].amin(0)
        enc = cls(free, torch.where(free, 0.0, mean_m), relative_phi, mass_offset,
                  free_eta=eta_spread > 0)
        raw, _ = enc._raw(objects)
        enc.mean, enc.std = weighted_mean_std(raw, weight)
        return enc

    def _raw(self, v: Tensor) -> tuple[Tensor, Tensor]:
        v = v.to(self.mean.device, torch.float64)
        pt, eta, phi, m = v.unbind(-1)
        if self.relative_phi and self.n_objects > 1:
            phi = torch.cat([phi[..., :1], lorentz.delta_phi(phi[..., 1:], phi[..., :1])], -1)
        u = (phi / math.pi).clamp(-U_MAX, U_MAX)
        mf = m[..., self.free_mass] + self.mass_offset
        raw = torch.cat([torch.log(pt), eta[..., self.free_eta], torch.atanh(u), torch.log(mf)], -1)
        ladj = (-torch.log(pt) - math.log(math.pi) - torch.log1p(-u * u)).sum(-1)
        return raw, ladj - torch.log(mf).sum(-1)

    def inverse(self, x: Tensor) -> Tensor:
        """Decode features (..., n_features) -> objects (..., n_objects, 4) float64 (pt, eta, phi, m)."""
        x = x.to(self.mean.device, torch.float64)
        raw = x * self.std + self.mean
        n, ne = self.n_objects, int(self.free_eta.sum())
        pt = torch.exp(raw[..., :n])
        eta = torch.zeros_like(pt)
        eta[..., self.free_eta] = raw[..., n : n + ne]
        phi = math.pi * torch.tanh(raw[..., n + ne : 2 * n + ne])
        if self.relative_phi and n > 1:
            phi = torch.cat([phi[..., :1], _wrap(phi[..., 1:] + phi[..., :1])], -1)
        m = self.fixed_mass.expand(pt.shape).clone()
        if bool(self.free_mass.any()):
            m[..., self.free_mass] = torch.exp(raw[..., 2 * n + ne :]) - self.mass_offset
        return torch.stack([pt, eta, phi, m], -1)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON description (layout + statistics); inverse of :meth:`from_dict`."""
        return {
            "free_mass": self.free_mass.tolist(),
            "free_eta": self.free_eta.tolist(),
            "fixed_mass": self.fixed_mass.tolist(),
            "relative_phi": self.relative_phi,
            "mass_offset": self.mass_offset,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectEncoding:
        """Rebuild an encoding from :meth:`to_dict` output."""
        return cls(
            d["free_mass"], d["fixed_mass"], d["relative_phi"], d["mass_offset"],
            torch.tensor(d["mean"], dtype=torch.float64), torch.tensor(d["std"], dtype=torch.float64),
            d["free_eta"],
        )


#: Columns of the padded reco tensor from :func:`pad_reco`.
RECO_COLUMNS = ("pt", "eta", "phi", "mass", "btag", "charge", "type")


class RecoEncoding(nn.Module):
    r"""Per-object features of padded reco objects for the condition network (no Jacobian).

    Each object becomes ``[(log pT - μ)/σ, (η - μ)/σ, cos φ, sin φ, (log(m+1) - μ)/σ, btag,
    charge, one-hot type (4)]`` = 11 features; padded slots become zeros.

    Arguments:
        mean, std: (3,) statistics of (log pT, η, log(m+1)) over valid objects.
    """

    n_features = 11
    #: column of the first one-hot type feature (types in RECO_TYPES order)
    onehot_start = n_features - len(RECO_TYPES)

    def __init__(self, mean: Tensor | None = None, std: Tensor | None = None) -> None:
        super().__init__()
        register_standardisation(self, 3, mean, std)

    @staticmethod
    def _cont(objects: Tensor) -> Tensor:
        return torch.stack([objects[..., 0].clamp_min(1e-6).log(), objects[..., 1],
                            (objects[..., 3].clamp_min(0) + 1).log()], -1)

    @classmethod
    def fit(cls, objects: Tensor, mask: Tensor, weight: Tensor | None = None) -> RecoEncoding:
        """Statistics from valid objects; objects (n, slots, 7) from :func:`pad_reco`, mask (n, slots)."""
        w = torch.ones(objects.shape[0], dtype=torch.float64) if weight is None else weight.double()
        w = w[:, None].expand(mask.shape)[mask]
        mean, std = weighted_mean_std(cls._cont(objects.double())[mask], w)
        return cls(mean, std)

    def forward(self, objects: Tensor, mask: Tensor) -> Tensor:
        """(..., slots, ≥7) padded objects, (..., slots) mask -> (..., slots, 11) float64."""
        objects = objects.to(self.mean.device, torch.float64)
        cont = (self._cont(objects) - self.mean) / self.std
        phi = objects[..., 2]
        onehot = nn.functional.one_hot(objects[..., 6].long().clamp(0, 3), 4).double()
        out = torch.cat([cont[..., :2], phi.cos()[..., None], phi.sin()[..., None],
                         cont[..., 2:], objects[..., 4:6], onehot], -1)
        return out * mask[..., None].to(out.device)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON statistics."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecoEncoding:
        """Rebuild from :meth:`to_dict` output."""
        return cls(torch.tensor(d["mean"]), torch.tensor(d["std"]))


def _padded(coll: Any, n: int, fields: Sequence[str], type_code: int) -> tuple[Tensor, Tensor]:
    import awkward as ak
    import numpy as np

    order = ak.argsort(coll.pt, axis=1, ascending=False)
    coll = coll[order]
    cols = []
    for f in fields:
        if f in coll.fields:
            arr = ak.fill_none(ak.pad_none(coll[f], n, axis=1, clip=True), 0.0)
            cols.append(np.asarray(ak.to_numpy(arr), dtype=np.float64))
        else:
            cols.append(None)
    valid = ak.to_numpy(ak.fill_none(ak.pad_none(ak.ones_like(coll.pt), n, axis=1, clip=True), 0))
    shape = valid.shape
    stacked = np.stack([c if c is not None else np.zeros(shape) for c in cols], -1)
    stacked = np.concatenate([stacked, float(type_code) * valid[..., None]], -1)
    return torch.from_numpy(stacked), torch.from_numpy(np.asarray(valid) > 0)


def pad_reco(events: Any, max_jets: int = 8, max_leptons: int = 2) -> tuple[Tensor, Tensor]:
    """Pad the reco objects of detector records into one tensor with a mask.

    Slot order: MET, then leptons (muons then electrons, pt-ordered within each), then jets
    (pt-ordered), so the valid objects of an event keep a fixed order.

    Arguments:
        events: awkward records with ``jets``, ``muons``, ``electrons`` and ``met`` (see io).
        max_jets: jet slots; extra jets are dropped (the softest ones).
        max_leptons: slots for muons and for electrons each.

    Returns:
        objects: (n_events, 1 + 2*max_leptons + max_jets, 7) float64 with columns
        :data:`RECO_COLUMNS` (pt GeV, eta, phi, mass GeV, btag, charge, type code of
        :data:`RECO_TYPES`); zeros in padded slots.
        mask: (n_events, slots) bool, True for real objects.
    """
    import awkward as ak
    import numpy as np

    n = len(events)
    met = np.zeros((n, 1, 7))
    met[:, 0, 0] = ak.to_numpy(events.met.pt)
    met[:, 0, 2] = ak.to_numpy(events.met.phi)
    parts = [torch.from_numpy(met)]
    masks = [torch.ones(n, 1, dtype=torch.bool)]
    fields = ("pt", "eta", "phi", "mass", "btag", "charge")
    for name, code, k in (("muons", 1, max_leptons), ("electrons", 2, max_leptons),
                          ("jets", 3, max_jets)):
        t, m = _padded(events[name], k, fields, code)
        parts.append(t)
        masks.append(m)
    return torch.cat(parts, 1), torch.cat(masks, 1)


def parton_objects(partons: Any, min_pt: float = 1e-6) -> Tensor:
    """Outgoing partons of parton records as (pt, eta, phi, m), dropping beam-axis slots.

    Arguments:
        partons: awkward records with ``partons.{E,px,py,pz}`` (see io), the same number of
            partons in every event.
        min_pt: a slot whose pt is below this (GeV) in every event (incoming partons) is dropped.

    Returns:
        (n_events, n_outgoing, 4) float64 (pt GeV, eta, phi, m GeV).

    Raises:
        ValueError: the events do not all have the same number of partons.
    """
    from unfoldmem.io.partons import parton_arrays

    four, _ = parton_arrays(partons)
    v = lorentz.to_ptetaphim(torch.from_numpy(four))
    keep = (v[..., 0] > min_pt).any(0)
    return v[:, keep]
