r"""The realistic chain: Pythia 8 hard process + shower + hadronisation, anti-kt R=0.4 jets with
fastjet, isolated leptons from the event record, then the same parametric detector smearing.

The hard process is Pythia's own (same process, θ and √s as the process card; Pythia's default
PDF), so parton records come from Pythia's hard-process record. ISR jets are real here (from the
shower): the parametric ISR model is switched off.

References:
    C. Bierlich et al., SciPost Phys. Codebases 8 (2022), arXiv:2203.11601 (Pythia 8.3);
    M. Cacciari, G. P. Salam, G. Soyez, JHEP 04 (2008) 063, arXiv:0802.1189 (anti-kt).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unfoldmem.cards.detector import DetectorCard
from unfoldmem.cards.run import GeneratorConfig, SelectionConfig
from unfoldmem.physics.hadronic import HadronicIntegrand
from unfoldmem.simulate.detector import ParametricDetector
from unfoldmem.simulate.generator import GenerationSummary, PartonChunk, records
from unfoldmem.simulate.selection import select

__all__ = ["PythiaChain", "generate_file_pythia", "jet_multiplicity_table", "pythia_settings"]

_MB_TO_PB = 1e9


def pythia_settings(process: str, theta: dict[str, float], sqrt_s: float,
                    cuts: dict[str, float]) -> list[str]:
    """Pythia 8 settings of the hard process matching one of our registered processes.

    Raises:
        ValueError: the process has no Pythia equivalent here.
    """
    s = [f"Beams:eCM = {sqrt_s}"]
    if process in ("ttbar", "ttbar_semileptonic"):
        s += ["Top:gg2ttbar = on", "Top:qqbar2ttbar = on", f"6:m0 = {theta.get('m_t', 172.5)}"]
        if process == "ttbar_semileptonic":
            # t -> b mu+ nu, tbar -> bbar d ubar: the final state of our process
            s += ["24:onMode = off", "24:onPosIfMatch = 13 14", "24:onNegIfMatch = 1 2"]
    elif process == "drell_yan":
        s += ["WeakSingleBoson:ffbar2gmZ = on", "23:onMode = off", "23:onIfMatch = 13 13"]
    elif process == "w_lnu":
        s += ["WeakSingleBoson:ffbar2W = on", "24:onMode = off", "24:onPosIfMatch = 13 14"]
    else:
        msg = f"process '{process}' has no Pythia 8 equivalent in the pythia chain"
        raise ValueError(msg)
    lo = cuts.get("m_ll_min", cuts.get("m_lnu_min"))
    hi = cuts.get("m_ll_max", cuts.get("m_lnu_max"))
    if lo is not None:
        s.append(f"PhaseSpace:mHatMin = {lo}")
    if hi is not None:
        s.append(f"PhaseSpace:mHatMax = {hi}")
    return s


def _kin(rows: list[tuple[float, ...]]) -> tuple[np.ndarray, np.ndarray]:
    a = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return a[:, :4], a[:, 4].astype(np.int64)


class PythiaChain:
    """Showered, hadronised events turned into detector-level candidates.

    Arguments:
        settings: Pythia settings of the hard process (:func:`pythia_settings`).
        seed: Pythia's random seed (1..900000000).
        jet_pt_min: anti-kt jets kept above this pt before smearing, GeV.
        parton_level, hadron_level: switch the shower / hadronisation (for benchmarks).
    """

    def __init__(self, settings: list[str], seed: int, jet_pt_min: float = 10.0,
                 parton_level: bool = True, hadron_level: bool = True) -> None:
        try:
            import pythia8mc
        except ModuleNotFoundError as exc:  # pragma: no cover - optional dependency
            msg = "the pythia chain needs pythia8mc and fastjet: pip install 'unfoldmem[pythia]'"
            raise ModuleNotFoundError(msg) from exc
        self.pythia = pythia8mc.Pythia("", False)
        for line in [*settings, "Print:quiet = on", "Random:setSeed = on",
                     f"Random:seed = {seed % 900_000_000 + 1}",
                     f"PartonLevel:all = {'on' if parton_level else 'off'}",
                     f"HadronLevel:all = {'on' if hadron_level else 'off'}"]:
            self.pythia.readString(line)
        if not self.pythia.init():
            msg = f"Pythia 8 failed to initialise with settings {settings}"
            raise RuntimeError(msg)
        self.jet_pt_min = jet_pt_min

    def next_hard(self) -> bool:
        """Generate the next event (hard process, and shower/hadrons if on)."""
        return bool(self.pythia.next())

    def sigma_pb(self) -> tuple[float, float]:
        """Pythia's σ estimate and its error, pb."""
        info = self.pythia.infoPython()
        return info.sigmaGen() * _MB_TO_PB, info.sigmaErr() * _MB_TO_PB

    def event(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[float, ...]]:
        """(hard partons (P,4), their pdg (P,), candidates (C,4), their pdg (C,), (x1,x2,id1,id2)).

        Candidates: anti-kt R=0.4 jets of visible particles (pdg 5 / 4 when within ΔR < 0.4 of
        a hard b / c quark, else 21), isolated final e/μ (ΣpT within ΔR < 0.3 below 20%),
        and final neutrinos (for MET).
        """
        import fastjet

        pr = self.pythia.process
        hard = [(q.e(), q.px(), q.py(), q.pz(), q.id()) for q in pr if q.isFinal()]
        hard_p, hard_id = _kin(hard)
        fin = [(q.e(), q.px(), q.py(), q.pz(), q.id()) for q in self.pythia.event if q.isFinal()]
        p, ids = _kin(fin)
        a = np.abs(ids)
        nu = (a == 12) | (a == 14) | (a == 16)
        pt = np.hypot(p[:, 1], p[:, 2])
        eta = np.arcsinh(np.divide(p[:, 3], pt, out=np.zeros_like(pt), where=pt > 0))
        phi = np.arctan2(p[:, 2], p[:, 1])
        lep = ((a == 11) | (a == 13)) & (pt > 5.0)
        vis = ~nu
        iso = np.zeros(len(p), dtype=bool)
        for i in np.flatnonzero(lep):
            dphi = np.remainder(phi - phi[i] + math.pi, 2 * math.pi) - math.pi
            near = vis & ((eta - eta[i]) ** 2 + dphi**2 < 0.09)
            near[i] = False
            iso[i] = pt[near].sum() < 0.2 * pt[i]
        jet_in = vis & ~iso & (np.abs(eta) < 5.0)
        parts = [fastjet.PseudoJet(*map(float, (q[1], q[2], q[3], q[0]))) for q in p[jet_in]]
        cs = fastjet.ClusterSequence(parts, fastjet.JetDefinition(fastjet.antikt_algorithm, 0.4))
        jets = [(j.e(), j.px(), j.py(), j.pz()) for j in cs.inclusive_jets(self.jet_pt_min)]
        jp = np.array(jets, dtype=np.float64).reshape(-1, 4)
        flav = np.full(len(jp), 21, dtype=np.int64)
        jpt = np.hypot(jp[:, 1], jp[:, 2])
        jeta = np.arcsinh(np.divide(jp[:, 3], jpt, out=np.zeros_like(jpt), where=jpt > 0))
        jphi = np.arctan2(jp[:, 2], jp[:, 1])
        for q, qid in zip(hard_p, hard_id, strict=True):
            if abs(qid) not in (4, 5):
                continue
            qpt = math.hypot(q[1], q[2])
            qeta, qphi = math.asinh(q[3] / qpt), math.atan2(q[2], q[1])
            dphi = np.remainder(jphi - qphi + math.pi, 2 * math.pi) - math.pi
            dr2 = (jeta - qeta) ** 2 + dphi**2
            if len(dr2) and dr2.min() < 0.16:
                flav[int(dr2.argmin())] = max(flav[int(dr2.argmin())] % 21, abs(int(qid)))
        cand = np.concatenate([jp, p[iso], p[nu]])
        cand_id = np.concatenate([flav, ids[iso], ids[nu]])
        info = self.pythia.infoPython()
        return hard_p, hard_id, cand, cand_id, (info.x1(), info.x2(), info.id1(), info.id2())


def _pad(rows: list[np.ndarray], ids: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(r) for r in rows), default=0)
    mom = np.zeros((len(rows), width, 4))
    pdg = np.zeros((len(rows), width), dtype=np.int64)
    for i, (r, d) in enumerate(zip(rows, ids, strict=True)):
        mom[i, : len(r)], pdg[i, : len(d)] = r, d
    return torch.from_numpy(mom), torch.from_numpy(pdg)


def _chunks(chain: PythiaChain, n_events: int, chunk_size: int) -> Iterator[tuple[Any, ...]]:
    done = 0
    while done < n_events:
        hp, hid, cp, cid, ini = [], [], [], [], []
        while len(hp) < min(chunk_size, n_events - done):
            if not chain.next_hard():
                continue
            a, b, c, d, e = chain.event()
            hp.append(a)
            hid.append(b)
            cp.append(c)
            cid.append(d)
            ini.append(e)
        done += len(hp)
        yield hp, hid, cp, cid, np.array(ini, dtype=np.float64)


def jet_multiplicity_table(counts: np.ndarray, max_jets: int = 8) -> str:
    """A text table of the fraction of events with 0, 1, ..., ``max_jets``+ jets."""
    n = max(len(counts), 1)
    rows = ["n_jets  events  fraction"]
    for k in range(max_jets + 1):
        c = int((counts >= k).sum() if k == max_jets else (counts == k).sum())
        label = f"{k}+" if k == max_jets else str(k)
        rows.append(f"{label:>6}  {c:>6}  {c / n:8.3f}")
    return "\n".join(rows)


def generate_file_pythia(
    path: str | Path,
    integrand: HadronicIntegrand,
    detector: DetectorCard,
    selection: SelectionConfig,
    n_events: int,
    seed: int,
    config: GeneratorConfig | None = None,
    theta: dict[str, float] | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    metadata: dict[str, Any] | None = None,
) -> GenerationSummary:
    """Like :func:`~unfoldmem.simulate.generator.generate_file` with the Pythia 8 chain.

    The summary's ``extra["jet_multiplicity"]`` holds the table (also in the file metadata).
    """
    from unfoldmem.io import EventWriter

    config = config or GeneratorConfig()
    full = integrand.full_theta(theta)
    theta_rec = {k: float(full[k]) for k in integrand.process.parameters}
    settings = pythia_settings(integrand.process.name, theta_rec, integrand.sqrt_s,
                               dict(integrand.cuts))
    chain = PythiaChain(settings, seed)
    det = ParametricDetector(detector.without_isr())
    det_rng = torch.Generator().manual_seed(seed * 1_000_003 + 11)
    meta = {"seed": seed, "process": integrand.process.name, "theta": theta_rec,
            "detector": detector.name, "chain": "pythia", "pythia": settings, **(metadata or {})}
    done = n_pass = 0
    n_jets: list[np.ndarray] = []
    with EventWriter(path, overwrite=overwrite, metadata=meta) as writer:
        for hp, hid, cp, cid, ini in _chunks(chain, n_events, min(config.chunk_size, 10_000)):
            mom, pdg = _pad(hp, hid)
            cand, cand_id = _pad(cp, cid)
            out = det.simulate(cand, cand_id, det_rng)
            pass_reco = select(out, selection)
            n = len(hp)
            chunk = PartonChunk(mom, pdg, torch.from_numpy(ini[:, 0]), torch.from_numpy(ini[:, 1]),
                                torch.from_numpy(ini[:, 2]).int(), torch.from_numpy(ini[:, 3]).int(),
                                torch.ones(n, dtype=torch.float64))
            reco, partons = records(chunk, done, theta_rec, out, pass_reco)
            writer.write(detector=reco, partons=partons)
            n_jets.append(out.jets.count.numpy())
            done += n
            n_pass += int(pass_reco.sum())
            if progress is not None:
                progress(done)
        sigma, err = chain.sigma_pb()
        table = jet_multiplicity_table(np.concatenate(n_jets) if n_jets else np.zeros(0))
        writer.metadata.update({"sigma_pb": sigma, "sigma_error_pb": err, "n_pass": n_pass,
                                "jet_multiplicity": table})
    return GenerationSummary(done, n_pass, sigma, err, 1.0, done, 0, False,
                             {"jet_multiplicity": table})
