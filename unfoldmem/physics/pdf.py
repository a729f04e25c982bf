r"""Parton densities from LHAPDF6 ``lhagrid1`` files, interpolated log-bicubically in torch.

Interpolation follows LHAPDF 6's default ``logcubic`` interpolator (Buckley et al.,
arXiv:1412.7420): cubic Hermite splines in :math:`\ln x` then :math:`\ln Q^2` on the subgrid that
holds Q², with knot derivatives from finite differences (central inside, one-sided at the edges)
and a bilinear fall-back for subgrids with fewer than four Q knots. Outside the grid the values
are frozen at the nearest grid point (LHAPDF's ``nearest`` extrapolator, also Pythia 8's
``LHAGrid1`` default); flavours not in the set give 0.

αs(Q): an ``AlphaS_Type: ipol`` table in the set's ``.info`` is interpolated as LHAPDF does;
otherwise αs runs from αs(m_Z) with Pythia 8's ``AlphaStrong`` formulas (see :class:`AlphaS`).
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unfoldmem.errors import InputFileError
from unfoldmem.physics.alphas import AlphaS
from unfoldmem.physics.lhagrid import (
    Subgrid,
    eval_fixed_q,
    eval_plan,
    eval_plan_columns,
    eval_subgrid,
    eval_subgrid_pythia,
    fixed_q_columns,
    plan_subgrid,
    read_grid,
    read_info,
)

__all__ = [
    "PIDS",
    "AlphaS",
    "GridPDF",
    "pdf_search_paths",
    "find_pdf",
    "load_pdf",
]

#: Flavour order of :meth:`GridPDF.xfx_all`: -5..-1, gluon (21), 1..5.
PIDS = (-5, -4, -3, -2, -1, 21, 1, 2, 3, 4, 5)

_PLAN_CACHE_MAX_POINTS = 1 << 20


def _lhapdf_subgrid(grids: Sequence[Subgrid], logq2: Tensor) -> Tensor:
    """Index (N,) of the subgrid holding each ln Q² (N,) (inside the grid's range); LHAPDF: a Q
    on a subgrid boundary belongs to the upper subgrid."""
    edges = torch.stack([g.logq2[0] for g in grids])
    return (torch.searchsorted(edges, logq2.contiguous(), right=True) - 1).clamp(0, len(grids) - 1)


class GridPDF:
    """One member of an LHAPDF6 ``lhagrid1`` set: batched :math:`x f(x, Q)` and αs(Q) in torch.

    References:
        A. Buckley et al., "LHAPDF6: parton density access in the LHC precision era",
        Eur. Phys. J. C 75 (2015) 132, arXiv:1412.7420.

    Example:
        >>> pdf = load_pdf("NNPDF31_lo_as_0118")
        >>> x = torch.tensor([1e-3, 0.1], dtype=torch.float64)
        >>> pdf.xfx(21, x, torch.tensor([100.0, 100.0])).shape
        torch.Size([2])
    """

    def __init__(
        self,
        path: Path,
        info: dict[str, object],
        alpha_s: AlphaS,
        interpolation: str = "logcubic",
    ) -> None:
        if interpolation not in ("logcubic", "pythia"):
            msg = f"interpolation must be 'logcubic' (LHAPDF) or 'pythia', got {interpolation!r}"
            raise ValueError(msg)
        self.interpolation = interpolation
        self.path = Path(path)
        self.info = info
        self.alpha_s = alpha_s
        flav, self._subgrids = read_grid(self.path)
        self.flavours = tuple(21 if f == 0 else f for f in flav)
        self.x_min = math.exp(min(g.logx[0].item() for g in self._subgrids))
        self.x_max = math.exp(max(g.logx[-1].item() for g in self._subgrids))
        self.q_min = math.exp(0.5 * self._subgrids[0].logq2[0].item())
        self.q_max = math.exp(0.5 * self._subgrids[-1].logq2[-1].item())
        # Column of each PDG id; a missing flavour points at an appended zero row.
        nflav = len(self.flavours)
        self._col = {
            pid: self.flavours.index(pid) if pid in self.flavours else nflav
            for pid in range(-6, 23)
        }
        self._col[0] = self._col[21]
        for g in self._subgrids:
            g.xf = torch.cat([g.xf, torch.zeros_like(g.xf[:1])])
            g.dxf = torch.cat([g.dxf, torch.zeros_like(g.dxf[:1])])
        self._lut = torch.tensor([self._col.get(p, nflav) for p in range(-6, 23)])
        self._on_device: dict[torch.device, list[Subgrid]] = {torch.device("cpu"): self._subgrids}

    def __repr__(self) -> str:
        return (
            f"GridPDF({self.path.name!r}, x in [{self.x_min:g}, {self.x_max:g}], "
            f"Q in [{self.q_min:g}, {self.q_max:g}] GeV, {self.alpha_s})"
        )

    def _grids(self, device: torch.device) -> list[Subgrid]:
        if device not in self._on_device:
            self._on_device[device] = [g.to(device) for g in self._subgrids]
        return self._on_device[device]

    def _columns(self, pid: int | Tensor, like: Tensor) -> Tensor:
        if isinstance(pid, Tensor):
            idx = (pid.to(torch.long) + 6).clamp(0, 28)
            out = self._lut.to(like.device)[idx]
            bad = (pid < -6) | (pid > 22)
            return torch.where(bad, len(self.flavours), out).expand(like.shape)
        return torch.full(
            like.shape,
            self._col.get(int(pid), len(self.flavours)),
            dtype=torch.long,
            device=like.device,
        )

    def xfx(self, pid: int | Tensor, x: Tensor, q: Tensor | float) -> Tensor:
        r"""Momentum density :math:`x f_{pid}(x, Q)`.

        Arguments:
            pid: PDG id (21 or 0 gluon, ±1..±5 quarks; 22 if the set has a photon), int or an
                integer tensor broadcastable with x.
            x: (...) momentum fractions. q: (...) or float, factorisation scale in GeV.

        Returns:
            (...) float64, differentiable in x and q inside the grid.
        """
        if isinstance(pid, int) and self.interpolation == "logcubic":
            return self._xfx_planned(self._col.get(int(pid), len(self.flavours)), x, q)
        x = torch.as_tensor(x, dtype=torch.float64)
        q = torch.as_tensor(q, dtype=torch.float64, device=x.device)
        if isinstance(pid, Tensor):
            x, q, pid = torch.broadcast_tensors(x, q, pid.to(x.device))
        else:
            x, q = torch.broadcast_tensors(x, q)
        cols = self._columns(pid, x)
        grids = self._grids(x.device)
        logx = torch.log(x.clamp(self.x_min, self.x_max))
        logq2 = torch.log(q * q).clamp(grids[0].logq2[0], grids[-1].logq2[-1])
        out = torch.zeros_like(x)
        flat_x, flat_q, flat_c = logx.reshape(-1), logq2.reshape(-1), cols.reshape(-1)
        flat = out.reshape(-1)
        if self.interpolation == "logcubic":
            which = _lhapdf_subgrid(grids, flat_q)
            evaluate = eval_subgrid
        else:
            # Pythia: a Q on a subgrid boundary belongs to the lower one; x >= x_max gives 0.
            edges = torch.stack([g.logq2[-1] for g in grids])
            which = torch.searchsorted(edges, flat_q.contiguous(), right=False)
            which = which.clamp(0, len(grids) - 1)
            evaluate = eval_subgrid_pythia
        for k, g in enumerate(grids):
            sel = (which == k).nonzero().squeeze(-1)
            if sel.numel():
                val = evaluate(g, flat_c[sel], flat_x[sel], flat_q[sel])
                flat = flat.index_put((sel,), val)
        out = flat.reshape(x.shape)
        if self.interpolation == "pythia":
            out = torch.where(x >= self.x_max, 0.0, out)
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_plan_cache", None)  # per-process scratch, not part of the PDF
        state.pop("_scale_cache", None)
        return state

    def _plan(self, x_arg: Tensor, q_arg: Tensor | float) -> tuple[Any, ...]:
        """Flavour-independent interpolation plan at (x, Q); the last one is reused while the
        same x tensor (unmodified: same object and version) and the same Q are asked for, as the
        hadronic integrand does for its 11 flavours × 2 beams. The last 2 plans are kept (with
        references to their x and Q, so their memory is not reused; ~200 bytes a point, at
        most :data:`_PLAN_CACHE_MAX_POINTS` points); never cached for inputs that require grad."""
        x = torch.as_tensor(x_arg, dtype=torch.float64)
        q = torch.as_tensor(q_arg, dtype=torch.float64, device=x.device)
        key: tuple[Any, ...] | None = None
        if (isinstance(x_arg, Tensor) and isinstance(q_arg, Tensor | float | int)
                and x_arg.numel() <= _PLAN_CACHE_MAX_POINTS
                and not (x.requires_grad or q.requires_grad)
                and not torch.is_inference_mode_enabled()):
            q_ref = q_arg if isinstance(q_arg, Tensor) else None
            q_tag = q_arg._version if isinstance(q_arg, Tensor) else float(q_arg)
            key = (x_arg, x_arg._version, q_ref, q_tag)
            for ck, cplan in getattr(self, "_plan_cache", ()):
                if ck[0] is x_arg and ck[1] == key[1] and ck[2] is q_ref and ck[3] == q_tag:
                    return cplan
        x, q = torch.broadcast_tensors(x, q)
        grids = self._grids(x.device)
        logx = torch.log(x.clamp(self.x_min, self.x_max))
        logq2 = torch.log(q * q).clamp(grids[0].logq2[0], grids[-1].logq2[-1])
        flat_x, flat_q = logx.reshape(-1), logq2.reshape(-1)
        which = _lhapdf_subgrid(grids, flat_q)
        parts = []
        for k, g in enumerate(grids):
            sel = (which == k).nonzero().squeeze(-1)
            if sel.numel():
                lx, lq = flat_x[sel], flat_q[sel]
                sub = plan_subgrid(g, lx, lq) if g.logq2.numel() >= 4 else None
                parts.append((g, sel, lx, lq, sub))
        plan = (x.shape, x.device, parts)
        if key is not None:  # two entries: the integrand alternates between x1 and x2
            self._plan_cache = [(key, plan), *getattr(self, "_plan_cache", [])[:1]]
        return plan

    def _xfx_planned(self, col: int, x: Tensor, q: Tensor | float) -> Tensor:
        shape, device, parts = self._plan(x, q)
        flat = torch.zeros(shape, dtype=torch.float64, device=device).reshape(-1)
        for g, sel, lx, lq, sub in parts:
            if sub is None:
                val = eval_subgrid(g, torch.full_like(sel, col), lx, lq)
            else:
                val = eval_plan(g.xf[col], g.dxf[col], sub)
            flat = flat.index_put((sel,), val)
        return flat.reshape(shape)

    def xfx_flavours(self, pids: Sequence[int], x: Tensor, q: Tensor | float) -> Tensor:
        r""":math:`x f` of several flavours at the same (x, Q): (...) -> (F, ...), row i equal
        (bit for bit) to ``xfx(pids[i], x, q)``; one interpolation plan and one pass over the
        knots serve all F flavours (the MEM's luminosities ask for 11 at each x).

        Arguments:
            pids: F PDG ids (ints, as in :meth:`xfx`). x: (...) momentum fractions.
            q: (...) or float, factorisation scale in GeV.
        """
        if self.interpolation != "logcubic":
            return torch.stack([self.xfx(int(p), x, q) for p in pids])
        cols = [self._col.get(int(p), len(self.flavours)) for p in pids]
        shape, device, parts = self._plan(x, q)
        idx = torch.tensor(cols, dtype=torch.long, device=device)
        flat = torch.zeros((math.prod(shape), len(cols)), dtype=torch.float64, device=device)
        for g, sel, lx, lq, sub in parts:
            if sub is None:
                val = torch.stack([eval_subgrid(g, torch.full_like(sel, c), lx, lq)
                                   for c in cols], -1)
            else:
                val = eval_plan_columns(g.xf.index_select(0, idx).T.contiguous(),
                                        g.dxf.index_select(0, idx).T.contiguous(), sub)
            flat = flat.index_copy(0, sel, val)
        return flat.T.contiguous().reshape(len(cols), *shape)

    def xfx_flavours_at_scale(self, pids: Sequence[int], x: Tensor, q: float) -> Tensor:
        r""":meth:`xfx_flavours` at one fixed scale: (...) -> (F, ...), equal to it to ≤ 3e-13.

        The Hermite step in ln Q² is applied once to the grid's knots and kept per (Q,
        flavours, device) (:func:`~unfoldmem.physics.lhagrid.fixed_q_columns`), so a point costs
        one cubic step in ln x instead of four plus the ln Q² one: the MEM's luminosities at the
        card's fixed μ_F. Falls back to :meth:`xfx_flavours` for the ``pythia`` interpolation
        and for a subgrid with < 4 Q knots.

        Arguments:
            pids: F PDG ids. x: (...) momentum fractions. q: factorisation scale, GeV.
        """
        x = torch.as_tensor(x, dtype=torch.float64)
        key = (float(q), tuple(int(p) for p in pids), x.device)
        cache = self.__dict__.setdefault("_scale_cache", {})
        if key not in cache:
            cache[key] = self._fixed_scale(key[1], float(q), x.device)
        if cache[key] is None:
            return self.xfx_flavours(pids, x, q)
        logx_knots, v, d = cache[key]
        logx = torch.log(x.clamp(self.x_min, self.x_max)).reshape(-1)
        return eval_fixed_q(logx_knots, v, d, logx).T.reshape(len(pids), *x.shape)

    def _fixed_scale(self, pids: tuple[int, ...], q: float,
                     device: torch.device) -> tuple[Tensor, Tensor, Tensor] | None:
        """(ln x knots, values, derivatives) of the subgrid holding Q, or None (see above)."""
        if self.interpolation != "logcubic":
            return None
        grids = self._grids(device)
        logq2 = torch.tensor([math.log(q * q)], dtype=torch.float64, device=device)
        logq2 = logq2.clamp(grids[0].logq2[0], grids[-1].logq2[-1])
        g = grids[int(_lhapdf_subgrid(grids, logq2)[0])]
        if g.logq2.numel() < 4:
            return None
        cols = torch.tensor([self._col.get(p, len(self.flavours)) for p in pids], device=device)
        return (g.logx, *fixed_q_columns(g, float(logq2[0]), cols))

    def xfx_all(self, x: Tensor, q: Tensor | float) -> Tensor:
        """:math:`x f` for all of :data:`PIDS` at once: (...) -> (..., 11)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        pid = torch.tensor(PIDS, device=x.device)
        q = torch.as_tensor(q, dtype=torch.float64, device=x.device)
        x, q = torch.broadcast_tensors(x, q)
        return self.xfx(pid, x[..., None].expand(*x.shape, 11), q[..., None].expand(*x.shape, 11))

    def alphas(self, q: Tensor | float) -> Tensor:
        """Strong coupling αs(Q) at scale q (GeV), same shape as q."""
        return self.alpha_s(torch.as_tensor(q, dtype=torch.float64))


# ---------------------------------------------------------------- locating sets


def pdf_search_paths() -> list[Path]:
    """Directories searched for LHAPDF sets, in order: each entry of ``LHAPDF_DATA_PATH``
    (then the older ``LHAPATH``), then the ``pythia8mc`` wheel's
    ``<sys.prefix>/share/Pythia8/pdfdata`` (and ``$PYTHIA8DATA/../pdfdata``)."""
    dirs: list[Path] = []
    for var in ("LHAPDF_DATA_PATH", "LHAPATH"):
        dirs += [Path(p) for p in os.environ.get(var, "").split(os.pathsep) if p]
    if os.environ.get("PYTHIA8DATA"):
        dirs.append(Path(os.environ["PYTHIA8DATA"]).parent / "pdfdata")
    dirs.append(Path(sys.prefix) / "share" / "Pythia8" / "pdfdata")
    return list(dict.fromkeys(dirs))


def find_pdf(name: str, member: int = 0) -> tuple[Path, Path | None]:
    """Locate ``<name>_<member:04d>.dat`` and its ``.info`` (None if absent).

    Each search directory is tried with the LHAPDF layout ``<dir>/<name>/<name>_0000.dat`` +
    ``<dir>/<name>/<name>.info`` and with a bare ``<dir>/<name>_0000.dat``. ``name`` may also
    be a path to a ``.dat`` file.

    Raises:
        InputFileError: the set is in none of the directories (they are listed).
    """
    direct = Path(name)
    if direct.suffix == ".dat" and direct.is_file():
        info = direct.parent / (direct.name.rsplit("_", 1)[0] + ".info")
        return direct, info if info.is_file() else None
    fname = f"{name}_{member:04d}.dat"
    tried: list[str] = []
    for d in pdf_search_paths():
        for dat, info in (
            (d / name / fname, d / name / f"{name}.info"),
            (d / fname, d / f"{name}.info"),
        ):
            tried.append(str(dat))
            if dat.is_file():
                return dat, info if info.is_file() else None
    msg = (
        f"LHAPDF set member not found; looked for {fname} in: {', '.join(tried)}. "
        "Set LHAPDF_DATA_PATH to the directory holding the set"
    )
    raise InputFileError(name, msg)


def load_pdf(
    name: str = "NNPDF31_lo_as_0118",
    member: int = 0,
    *,
    alpha_s_mz: float | None = None,
    alpha_s_order: int | None = None,
    interpolation: str = "logcubic",
) -> GridPDF:
    """Load (once; cached) one member of an LHAPDF6 set by name, see :func:`find_pdf`.

    Arguments:
        name: set name, e.g. ``"NNPDF31_lo_as_0118"``, or a path to a ``.dat`` file.
        member: member number (0 = central).
        alpha_s_mz: αs(m_Z); default from the ``.info`` (``AlphaS_MZ``), else 0.118.
        alpha_s_order: Pythia ``alphaSorder`` (0 fixed, 1 one loop, 2, 3); default
            ``AlphaS_OrderQCD + 1`` from the ``.info``, else 1 (one-loop running, right for LO
            sets such as Pythia's bare ``NNPDF31_lo_as_0118_0000.dat``, which has no ``.info``).
            With neither argument given, an ``AlphaS_Type: ipol`` table in the ``.info`` is used.
        interpolation: ``"logcubic"`` (LHAPDF 6 default) or ``"pythia"`` (Pythia 8
            ``LHAGrid1``: 4-point Lagrange in ln x, ln Q; 0 for x >= x_max), to reproduce
            Pythia's own numbers in cross-section comparisons.

    Raises:
        InputFileError: the set is not found (the message lists where it looked) or malformed.
    """
    dat, info_path = find_pdf(name, member)
    info = str(info_path) if info_path else None
    return _load_cached(str(dat.resolve()), info, alpha_s_mz, alpha_s_order, interpolation)


@functools.lru_cache(maxsize=16)
def _load_cached(
    dat: str,
    info_path: str | None,
    alpha_s_mz: float | None,
    alpha_s_order: int | None,
    interpolation: str,
) -> GridPDF:
    info = read_info(Path(info_path) if info_path else None)
    ipol = None
    if alpha_s_mz is None and alpha_s_order is None and info.get("AlphaS_Type") == "ipol":
        qs = info.get("AlphaS_Qs", [])
        vals = info.get("AlphaS_Vals", [])
        if isinstance(qs, list) and isinstance(vals, list) and len(qs) == len(vals) > 1:
            ipol = (tuple(float(q) ** 2 for q in qs), tuple(float(v) for v in vals))
    mz_value = alpha_s_mz if alpha_s_mz is not None else info.get("AlphaS_MZ", 0.118)
    order = alpha_s_order if alpha_s_order is not None else info.get("AlphaS_OrderQCD", 0) + 1
    alpha_s = AlphaS(alpha_s_mz=float(mz_value), order=int(order), ipol=ipol)  # type: ignore[arg-type]
    return GridPDF(Path(dat), info, alpha_s, interpolation)
