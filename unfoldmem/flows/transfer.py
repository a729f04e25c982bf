r"""Transfer functions W(reco | parton): one conditional flow per jet multiplicity + P(n | parton).

The learned transfer density is

.. math:: W(x \mid p) = P(k(x) \mid p)\; q_{k}\big(y_k(x) \mid p\big)\,
    \left|\det \partial y_k/\partial x\right|,

where :math:`k(x)` is the multiplicity class of the reco event (4, 5, 6+ jets for tt̄; 0, 1,
2+ for Drell–Yan, whose 0-jet class is a flow over the leptons and MET alone),
:math:`P(k \mid p)` a categorical network, :math:`y_k` the
:class:`~unfoldmem.flows.encoding.ObjectEncoding` of the class-k reco objects and
:math:`q_k` a spline coupling flow conditioned on the encoded partons. Summed over classes and
integrated over reco space W is 1: it is normalised over the selected reco space (the
efficiency :math:`\epsilon(p)` is a separate factor of the MEM). In an open last class
("6+") the flow models the leading jets (the first ``multiplicity`` jets in slot order) and the
density is marginal over any further jets.

With ``residual`` (:class:`~unfoldmem.cards.model.TransferConfig`) the jets and leptons paired
with a parton (:mod:`unfoldmem.flows.residual`: pT ratio, η and φ differences) enter
:math:`y_k` relative to their parton, so the flow learns resolutions, not the parton kinematics
itself. Which partons are paired with jets (leptons) is found from the training data: those with a
reco jet within ΔR < 0.4 (lepton within ΔR < 0.1) in more than half of the events; they are
buffers of the model (``jet_partons``, ``lepton_partons``). With ``reco_mass: drop`` no mass is a
flow variable and W is a density in (pT, η, φ) only, like the parametric detector's exact
density, whose jet mass :math:`m E'/E` is no independent variable; sampled paired objects then
keep their parton's velocity (:func:`~unfoldmem.flows.residual.velocity_mass`), others the
training mean mass.

Reco events use the padded layout of :func:`~unfoldmem.flows.encoding.pad_reco`:
(..., slots, 7) columns (pt, eta, phi, m, btag, charge, type) and a mask; the non-jet objects
(MET, leptons) must be the same number in every event; jets are type 3.

References:
    | The Matrix Element Method with two invertible networks (Heimel et al., 2023)
    | https://arxiv.org/abs/2310.07752

Example:
    >>> partons = torch.rand(32, 2, 4) * torch.tensor([50.0, 1, 1, 0]) + torch.tensor([20.0, 0, 0, 0])
    >>> reco = torch.zeros(32, 3, 7); reco[..., 6] = 3
    >>> reco[:, :2, :4] = partons + torch.rand(32, 2, 4)
    >>> reco[:16, 2, :4] = torch.tensor([25.0, 0.1, 0.2, 3.0])
    >>> mask = reco[..., 0] > 0
    >>> cfg = TransferConfig(multiplicities=[2, 3], classifier_hidden=[8])
    >>> model = TransferFlow.from_data(partons, reco, mask, config=cfg,
    ...                                flow=FlowConfig(transforms=2, hidden=[8]))
    >>> model(partons).log_prob(reco, mask).shape
    torch.Size([32])
    >>> model(partons).sample((5,)).shape
    torch.Size([5, 32, 3, 7])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution
from zuko.nn import MLP

from unfoldmem.cards.model import EncodingConfig, FlowConfig, TransferConfig
from unfoldmem.flows.cinn import CouplingNSF
from unfoldmem.flows.encoding import ObjectEncoding
from unfoldmem.flows.residual import (
    from_acceptance,
    from_residual,
    match_fraction,
    paired_partons,
    slot_order,
    to_acceptance,
    to_residual,
    truth_match,
    velocity_mass,
)

__all__ = ["LAYOUT_VERSION", "TransferFlow", "TransferDistribution", "jet_count",
           "order_jets_by_truth"]

JET = 3
LEPTONS = (1.0, 2.0)
#: 2: the parton-pairing buffers ``jet_partons`` / ``lepton_partons`` (residual parametrisation).
LAYOUT_VERSION = 2
_JET_DR, _LEPTON_DR, _MIN_MATCH = 0.4, 0.1, 0.5


def jet_count(reco: Tensor, mask: Tensor) -> Tensor:
    """Number of valid jets per event; (..., slots, 7), (..., slots) -> (...) long."""
    return (mask & (reco[..., 6] == JET)).sum(-1)


def order_jets_by_truth(partons: Tensor, reco: Tensor, mask: Tensor) -> Tensor:
    r"""Training events for ``pairing: slot``: jets in the order of the partons they match.

    The jet partons are those :meth:`TransferFlow.from_data` pairs (matched to a jet within
    :math:`\Delta R` < 0.4 in more than half of the events); each event's jets go to them by the
    least :math:`\sum\Delta R^2` (:func:`~unfoldmem.flows.residual.truth_match`), the matched jet
    of the i-th jet parton first, then the other jets in pt order.

    Arguments:
        partons: (n, n_partons, 4) (pt GeV, eta, phi, m GeV); reco (n, slots, 7), mask (n, slots).

    Returns:
        (n, slots, 7): ``reco`` with the jets reordered (other objects unchanged).
    """
    is_jet = mask & (reco[..., 6] == JET)
    jp = (match_fraction(partons, reco[..., :3].double(), is_jet, _JET_DR) > _MIN_MATCH)
    cand = jp.nonzero()[:, 0].tolist()
    if not cand:
        return reco
    matched = truth_match(partons[:, cand], reco, is_jet)
    return slot_order(reco, is_jet, matched)


def _keep(reco: Tensor, mask: Tensor, cap: int) -> Tensor:
    is_jet = mask & (reco[..., 6] == JET)
    rank = torch.cumsum(is_jet.long(), -1)
    return mask & ~(is_jet & (rank > cap))


def _gather(reco: Tensor, mask: Tensor, cap: int) -> Tensor:
    """Valid objects of events that all have the same count: (n, slots, 7) -> (n, count, 4)."""
    keep = _keep(reco, mask, cap)
    counts = keep.sum(-1)
    if counts.numel() == 0:
        return reco.new_zeros(0, cap, 4)
    if bool((counts != counts[0]).any()):
        msg = (f"the number of non-jet reco objects differs between events ({sorted(set(counts.tolist()))}"
               f" objects with {cap} jets); transfer flows need a fixed set of leptons/MET")
        raise ValueError(msg)
    return reco[..., :4][keep].view(reco.shape[0], int(counts[0]), 4)


class TransferFlow(nn.Module):
    r"""W(reco | parton) as a lazy distribution: ``model(partons).log_prob(reco, mask)``.

    Arguments:
        parton_encoding: encoding of the partons (the context of every flow).
        reco_encodings: one :class:`ObjectEncoding` per multiplicity class.
        config: multiplicities, open last class, classifier widths.
        flow: coupling-flow architecture shared by the classes.
        fixed_types: (n_fixed,) type codes of the non-jet objects (for samples).
    """

    def __init__(
        self,
        parton_encoding: ObjectEncoding,
        reco_encodings: list[ObjectEncoding],
        config: TransferConfig | None = None,
        flow: FlowConfig | None = None,
        fixed_types: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config or TransferConfig()
        if len(reco_encodings) != len(self.config.multiplicities):
            msg = f"{len(reco_encodings)} reco encodings for {len(self.config.multiplicities)} classes"
            raise ValueError(msg)
        empty = [m for m, e in zip(self.config.multiplicities, reco_encodings, strict=True)
                 if e.n_features == 0]
        if empty:
            msg = (f"the {empty[0]}-jet class has no reco object to model: a 0-jet class needs"
                   " non-jet objects (MET, leptons) in every event")
            raise ValueError(msg)
        self.parton_encoding = parton_encoding
        self.reco_encodings = nn.ModuleList(reco_encodings)
        dp = parton_encoding.n_features
        self.flows = nn.ModuleList(CouplingNSF(e.n_features, dp, flow) for e in reco_encodings)
        self.classifier = MLP(dp, len(reco_encodings), list(self.config.classifier_hidden),
                              activation=nn.SiLU)
        types = torch.zeros(0) if fixed_types is None else torch.as_tensor(fixed_types)
        self.register_buffer("fixed_types", types.to(torch.float64))
        no = torch.zeros(parton_encoding.n_objects, dtype=torch.bool)
        self.register_buffer("jet_partons", no.clone())
        self.register_buffer("lepton_partons", no.clone())

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # models written before layout 2 have no pairing buffers: fine for the absolute layout
        missing = [k for k in ("jet_partons", "lepton_partons") if prefix + k not in state_dict]
        if missing and self.config.residual:
            msg = (f"the weights have no {', '.join(missing)}: written before transfer layout "
                   f"version {LAYOUT_VERSION}, they cannot be read as a 'transfer.residual: true' "
                   "model; retrain, or set 'residual: false' under 'transfer' in its card.yaml")
            raise ValueError(msg)
        for k in missing:
            state_dict[prefix + k] = getattr(self, k).clone()
        if self.config.residual and not missing and not any(
                bool(torch.as_tensor(state_dict[prefix + k]).any())
                for k in ("jet_partons", "lepton_partons")):
            # `unfoldmem train` used to save residual models without their pairing: their flows
            # were trained on residuals and would be given absolute objects. (A model whose
            # training data paired nothing is no residual model either.)
            msg = ("the weights pair no parton with a reco object (jet_partons and "
                   "lepton_partons all False) although 'transfer.residual' is true: the pairing "
                   "was lost when they were written (models of `unfoldmem train` before the "
                   "pairing was saved) or no parton matched a reco object; retrain the model")
            raise ValueError(msg)
        super()._load_from_state_dict(state_dict, prefix, *args)

    @property
    def multiplicities(self) -> list[int]:
        """Jet multiplicity of each class (the last one is 'or more' if ``open_last``)."""
        return list(self.config.multiplicities)

    def class_of(self, n_jets: Tensor) -> Tensor:
        """Class index per event, -1 outside every class; (...) long -> (...) long."""
        mult = torch.as_tensor(self.multiplicities, device=n_jets.device)
        cls = torch.full_like(n_jets, -1)
        for k, m in enumerate(mult.tolist()):
            cls[n_jets == m] = k
        if self.config.open_last:
            cls[n_jets > mult[-1]] = len(mult) - 1
        return cls

    @classmethod
    def from_data(
        cls,
        partons: Tensor,
        reco: Tensor,
        mask: Tensor,
        weight: Tensor | None = None,
        config: TransferConfig | None = None,
        flow: FlowConfig | None = None,
        encoding: EncodingConfig | None = None,
    ) -> TransferFlow:
        """Build with encodings fitted per class to (weighted) data.

        Arguments:
            partons: (n, n_partons, 4) (pt GeV, eta, phi, m GeV).
            reco: (n, slots, 7) padded reco objects; mask (n, slots) bool. With
                ``config.pairing == "slot"`` the jets are put in truth-match order first
                (:func:`order_jets_by_truth`).
            weight: (n,) event weights.
        """
        config = config or TransferConfig()
        encoding = encoding or EncodingConfig()
        if bool((partons[..., 0] < 0).any() | (partons[..., 2].abs() > math.pi + 1e-6).any()):
            msg = ("the partons are not (pt, eta, phi, m): some pt < 0 or |phi| > pi; pass "
                   "parton_objects(...) (or lorentz.to_ptetaphim of the (E, px, py, pz) momenta)")
            raise ValueError(msg)
        if config.pairing == "slot":
            reco = order_jets_by_truth(partons, reco, mask)
        kw = {"relative_phi": encoding.relative_phi, "mass_offset": encoding.mass_offset}
        penc = ObjectEncoding.fit(partons, weight, **kw)
        first = reco[0][mask[0] & (reco[0, :, 6] != JET)]
        probe = cls(penc, [penc] * len(config.multiplicities), config,
                    FlowConfig(transforms=1, hidden=[1]), first[:, 6])
        objs_all = reco[..., :3].double()
        is_jet = mask & (reco[..., 6] == JET)
        is_lep = mask & ((reco[..., 6] == LEPTONS[0]) | (reco[..., 6] == LEPTONS[1]))
        probe.jet_partons = match_fraction(partons, objs_all, is_jet, _JET_DR) > _MIN_MATCH
        probe.lepton_partons = ((match_fraction(partons, objs_all, is_lep, _LEPTON_DR) > _MIN_MATCH)
                                & ~probe.jet_partons)
        classes = probe.class_of(jet_count(reco, mask))
        if config.residual:
            kw["relative_phi"] = False  # paired φ are differences already; ISR/MET φ are uniform
        encs = []
        for k, m in enumerate(config.multiplicities):
            rows = classes == k
            if not bool(rows.any()):
                msg = f"no training event has {m} jets (multiplicities {config.multiplicities})"
                raise ValueError(msg)
            w = None if weight is None else weight[rows]
            objs, lj = probe.pseudo_objects(k, _gather(reco[rows], mask[rows], m), partons[rows])
            if not bool(torch.isfinite(lj).all()):
                msg = (f"{int((~torch.isfinite(lj)).sum())} training events with {m} jets have a "
                       f"jet outside jet_pt_min = {config.jet_pt_min} GeV / jet_eta_max = "
                       f"{config.jet_eta_max}, or jets not in descending pt order")
                raise ValueError(msg)
            if config.reco_mass == "drop":  # a constant mass column is no flow variable
                mean = (objs[..., 3] * (1.0 if w is None else w.double()[:, None])).sum(0)
                objs[..., 3] = mean / (objs.shape[0] if w is None else float(w.sum()))
            encs.append(ObjectEncoding.fit(objs, w, **kw))
        model = cls(penc, encs, config, flow, first[:, 6])
        model.jet_partons.copy_(probe.jet_partons)
        model.lepton_partons.copy_(probe.lepton_partons)
        return model

    def copy_pairing(self, model: nn.Module) -> nn.Module:
        """Give every :class:`TransferFlow` inside ``model`` this model's parton pairing.

        A network built from a card and encodings alone (``build_model``, e.g. an ensemble or
        Bayesian wrapper of the model :meth:`from_data` fitted) has no pairing: without it, a
        residual model trained on :meth:`prepare` features of this model reads absolute objects
        as residuals. Returns ``model``.
        """
        for m in model.modules():
            if isinstance(m, TransferFlow) and m is not self:
                m.jet_partons.copy_(self.jet_partons)
                m.lepton_partons.copy_(self.lepton_partons)
        return model

    def _pair_candidates(self) -> tuple[list[int], list[int], list[int]]:
        """Lepton slots, lepton partons and jet partons as Python lists (frozen for export)."""
        frozen = getattr(self, "_frozen_pairs", None)
        if frozen is not None:
            return frozen
        return ([i for i, t in enumerate(self.fixed_types.tolist()) if t in LEPTONS],
                self.lepton_partons.nonzero()[:, 0].tolist(),
                self.jet_partons.nonzero()[:, 0].tolist())

    def freeze_pairs(self) -> None:
        """Read the pairing buffers once into constants, so that torch.export sees no
        data-dependent reads (call on a loaded model before exporting it)."""
        self._frozen_pairs = None
        self._frozen_pairs = self._pair_candidates()

    def pairs(self, k: int, partons: Tensor) -> tuple[list[int], Tensor]:
        """Which objects of class k are paired, and with which partons.

        Arguments:
            k: class index. partons: (..., n_partons, 4) (pt, eta, phi, m).

        Returns:
            positions of the paired objects in the class's object list (non-jets first, then
            jets in slot order) and their partons (..., n_paired, 4).
        """
        nfix = int(self.fixed_types.shape[0])
        by_pt = self.config.pairing == "pt"
        jets = list(range(nfix, nfix + self.multiplicities[k]))
        leps, lep_cand, jet_cand = self._pair_candidates()
        idx: list[int] = []
        parts = []
        for group, cand in ((leps, lep_cand), (jets, jet_cand)):
            pp = paired_partons(partons, cand, len(group), by_pt)
            idx += group[: pp.shape[-2]]
            parts.append(pp.double())
        return idx, torch.cat(parts, -2)

    def _unpaired_jets(self, k: int, idx: list[int]) -> list[int]:
        nfix = int(self.fixed_types.shape[0])
        return [i for i in range(nfix, nfix + self.multiplicities[k]) if i not in idx]

    def pseudo_objects(self, k: int, objs: Tensor, partons: Tensor) -> tuple[Tensor, Tensor]:
        """Class-k objects (..., n, 4) -> the pseudo-objects its encoding takes (residuals of
        paired objects, acceptance map of unpaired jets) and their log-Jacobian (...)."""
        idx, pp = self.pairs(k, partons) if self.config.residual else ([], None)
        cfg = self.config
        pseudo, l_acc = to_acceptance(objs, self._unpaired_jets(k, idx), cfg.jet_pt_min,
                                      cfg.jet_eta_max)
        if not idx:
            return pseudo, l_acc
        pseudo, l_res = to_residual(pseudo, pp, idx)
        return pseudo, l_acc + l_res

    def encode(self, k: int, objs: Tensor, partons: Tensor) -> tuple[Tensor, Tensor]:
        r"""Class-k reco objects -> flow features and :math:`\log|\det\partial y/\partial x|`.

        Arguments:
            k: class index; objs (..., n_objects_k, 4) (pt, eta, phi, m), partons
            (..., n_partons, 4) broadcastable.

        Returns:
            features (..., D_k) float64, log-Jacobian (...) over (pt, eta, phi[, m]).
        """
        pseudo, l_res = self.pseudo_objects(k, objs, partons)
        y, l_enc = self.reco_encodings[k](pseudo)
        return y, l_res + l_enc

    def decode(self, k: int, y: Tensor, partons: Tensor) -> Tensor:
        """Inverse of :meth:`encode`: features (..., D_k) -> objects (..., n_objects_k, 4)."""
        objs = self.reco_encodings[k].inverse(y)
        cfg = self.config
        idx, pp = self.pairs(k, partons)
        objs = from_acceptance(objs, self._unpaired_jets(k, idx if cfg.residual else []),
                               cfg.jet_pt_min, cfg.jet_eta_max)
        if cfg.residual:
            objs = from_residual(objs, pp, idx)
        if cfg.reco_mass == "drop" and idx:
            objs[..., idx, 3] = velocity_mass(objs[..., idx, :], pp)
        return objs

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.classifier.parameters()).dtype

    def context(self, partons: Tensor) -> Tensor:
        """Encoded partons (..., n, 4) -> (..., D_parton) in the network dtype."""
        return self.parton_encoding(partons)[0].to(self._dtype)

    def forward(self, partons: Tensor) -> TransferDistribution:
        """W(· | partons) for partons (B, n_partons, 4) (pt, eta, phi, m)."""
        return TransferDistribution(self, self.context(partons), partons)

    def prepare(
        self, partons: Tensor, reco: Tensor, mask: Tensor, weight: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Encode training data once into a dict for :func:`unfoldmem.flows.training.train`.

        With ``pairing: slot`` the jets are first put in truth-match order
        (:func:`order_jets_by_truth`), as in :meth:`from_data`.

        Raises:
            ValueError: events whose jet multiplicity is in no class.
        """
        if self.config.pairing == "slot":
            reco = order_jets_by_truth(partons, reco, mask)
        classes = self.class_of(jet_count(reco, mask))
        if bool((classes < 0).any()):
            bad = sorted(set(jet_count(reco, mask)[classes < 0].tolist()))
            msg = f"{int((classes < 0).sum())} events have jet counts {bad} outside {self.multiplicities}"
            raise ValueError(msg)
        dmax = max(e.n_features for e in self.reco_encodings)
        x = torch.zeros(reco.shape[0], dmax, dtype=self._dtype)
        for k, m in enumerate(self.multiplicities):
            rows = classes == k
            if bool(rows.any()):
                y, _ = self.encode(k, _gather(reco[rows], mask[rows], m), partons[rows])
                x[rows, : y.shape[-1]] = y.to(self._dtype)
        w = torch.ones(reco.shape[0], dtype=torch.float64) if weight is None else weight.double()
        return {"context": self.context(partons), "cls": classes, "x": x, "weight": w}

    def nll(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-event -log W in feature space (B,) of a :meth:`prepare` batch."""
        ctx, cls, x = batch["context"], batch["cls"], batch["x"]
        out = -torch.log_softmax(self.classifier(ctx), -1).gather(-1, cls[:, None])[:, 0]
        parts = torch.zeros_like(out)
        for k, (enc, flow) in enumerate(zip(self.reco_encodings, self.flows, strict=True)):
            rows = cls == k
            if bool(rows.any()):
                lp = flow(ctx[rows]).log_prob(x[rows, : enc.n_features])
                parts = parts.index_put((rows.nonzero()[:, 0],), -lp)
        return out + parts


class TransferDistribution(Distribution):
    """W(reco | partons) for a batch of parton events (returned by :class:`TransferFlow`).

    ``log_prob(reco, mask)`` takes padded reco (..., B, slots, 7) and returns (..., B) float64,
    the density per unit (pt, eta, phi[, m]) of every modelled object, −inf for multiplicities
    in no class. ``sample(shape)`` returns (*shape, B, n_fixed + max_jets, 7) with zero padding.
    """

    arg_constraints: dict[str, Any] = {}  # noqa: RUF012 (torch's own class attribute)

    def __init__(self, model: TransferFlow, context: Tensor, partons: Tensor) -> None:
        self.model = model
        self.ctx = context
        self.partons = partons.to(torch.float64)
        self.logits = torch.log_softmax(model.classifier(context), -1)
        super().__init__(batch_shape=context.shape[:-1], validate_args=False)

    def log_prob(self, value: Tensor, mask: Tensor | None = None) -> Tensor:
        """log W(value | partons); value (..., slots, 7), mask (..., slots) (default pt > 0)."""
        mask = value[..., 0] > 0 if mask is None else mask.bool()
        lead = torch.broadcast_shapes(value.shape[:-2], self.batch_shape)
        value = value.expand(*lead, *value.shape[-2:]).reshape(-1, *value.shape[-2:])
        mask = mask.expand(*lead, mask.shape[-1]).reshape(-1, mask.shape[-1])
        ctx = self.ctx.expand(*lead, self.ctx.shape[-1]).reshape(-1, self.ctx.shape[-1])
        logits = self.logits.expand(*lead, self.logits.shape[-1]).reshape(-1, self.logits.shape[-1])
        par = self.partons.expand(*lead, *self.partons.shape[-2:]).reshape(
            -1, *self.partons.shape[-2:])
        classes = self.model.class_of(jet_count(value, mask))
        out = torch.full(classes.shape, -torch.inf, dtype=torch.float64, device=ctx.device)
        for k, m in enumerate(self.model.multiplicities):
            rows = classes == k
            if not bool(rows.any()):
                continue
            y, ladj = self.model.encode(k, _gather(value[rows], mask[rows], m), par[rows])
            lq = self.model.flows[k](ctx[rows]).log_prob(y.to(ctx.dtype)).double()
            out[rows] = logits[rows, k].double() + lq + ladj
        return out.view(lead)

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> Tensor:
        """Reco events (*sample_shape, B, n_fixed + max jets, 7), zero-padded."""
        shape = torch.Size(sample_shape)
        nfix = self.model.fixed_types.shape[0]
        slots = nfix + max(self.model.multiplicities)
        out = self.ctx.new_zeros(*shape, *self.batch_shape, slots, 7, dtype=torch.float64)
        k_draw = Categorical(logits=self.logits).sample(shape)
        for k, m in enumerate(self.model.multiplicities):
            objs = self.model.decode(k, self.model.flows[k](self.ctx).sample(shape), self.partons)
            sel = k_draw == k
            out[..., : nfix + m, :4][sel] = objs[sel]
            out[..., :nfix, 6][sel] = self.model.fixed_types
            out[..., nfix : nfix + m, 6][sel] = float(JET)
        return out
