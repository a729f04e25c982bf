r"""The parametric (Delphes-like) detector: smearing, efficiencies, ISR jets, exact transfer density.

Every reconstructed object comes from one parton (or from ISR), so the transfer density of a
matched object is known in closed form; see :meth:`ParametricDetector.log_density` and
docs/simulation.md for the formulas, the variables and the Jacobians.
"""

from __future__ import annotations

import math

import awkward as ak
import numpy as np
import torch
from torch import Tensor

from unfoldmem.cards.detector import DetectorCard
from unfoldmem.physics import lorentz
from unfoldmem.physics.densities import log_normal, log_wrapped_normal
from unfoldmem.simulate.detector_kernel import simulate_arrays
from unfoldmem.simulate.detector_objects import (
    KIND_ELECTRON,
    KIND_INVISIBLE,
    KIND_JET,
    KIND_MUON,
    KIND_NONE,
    REASONS,
    DetectorOutput,
    ObjectBlock,
    object_kind,
    partons_to_tensors,
)
from unfoldmem.simulate.detector_tables import SIGMA_FLOOR, detector_tables

__all__ = [
    "KIND_ELECTRON",
    "KIND_INVISIBLE",
    "KIND_JET",
    "KIND_MUON",
    "KIND_NONE",
    "REASONS",
    "DetectorOutput",
    "ObjectBlock",
    "ParametricDetector",
    "object_kind",
    "partons_to_tensors",
]

_LOG_2PI = math.log(2 * math.pi)
_ETA_CLAMP = 50.0  # cosh/sinh of smeared eta are evaluated inside this; acceptance is far below
_E_MAX = 1e100  # GeV; partons above are degenerate (reason 2): their squares would overflow


class ParametricDetector:
    r"""A Delphes-like detector whose transfer density is known exactly.

    Jets: :math:`E' \sim \mathcal N(E, \sigma_E)`, :math:`\sigma_E/E = a/\sqrt E \oplus b/E
    \oplus c`; the jet keeps the parton's velocity β, so :math:`p_T' = E'\beta/\cosh\eta'`
    and :math:`m' = m E'/E`; :math:`\eta' \sim \mathcal N(\eta, \sigma_\eta)`, :math:`\phi'`
    wrapped normal. Leptons: :math:`p_T' \sim \mathcal N(p_T, p_T\,(a \oplus b\,p_T))`, same
    angles. Resolutions and efficiencies use the parton's |η| region (regions are
    :math:`(e_i, e_{i+1}]`); acceptance cuts act on the reco values.

    References:
        J. de Favereau et al. (DELPHES 3), JHEP 02 (2014) 057, arXiv:1307.6346.

    Arguments:
        card: the :class:`~unfoldmem.cards.detector.DetectorCard`.

    Example:
        >>> det = ParametricDetector(DetectorCard())
        >>> p = torch.tensor([[[100.0, 60.0, 0.0, 80.0], [50.0, -50.0, 0.0, 0.0]]])
        >>> out = det.simulate(p, torch.tensor([[5, 13]]), torch.Generator().manual_seed(1))
        >>> out.muons.count.tolist()
        [1]
    """

    def __init__(self, card: DetectorCard) -> None:
        self.card = card
        t = detector_tables(card)
        self._tables = t
        # torch views of the tables for the densities (see DetectorTables for the layout)
        self._tab, self._edges, self._btag = (torch.from_numpy(a) for a in (t.tab, t.edges, t.btag))
        self._n_fine = t.n_fine
        self._pt_min, self._eta_max = torch.from_numpy(t.pt_min), torch.from_numpy(t.eta_max)
        self._kind_lut, self._flav_lut = torch.from_numpy(t.kind_lut), torch.from_numpy(t.flav_lut)
        #: P(n_isr = k), k = 0..max_jets (the card's law truncated and renormalised).
        self.isr_probs = torch.from_numpy(t.isr_probs)

    # ---- per-parton parameters shared by sampling and densities -------------------------------

    def _params(self, p: Tensor, pdg: Tensor) -> dict[str, Tensor]:
        a = pdg.abs()
        kind = self._kind_lut[torch.where(a < 26, a, 0)]
        energy, pabs, pt = p[..., 0], lorentz.p3_abs(p), lorentz.pt(p)
        good = (energy > 0) & (pt > 0) & (pabs <= energy * (1 + 1e-9)) & (energy < _E_MAX)
        eta, phi = lorentz.eta(p), lorentz.phi(p)
        fine = torch.bucketize(eta.abs(), self._edges)
        row = kind * self._n_fine + fine
        ca, cb, cc, cd, s_eta, s_phi, eff = self._tab[row].unbind(-1)
        jet = kind == KIND_JET
        e_safe = torch.where(good, energy, 1.0)
        x = torch.where(jet, e_safe, torch.where(good, pt, 1.0))
        x2 = x * x
        sigma = torch.sqrt(x * ca + cb + x2 * (cc + cd * x2)).clamp(min=SIGMA_FLOOR)
        beta = torch.where(good, pabs / e_safe, 1.0).clamp(max=1.0)
        tag_p = self._btag[self._flav_lut[torch.where(a < 26, a, 0)] * self._n_fine + fine]
        return {"kind": kind, "jet": jet, "x": x, "sigma": sigma, "beta": beta, "E": e_safe,
                "pt": pt,
                "eta": eta, "phi": phi, "s_eta": s_eta, "s_phi": s_phi, "eff": eff,
                "good": good, "tag_p": tag_p, "pt_min": self._pt_min[kind],
                "eta_max": self._eta_max[kind]}

    # ---- sampling ------------------------------------------------------------------------------

    def simulate(self, momenta: Tensor, pdg: Tensor, generator: torch.Generator) -> DetectorOutput:
        """Reconstruct events from their final-state partons.

        One 64-bit key is drawn from ``generator`` per call; event i then draws from its own
        counter-based stream (key, i) (:mod:`~unfoldmem.simulate.detector_rng`), so the same
        generator state gives the same events for any number of threads
        (``torch.get_num_threads()`` are used).

        Arguments:
            momenta: (n, P, 4) float64 (E, px, py, pz), GeV.
            pdg: (n, P) PDG ids (0 = padding; tops, W, Z are skipped, neutrinos enter MET).
            generator: the torch.Generator the key comes from (seeded by the caller).

        Returns:
            :class:`DetectorOutput`, jets/leptons sorted by pt, ``parton_index`` into P.
        """
        hi, lo = torch.randint(0, 2**32, (2,), generator=generator, dtype=torch.int64).tolist()
        mom = np.ascontiguousarray(momenta.detach().to(torch.float64).cpu().numpy())
        ids = np.ascontiguousarray(pdg.detach().to(torch.int64).cpu().numpy())
        if mom.shape != (*ids.shape, 4):
            msg = f"momenta {tuple(mom.shape)} and pdg {tuple(ids.shape)}: expected (n, P, 4), (n, P)"
            raise ValueError(msg)
        cols = [torch.from_numpy(a) for a in simulate_arrays(
            mom, ids, self._tables, (hi << 32) | lo, torch.get_num_threads())]
        blocks = [ObjectBlock(*cols[i].unbind(0), parton_index=cols[i + 1], mask=cols[i + 2])
                  for i in (0, 3, 6)]
        return DetectorOutput(*blocks, *cols[9:])

    def simulate_records(self, partons: ak.Array, generator: torch.Generator) -> ak.Array:
        """Detector records (``jets``, ``muons``, ``electrons``, ``met``, ``passed``) of parton
        records in the CONTRACTS.md layout; ``event_id`` and ``weight`` are copied when present.
        """
        mom, pdg = partons_to_tensors(partons)
        out = self.simulate(mom, pdg, generator)
        rec = ak.with_field(out.to_awkward(), out.passed.numpy(), "passed")
        for key in ("event_id", "weight"):
            if key in partons.fields:
                rec = ak.with_field(rec, partons[key], key)
        return rec

    # ---- exact densities -----------------------------------------------------------------------

    def log_density(
        self,
        reco: Tensor,
        parton: Tensor,
        pdg: Tensor,
        btag: Tensor | None = None,
        *,
        with_reason: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Exact log transfer density of one reco object given the parton it came from.

        A density in the reco variables :math:`(p_T', \eta', \phi')` (units GeV⁻¹ rad⁻¹),
        times the reconstruction efficiency ε and, for jets with ``btag`` given, the
        probability of the b-tag value:

        - jets: :math:`\varepsilon\,\mathcal N(E'; E, \sigma_E)\,
          \frac{\cosh\eta'}{\beta}\,\mathcal N(\eta'; \eta, \sigma_\eta)\,
          \mathcal{WN}(\phi'; \phi, \sigma_\phi)\,P(\text{tag})`, where
          :math:`E' = p_T'\cosh\eta'/\beta` and :math:`\beta = |\vec p|/E` of the parton; the
          factor :math:`\cosh\eta'/\beta = \partial E'/\partial p_T'` is the Jacobian.
        - leptons: :math:`\varepsilon\,\mathcal N(p_T'; p_T, \sigma_{p_T})\,
          \mathcal N(\eta'; \eta, \sigma_\eta)\,\mathcal{WN}(\phi'; \phi, \sigma_\phi)`
          (no Jacobian: :math:`p_T` is the smeared variable).

        It is −inf outside the acceptance (:math:`p_T' \le p_{T,\min}` or
        :math:`|\eta'| \ge \eta_{\max}`). Its integral over the reco space is
        :math:`\varepsilon P_{acc}`, and :meth:`log_prob_lost` is the log of the rest, so the
        two are normalised together. Not included: the jet mass (deterministic,
        :math:`m' = m E'/E`), the lepton charge (copied), MET (:meth:`log_density_met`), ISR
        jets (:meth:`log_density_isr`, :meth:`log_prob_n_isr`).

        Arguments:
            reco: (..., ≥3) reco (pt GeV, eta, phi rad, ...); extra columns are ignored.
            parton: (..., 4) parton four-vectors (E, px, py, pz), GeV; broadcastable.
            pdg: (...) PDG id of the parton; selects jet, muon or electron smearing.
            btag: (...) reco b-tag 0/1 of jets, or None to sum over it.
            with_reason: also return an int8 reason code per entry (see :data:`REASONS`).

        Returns:
            (...) float64 log density, finite or −inf, never NaN (and the reasons).

        Example:
            >>> det = ParametricDetector(DetectorCard())
            >>> parton = torch.tensor([50.0, 50.0, 0.0, 0.0], dtype=torch.float64)
            >>> lp = det.log_density(torch.tensor([49.0, 0.0, 0.0]), parton, torch.tensor(13))
            >>> bool(torch.isfinite(lp))
            True
        """
        parton = parton.to(torch.float64)
        reco = reco.to(torch.float64)
        shape = torch.broadcast_shapes(reco.shape[:-1], parton.shape[:-1], pdg.shape)
        r = reco[..., :3].expand(*shape, 3)
        p = parton.expand(*shape, 4)
        ids = pdg.expand(shape)
        finite = torch.isfinite(r).all(-1) & torch.isfinite(p).all(-1)
        if btag is not None:
            btag = btag.to(torch.float64).expand(shape)
            finite &= torch.isfinite(btag)
        r = torch.where(finite.unsqueeze(-1), r, 1.0)
        p = torch.where(finite.unsqueeze(-1), p, torch.tensor([2.0, 1.0, 0.0, 0.0]).double())
        q = self._params(p, ids)
        pt_r, eta_r, phi_r = r.unbind(-1)
        jet = q["jet"]
        ch = torch.cosh(eta_r.clamp(-_ETA_CLAMP, _ETA_CLAMP))
        x_r = torch.where(jet, pt_r * ch / q["beta"], pt_r)
        lp = (log_normal(x_r, q["x"], q["sigma"])
              + torch.where(jet, torch.log(ch / q["beta"]), 0.0)
              + log_normal(eta_r, q["eta"], q["s_eta"])
              + log_wrapped_normal(phi_r - q["phi"], q["s_phi"]) + torch.log(q["eff"]))
        if btag is not None:
            tp = torch.where(btag > 0.5, q["tag_p"], 1 - q["tag_p"])
            lp = lp + torch.where(jet, torch.log(tp), 0.0)
        reco_kind = (q["kind"] >= KIND_JET) & (q["kind"] <= KIND_ELECTRON)
        acc = (pt_r > q["pt_min"]) & (eta_r.abs() < q["eta_max"])
        why = torch.where(
            ~finite, 4, torch.where(
                ~reco_kind, 3, torch.where(
                    ~q["good"], 2, torch.where(~acc, 1, torch.where(torch.isneginf(lp), 5, 0)))))
        out = torch.where(why == 0, lp, -math.inf)
        return (out, why.to(torch.int8)) if with_reason else out

    def log_prob_lost(self, parton: Tensor, pdg: Tensor, n_nodes: int = 48) -> Tensor:
        r"""log P(no reco object from this parton) = :math:`\log(1 - \varepsilon P_{acc})`.

        :math:`P_{acc}` is the probability that the smeared values land in the acceptance: a
        closed form for leptons, a Gauss–Legendre integral over :math:`\eta'` (within ±9σ)
        for jets. Invisible, intermediate and degenerate partons give 0 (always lost).

        Arguments:
            parton: (..., 4) (E, px, py, pz) GeV; pdg: (...) PDG ids.
            n_nodes: quadrature nodes for the jet integral.

        Returns:
            (...) float64, ≤ 0.
        """
        parton = parton.to(torch.float64)
        shape = torch.broadcast_shapes(parton.shape[:-1], pdg.shape)
        p = parton.expand(*shape, 4)
        p = torch.where(torch.isfinite(p).all(-1, keepdim=True), p, 0.0)
        q = self._params(p, pdg.expand(shape))
        x, w = (torch.from_numpy(v) for v in np.polynomial.legendre.leggauss(n_nodes))
        s_eta, eta, eta_max = q["s_eta"], q["eta"], q["eta_max"]
        eta_in = (torch.special.ndtr((eta_max - eta) / s_eta)
                  - torch.special.ndtr((-eta_max - eta) / s_eta))
        lep_tail = torch.special.ndtr((q["x"] - q["pt_min"]) / q["sigma"])
        lo = ((-eta_max - eta) / s_eta).clamp(-9, 9).unsqueeze(-1)
        hi = ((eta_max - eta) / s_eta).clamp(-9, 9).unsqueeze(-1)
        z = 0.5 * (hi - lo) * x + 0.5 * (hi + lo)
        eta_r = (eta.unsqueeze(-1) + s_eta.unsqueeze(-1) * z).clamp(-_ETA_CLAMP, _ETA_CLAMP)
        e_thr = q["pt_min"].clamp(max=1e300).unsqueeze(-1) * torch.cosh(eta_r)
        tail = torch.special.ndtr((q["x"].unsqueeze(-1) - e_thr / q["beta"].unsqueeze(-1))
                                  / q["sigma"].unsqueeze(-1))
        jet_acc = (0.5 * (hi - lo) * w * torch.exp(-0.5 * z * z) * tail).sum(-1)
        jet_acc = jet_acc.squeeze(-1) / math.sqrt(2 * math.pi)
        pacc = torch.where(q["jet"], jet_acc, lep_tail * eta_in).clamp(0, 1)
        reco_kind = (q["kind"] >= KIND_JET) & (q["kind"] <= KIND_ELECTRON) & q["good"]
        p_det = torch.where(reco_kind, q["eff"] * pacc, 0.0)
        return torch.log1p(-p_det.clamp(max=1.0))

    def log_density_event(self, out: DetectorOutput, momenta: Tensor, pdg: Tensor) -> Tensor:
        r"""Exact log density of whole simulated events given their partons and the matching.

        Sum of :meth:`log_density` (with b-tag) over reconstructed objects and their partons
        (``parton_index``), :meth:`log_prob_lost` over partons with no object,
        :meth:`log_prob_n_isr` and :meth:`log_density_isr` (+ light mistag probability) for
        ISR jets, and :meth:`log_density_met` with the stored MET mean and noise. Objects are
        labelled (the matching is given), so no combinatorial factor is included.

        Arguments:
            out: :class:`DetectorOutput` for n events; momenta (n, P, 4) GeV and pdg (n, P)
                the partons it was made from.

        Returns:
            (n,) float64.
        """
        momenta = momenta.to(torch.float64)
        n_p = pdg.shape[1]
        total = self.log_density_met(out.met_pt, out.met_phi, out.met_mean, out.met_sigma)
        detected = torch.zeros(pdg.shape, dtype=torch.int64)
        for block, tag in ((out.jets, True), (out.muons, False), (out.electrons, False)):
            matched = block.mask & (block.parton_index >= 0)
            idx = block.parton_index.clamp(0, n_p - 1)
            par = torch.gather(momenta, 1, idx.unsqueeze(-1).expand(*idx.shape, 4))
            ids = torch.gather(pdg, 1, idx)
            reco = torch.stack([block.pt, block.eta, block.phi], -1)
            lp = self.log_density(reco, par, ids, block.tag if tag else None)
            total = total + torch.where(matched, lp, 0.0).sum(-1)
            detected = detected + torch.zeros(pdg.shape, dtype=torch.int64).scatter_add(
                1, idx, matched.long())
        lost = self.log_prob_lost(momenta, pdg)
        total = total + torch.where(detected > 0, 0.0, lost).sum(-1)
        isr = out.jets.mask & (out.jets.parton_index < 0)
        reco = torch.stack([out.jets.pt, out.jets.eta, out.jets.phi], -1)
        mistag = self._btag[torch.bucketize(out.jets.eta.abs(), self._edges)]
        ltag = torch.log(torch.where(out.jets.tag > 0.5, mistag, 1 - mistag))
        lp_isr = torch.where(isr, self.log_density_isr(reco) + ltag, 0.0).sum(-1)
        return total + lp_isr + self.log_prob_n_isr(isr.sum(-1))

    def log_density_isr(self, reco: Tensor) -> Tensor:
        r"""log density of one ISR jet in :math:`(p_T, \eta, \phi)`: Pareto × uniform × uniform.

        :math:`\log\frac{\alpha-1}{p_{T,\min}}(p_T/p_{T,\min})^{-\alpha}
        \frac{1}{2\eta_{\max}}\frac{1}{2\pi}`, times the b-tag probability is not included.

        Arguments:
            reco: (..., ≥3) (pt GeV, eta, phi rad).

        Returns:
            (...) float64, −inf outside :math:`p_T > p_{T,\min}`, :math:`|\eta| < \eta_{\max}`.
        """
        c = self.card.isr
        pt, eta = reco[..., 0].to(torch.float64), reco[..., 1].to(torch.float64)
        ok = (pt > c.pt_min) & (eta.abs() < c.eta_max) & torch.isfinite(reco[..., :3]).all(-1)
        pt_safe = torch.where(ok, pt, c.pt_min)
        lp = (math.log((c.index - 1) / c.pt_min) - c.index * torch.log(pt_safe / c.pt_min)
              - math.log(2 * c.eta_max) - math.log(2 * math.pi))
        return torch.where(ok, lp, -math.inf)

    def log_prob_n_isr(self, k: Tensor) -> Tensor:
        """log P(n_isr = k) of the card's truncated multiplicity law; (...) int -> (...) float64."""
        kmax = self.isr_probs.numel() - 1
        ok = (k >= 0) & (k <= kmax)
        return torch.where(ok, torch.log(self.isr_probs[k.clamp(0, kmax)]), -math.inf)

    @staticmethod
    def log_density_met(met_pt: Tensor, met_phi: Tensor, mean: Tensor, sigma: Tensor) -> Tensor:
        r"""log density of the MET in :math:`(p_T^{miss}, \phi^{miss})` given its mean and noise.

        :math:`\vec p_T^{miss} \sim \mathcal N(\vec\mu, \sigma^2 I_2)`, with
        :math:`\vec\mu = \sum_\nu \vec p_T + \sum_{\rm detected}(\vec p_T - \vec p_T')` and
        :math:`\sigma^2 = \sigma_0^2 + s^2\sum_{\rm visible} p_T`; the polar Jacobian is
        :math:`p_T^{miss}`. ``mean`` (..., 2) GeV and ``sigma`` (...) GeV come from
        :class:`DetectorOutput` (``met_mean``, ``met_sigma``). Returns (...) float64.
        """
        dx = met_pt * torch.cos(met_phi) - mean[..., 0]
        dy = met_pt * torch.sin(met_phi) - mean[..., 1]
        lp = (-0.5 * (dx * dx + dy * dy) / sigma**2 - 2 * torch.log(sigma) - _LOG_2PI
              + torch.log(met_pt))
        return torch.where(torch.isnan(lp), -math.inf, lp)
