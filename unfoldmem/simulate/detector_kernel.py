r"""The parametric detector's sampler: one compiled (numba) pass per event that smears, applies
efficiencies and acceptance, adds ISR jets and MET and pt-sorts the objects.

The physics is :class:`~unfoldmem.simulate.detector.ParametricDetector`'s (docs/simulation.md);
its exact densities (torch) are the reference this sampler is tested against. The parton
η = asinh(p_z/p_T) (clamped to ±700) and φ = atan2(p_y, p_x) mirror
:mod:`unfoldmem.physics.lorentz`, which stays the reference for those conversions.

Random numbers: event ``i`` of a call draws from its own SplitMix64 stream, started at the
``i + 1``-th output of SplitMix64 seeded with the call's 64-bit key, so an event's numbers do not
depend on the block or thread it is in. All streams are pieces of one SplitMix64 sequence
(period 2⁶⁴, passes BigCrush) beginning at pseudo-random positions; for 10⁶ events of ~50 draws
the chance that two pieces overlap is ~10⁻⁵. Normals: 256-layer ziggurat with separate bits for
the layer, the sign and the 52-bit magnitude (as NumPy's ``Generator.standard_normal``).
The random-number code lives in this module, not its own, because numba's disk cache of a
function is invalidated only by changes to the function's own file.

References:
    G. L. Steele, D. Lea, C. H. Flood, "Fast splittable pseudorandom number generators",
    OOPSLA 2014, doi:10.1145/2660193.2660195 (SplitMix64).
    G. Marsaglia, W. W. Tsang, J. Stat. Softw. 5 (2000) 8, doi:10.18637/jss.v005.i08 (ziggurat);
    J. A. Doornik, "An improved ziggurat method to generate normal random samples" (2005).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
import numpy as np

from unfoldmem.simulate.detector_tables import SIGMA_FLOOR, DetectorTables

__all__ = ["normals", "simulate_arrays", "uniforms"]


def _jit(fn: Callable[..., Any]) -> Any:
    """``numba.njit(nogil=True)``, cached on disk where numba finds a writable cache directory
    (``__pycache__``, ``NUMBA_CACHE_DIR`` or ~/.cache); compiling costs seconds per process."""
    try:
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError:  # no writable cache location: compile in every process
        return numba.njit(nogil=True, cache=False)(fn)


_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio increment of SplitMix64
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S8, _S9, _S11 = np.uint64(8), np.uint64(9), np.uint64(11)
_S27, _S30, _S31 = np.uint64(27), np.uint64(30), np.uint64(31)
_BYTE, _ONE = np.uint64(0xFF), np.uint64(1)
_MAG = np.uint64((1 << 52) - 1)
_TWO_M53 = 2.0**-53


def _tables(layers: int = 256, r: float = 3.6541528853610088, v: float = 4.9286732339746519e-3
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ziggurat tables (ki, wi, fi) for N(0, 1): layer 0 is the base strip with the tail beyond
    ``r``; layers 255 … 1 go up from it, each of area ``v`` (Marsaglia & Tsang, Sec. 2)."""
    x = np.zeros(layers)  # x[k]: right edge of layer k; x[0] = 0 is the top of the curve
    x[-1] = r
    for k in range(layers - 2, 0, -1):
        x[k] = math.sqrt(-2.0 * math.log(math.exp(-0.5 * x[k + 1] ** 2) + v / x[k + 1]))
    scale = 2.0**52
    ki = np.zeros(layers, dtype=np.int64)  # < 2**52: int64 compares are cheaper in numba
    ki[1:] = np.round(x[:-1] / x[1:] * scale)
    ki[0] = round(r * math.exp(-0.5 * r * r) / v * scale)
    wi = x / scale
    wi[0] = v / math.exp(-0.5 * r * r) / scale
    return ki, wi, np.exp(-0.5 * x * x)


_KI, _WI, _FI = _tables()
_SIGN = np.array([1.0, -1.0])
_R = 3.6541528853610088
_INV_R = 1.0 / _R


@_jit
def _mix(z: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@_jit
def stream(key: np.uint64, i: int) -> np.uint64:  # pragma: no cover - compiled
    """State of event ``i``'s stream for a call keyed by ``key`` (uint64)."""
    return _mix(key + np.uint64(i + 1) * _GAMMA)


@_jit
def _next(s: np.uint64) -> tuple[np.uint64, np.uint64]:  # pragma: no cover - compiled
    s = s + _GAMMA
    return s, _mix(s)


@_jit
def uniform(s: np.uint64) -> tuple[np.uint64, float]:  # pragma: no cover - compiled
    """(new state, u ~ U[0, 1)) with 53 random bits."""
    s, z = _next(s)
    return s, float(z >> _S11) * _TWO_M53


@_jit
def _normal_rare(s: np.uint64, idx: int, x: float) -> tuple[np.uint64, bool, float]:  # pragma: no cover
    """The ziggurat's slow 1 %: the tail beyond r for layer 0 (Marsaglia 1964), else the wedge."""
    if idx == 0:
        while True:
            s, u1 = uniform(s)
            s, u2 = uniform(s)
            xx = -_INV_R * math.log1p(-u1)
            if -2.0 * math.log1p(-u2) > xx * xx:
                return s, True, (-(_R + xx) if x < 0 else _R + xx)
    s, u = uniform(s)
    return s, (_FI[idx - 1] - _FI[idx]) * u + _FI[idx] < math.exp(-0.5 * x * x), x


@_jit
def normal(s: np.uint64) -> tuple[np.uint64, float]:  # pragma: no cover - compiled
    """(new state, z ~ N(0, 1)): 256-layer ziggurat, one 64-bit draw 99 % of the time."""
    while True:
        s, r = _next(s)
        idx = np.int64(r & _BYTE)
        rabs = np.int64((r >> _S9) & _MAG)
        # the sign by table lookup: a branch on a random bit costs more than the whole draw
        x = rabs * _WI[idx] * _SIGN[np.int64((r >> _S8) & _ONE)]
        if rabs < _KI[idx]:
            return s, x
        s, ok, x = _normal_rare(s, idx, x)
        if ok:
            return s, x


@_jit
def uniforms(key: np.uint64, i: int, n: int) -> np.ndarray:  # pragma: no cover - compiled
    """The first ``n`` uniforms of event ``i``'s stream, (n,) float64 (for tests)."""
    s = stream(key, i)
    out = np.empty(n)
    for k in range(n):
        s, out[k] = uniform(s)
    return out


@_jit
def normals(key: np.uint64, i: int, n: int) -> np.ndarray:  # pragma: no cover - compiled
    """The first ``n`` normals of event ``i``'s stream, (n,) float64 (for tests)."""
    s = stream(key, i)
    out = np.empty(n)
    for k in range(n):
        s, out[k] = normal(s)
    return out


_ETA_CLAMP = 50.0  # cosh of smeared eta is evaluated inside this; acceptance is far below
_ETA_MAX = 700.0  # lorentz.ETA_MAX
_E_MAX = 1e100  # GeV; partons above are degenerate
_MIN_PER_THREAD = 20_000  # below this a thread costs more than it saves


@_jit
def _widths(pdg: np.ndarray, kind_lut: np.ndarray) -> tuple[int, int, int]:  # pragma: no cover
    """Most jet, muon and electron partons in one event."""
    wj = wm = we = 0
    for i in range(pdg.shape[0]):
        nj = nm = ne = 0
        for j in range(pdg.shape[1]):
            a = abs(pdg[i, j])
            kind = kind_lut[a] if a < 26 else 0
            nj += kind == 1
            nm += kind == 2
            ne += kind == 3
        wj, wm, we = max(wj, nj), max(wm, nm), max(we, ne)
    return wj, wm, we


@_jit
def _fine_bin(abs_eta: float, edges: np.ndarray) -> int:  # pragma: no cover - compiled
    """Number of edges strictly below |η|: regions are (e_i, e_i+1] (torch.bucketize)."""
    k = 0
    while k < edges.shape[0] and edges[k] < abs_eta:
        k += 1
    return k


@_jit
def _wrap(phi: float) -> float:  # pragma: no cover - compiled
    """φ in [-π, π) (torch.remainder(φ + π, 2π) - π); smeared φ is almost always one step off."""
    if not abs(phi) < 64.0:  # far off, inf or NaN: the general (slower) form
        return (phi + math.pi) % (2.0 * math.pi) - math.pi
    while phi >= math.pi:
        phi -= 2.0 * math.pi
    while phi < -math.pi:
        phi += 2.0 * math.pi
    return phi


@_jit
def _emit(fields: np.ndarray, pidx: np.ndarray, mask: np.ndarray, i: int, cand: np.ndarray,
          cidx: np.ndarray, m: int, order: np.ndarray) -> None:  # pragma: no cover - compiled
    """Write the ``m`` candidates (pt first) of event ``i`` pt-descending (stable), then padding."""
    for a in range(m):
        o = a
        v = cand[o, 0]
        b = a - 1
        while b >= 0 and cand[order[b], 0] < v:
            order[b + 1] = order[b]
            b -= 1
        order[b + 1] = o
    for a in range(m):
        o = order[a]
        for f in range(5):
            fields[f, i, a] = cand[o, f]
        pidx[i, a] = cidx[o]
        mask[i, a] = True
    for a in range(m, mask.shape[1]):
        for f in range(5):
            fields[f, i, a] = 0.0
        pidx[i, a] = -1
        mask[i, a] = False


@_jit
def _events(i0, i1, key, mom, pdg, kind_lut, flav_lut, tab, edges, btag, pt_min, eta_max,
            lep_mass, isr_cum, scalars, jf, jp, jm, mf, mp, mm, ef, ep, em, met_pt, met_phi,
            met_mean, met_sigma, n_isr, passed):  # pragma: no cover - compiled
    """Events i0 ≤ i < i1 into the output arrays (see :func:`simulate_arrays`)."""
    n_p = pdg.shape[1]
    n_fine = edges.shape[0] + 1
    k_isr = isr_cum.shape[0] - 1
    isr_pt_min, isr_expo, isr_eta_max, noise2, sumet2 = (
        scalars[0], scalars[1], scalars[2], scalars[3], scalars[4])
    cj = np.empty((n_p + k_isr, 5))
    cm = np.empty((n_p, 5))
    ce = np.empty((n_p, 5))
    ij = np.empty(n_p + k_isr, dtype=np.int64)
    im = np.empty(n_p, dtype=np.int64)
    ie = np.empty(n_p, dtype=np.int64)
    order = np.empty(n_p + k_isr, dtype=np.int64)
    for i in range(i0, i1):
        s = stream(key, i)
        nj = nm = ne = 0
        mx = my = sum_pt = 0.0
        for j in range(n_p):
            a = abs(pdg[i, j])
            kind = kind_lut[a] if a < 26 else 0
            if kind == 0:
                continue
            px, py = mom[i, j, 1], mom[i, j, 2]
            if kind == 4:  # neutrinos go straight into MET
                mx += px
                my += py
                continue
            e, pz = mom[i, j, 0], mom[i, j, 3]
            r2 = px * px + py * py
            pt = math.sqrt(r2) if r2 > 0 else 0.0
            sum_pt += pt
            p2 = r2 + pz * pz
            pabs = math.sqrt(p2) if p2 > 0 else 0.0
            if not (e > 0 and pt > 0 and pabs <= e * (1 + 1e-9) and e < _E_MAX):
                continue  # degenerate: never reconstructed
            # asinh(pz/pt) = ±log((|pz| + |p|)/pt): one log, 4x cheaper than libm's asinh
            eta = min(math.log((abs(pz) + pabs) / pt), _ETA_MAX)
            eta = -eta if pz < 0 else eta
            fine = _fine_bin(abs(eta), edges)
            row = kind * n_fine + fine
            s, u = uniform(s)
            if not u < tab[row, 6]:  # inefficiency: decided first, it needs no smearing
                continue
            jet = kind == 1
            x = e if jet else pt
            sigma = max(math.sqrt(x * tab[row, 0] + tab[row, 1]
                                  + x * x * (tab[row, 2] + tab[row, 3] * x * x)), SIGMA_FLOOR)
            s, z0 = normal(s)
            s, z1 = normal(s)
            x_r = x + sigma * z0
            eta_r = eta + tab[row, 4] * z1
            if jet:
                beta = min(pabs / e, 1.0)
                t = math.exp(min(abs(eta_r), _ETA_CLAMP))
                pt_r = x_r * beta / (0.5 * (t + 1.0 / t))  # cosh, one exp
            else:
                pt_r = x_r
            if not (pt_r > pt_min[kind] and abs(eta_r) < eta_max[kind]):
                continue
            s, z2 = normal(s)
            phi_r = _wrap(math.atan2(py, px) + tab[row, 5] * z2)
            mx += px - pt_r * math.cos(phi_r)
            my += py - pt_r * math.sin(phi_r)
            if jet:
                s, u = uniform(s)
                c, k = cj, nj
                ij[nj] = j
                nj += 1
                m2 = e * e - p2
                c[k, 3] = math.sqrt(m2) * x_r / e if m2 > 0 else 0.0
                c[k, 4] = 1.0 if u < btag[(flav_lut[a] if a < 26 else 0) * n_fine + fine] else 0.0
            else:
                if kind == 2:
                    c, k = cm, nm
                    im[nm] = j
                    nm += 1
                else:
                    c, k = ce, ne
                    ie[ne] = j
                    ne += 1
                c[k, 3] = lep_mass[kind]
                c[k, 4] = -1.0 if pdg[i, j] > 0 else 1.0
            c[k, 0], c[k, 1], c[k, 2] = pt_r, eta_r, phi_r

        s, u = uniform(s)
        k = 0
        while k < k_isr and isr_cum[k] <= u:
            k += 1
        n_isr[i] = k
        for _ in range(k):
            s, r0 = uniform(s)
            s, r1 = uniform(s)
            s, r2_ = uniform(s)
            s, r3 = uniform(s)
            eta = (2 * r1 - 1) * isr_eta_max
            cj[nj, 0] = isr_pt_min * max(1 - r0, 1e-12) ** isr_expo
            cj[nj, 1] = eta
            cj[nj, 2] = (2 * r2_ - 1) * math.pi
            cj[nj, 3] = 0.0
            cj[nj, 4] = 1.0 if r3 < btag[_fine_bin(abs(eta), edges)] else 0.0  # light row
            ij[nj] = -1
            nj += 1

        sigma = max(math.sqrt(noise2 + sumet2 * sum_pt), SIGMA_FLOOR)
        s, zx = normal(s)
        s, zy = normal(s)
        met_mean[i, 0], met_mean[i, 1], met_sigma[i] = mx, my, sigma
        mx += sigma * zx
        my += sigma * zy
        r2 = mx * mx + my * my
        met_pt[i] = math.sqrt(r2) if r2 > 0 else 0.0
        met_phi[i] = math.atan2(my, mx)
        passed[i] = nj + nm + ne > 0
        _emit(jf, jp, jm, i, cj, ij, nj, order)
        _emit(mf, mp, mm, i, cm, im, nm, order)
        _emit(ef, ep, em, i, ce, ie, ne, order)


def simulate_arrays(mom: np.ndarray, pdg: np.ndarray, t: DetectorTables, key: int,
                    threads: int = 1) -> tuple[np.ndarray, ...]:
    """Run the detector on n events.

    Arguments:
        mom: (n, P, 4) C-contiguous float64 (E, px, py, pz), GeV; pdg: (n, P) C-contiguous int64.
        t: the card's :class:`~unfoldmem.simulate.detector_tables.DetectorTables`.
        key: 64-bit key; event i draws from the stream (key, i) of
            this module, so the result does not depend on ``threads``.
        threads: threads to split the events over (the kernel releases the GIL).

    Returns:
        jet fields (5, n, kj) (pt, eta, phi, mass, tag), jet parton index (n, kj), jet mask
        (n, kj), the same for muons (km) and electrons (ke), met_pt (n,), met_phi (n,),
        met_mean (n, 2), met_sigma (n,), n_isr (n,) int64, passed (n,) bool.
    """
    n = pdg.shape[0]
    wj, wm, we = _widths(pdg, t.kind_lut)
    blocks = []
    for k in (wj + t.k_isr, wm, we):
        k = max(k, 1)
        blocks += [np.empty((5, n, k)), np.empty((n, k), np.int64), np.empty((n, k), np.bool_)]
    rest = [np.empty(n), np.empty(n), np.empty((n, 2)), np.empty(n), np.empty(n, np.int64),
            np.empty(n, np.bool_)]
    args = (np.uint64(key % 2**64), mom, pdg, t.kind_lut, t.flav_lut, t.tab, t.edges, t.btag,
            t.pt_min, t.eta_max, t.lep_mass, t.isr_cum, t.scalars, *blocks, *rest)
    threads = max(1, min(threads, n // _MIN_PER_THREAD))
    with warnings.catch_warnings():
        # a cache that cannot be written (another process, another version) only costs a compile
        warnings.filterwarnings("ignore", "Cannot cache compiled function", numba.NumbaWarning)
        if threads == 1:
            _events(0, n, *args)
        else:
            cuts = [n * k // threads for k in range(threads + 1)]
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda k: _events(cuts[k], cuts[k + 1], *args), range(threads)))
    return (*blocks, *rest)
