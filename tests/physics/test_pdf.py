r"""Tests of unfoldmem.physics.pdf against Pythia 8's own LHAGrid1 reader and AlphaStrong, and
against analytic functions tabulated on synthetic lhagrid1 files."""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from unfoldmem.errors import InputFileError
from unfoldmem.physics import pdf as P

pythia8mc = pytest.importorskip("pythia8mc")  # a dev dependency: always present in `make test`

SET = "NNPDF31_lo_as_0118"


@pytest.fixture(scope="module")
def pythia_pdf() -> object:
    """Pythia 8's LHAGrid1 reading the same file (its own reader and interpolation)."""
    py = pythia8mc.Pythia("", False)
    for line in (
        f"PDF:pSet = LHAGrid1:{SET}_0000.dat",
        "ProcessLevel:all = off",
        "Print:quiet = on",
    ):
        py.readString(line)
    assert py.init()
    return py.getPDFPtr(2212, 1)


def _points(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = 10 ** rng.uniform(-4, math.log10(0.9), n)
    q = 10 ** rng.uniform(math.log10(5.0), 3.0, n)
    return x, q


def _pythia_like(pdf: P.GridPDF, pid: int, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Our value in Pythia's convention: negative values read as 0."""
    return pdf.xfx(pid, x, q).clamp(min=0.0)


def _compare_to_pythia(pythia_pdf: object, n: int, seed: int) -> None:
    x, q = _points(n, seed)
    # Edges: below x_min, below Q_min, above Q_max, on the Q subgrid boundary, near x = 1.
    x = np.concatenate([x, [1e-10, 1e-3, 1e-3, 0.3, 0.95]])
    q = np.concatenate([q, [10.0, 1.0, 2e5, 4.92, 10.0]])
    ours = P.load_pdf(SET, interpolation="pythia")
    xt, qt = torch.tensor(x), torch.tensor(q)
    for pid in (21, 1, 2, 3, 4, 5, -1, -2, -3, -4, -5):
        ref = np.array([pythia_pdf.xf(pid, a, b * b) for a, b in zip(x, q, strict=True)])
        got = _pythia_like(ours, pid, xt, qt).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-14, err_msg=f"pid {pid}")


def test_xfx_matches_pythia_reader(pythia_pdf: object) -> None:
    """x f(x, Q) with interpolation='pythia' vs Pythia 8's LHAGrid1 on the same grid: 205 points,
    x in [1e-4, 0.9], Q in [5, 1000] GeV plus out-of-grid edges, all 11 flavours, to 1e-10."""
    _compare_to_pythia(pythia_pdf, 200, seed=1)


@pytest.mark.slow
def test_xfx_matches_pythia_reader_many(pythia_pdf: object) -> None:
    """As test_xfx_matches_pythia_reader with 20 000 points."""
    _compare_to_pythia(pythia_pdf, 20_000, seed=2)


def test_logcubic_close_to_pythia(pythia_pdf: object) -> None:
    """LHAPDF logcubic vs Pythia's Lagrange interpolation of the same grid (Pythia 8 LHAGrid1):
    the momentum density x Σf agrees to 1e-3, each flavour to 3e-3 of it (the schemes differ most
    at x > 0.8, up to 2.4e-3 in 2e4 points) and the median flavour difference is < 3e-4."""
    x, q = _points(240, seed=3)
    xt, qt = torch.tensor(x), torch.tensor(q)
    ours = P.load_pdf(SET)
    total = ours.xfx_all(xt, qt).sum(-1)
    ref_total = torch.zeros_like(total)
    for pid in (21, 1, 2, 3, 4, 5, -1, -2, -3, -4, -5):
        ref = torch.tensor(
            [pythia_pdf.xf(pid, a, b * b) for a, b in zip(x, q, strict=True)], dtype=torch.float64
        )
        got = _pythia_like(ours, pid, xt, qt)
        diff = (got - ref).abs()
        assert (diff <= 3e-3 * total).all(), pid
        assert (diff / ref.abs().clamp(min=1e-300)).median() < 3e-4, pid
        ref_total += ref
    # Pythia clips the (tiny) negative values of this LO set to zero; compare where none are.
    ok = (ours.xfx_all(xt, qt) >= 0).all(-1)
    torch.testing.assert_close(total[ok], ref_total[ok], rtol=1e-3, atol=0)


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_alphas_matches_pythia(order: int) -> None:
    """αs(Q) vs Pythia 8's AlphaStrong (default thresholds, 6 flavours) for each running order."""
    ref = pythia8mc.AlphaStrong()
    ref.init(0.118, order, 6, False)
    q = np.geomspace(0.3, 5000.0, 300)
    got = P.AlphaS(0.118, order)(torch.tensor(q)).numpy()
    np.testing.assert_allclose(got, [ref.alphaS(v * v) for v in q], rtol=1e-12)


def test_alphas_default_for_bare_pythia_grid() -> None:
    """The bare .dat from the pythia8mc wheel has no .info: αs(m_Z) = 0.118, one-loop running."""
    pdf = P.load_pdf(SET)
    assert pdf.alpha_s.order == 1 and pdf.alpha_s.alpha_s_mz == 0.118
    assert pdf.alphas(91.188).item() == pytest.approx(0.118, rel=1e-12)


@pytest.mark.parametrize("q", [10.0, 100.0, 1000.0])
def test_momentum_sum_rule(q: float) -> None:
    """∫_0^1 dx Σ_f x f(x, Q) = 1 (momentum conservation, DGLAP preserves it) to 1e-2."""
    pdf = P.load_pdf(SET)
    u = torch.linspace(math.log(1e-9), math.log(0.1), 4001, dtype=torch.float64)
    xs = torch.linspace(0.1, 1.0, 4001, dtype=torch.float64)
    low = torch.trapezoid(pdf.xfx_all(torch.exp(u), q).sum(-1) * torch.exp(u), u)
    high = torch.trapezoid(pdf.xfx_all(xs, q).sum(-1), xs)
    assert abs((low + high).item() - 1.0) < 1e-2


def _write_grid(path: Path, fn: object, xs: np.ndarray, qsubs: list[np.ndarray]) -> None:
    flav = [-1, 21, 1, 2]
    lines = ["PdfType: central", "Format: lhagrid1", "---"]
    for qs in qsubs:
        lines += [" ".join(f"{v:.17e}" for v in xs), " ".join(f"{v:.17e}" for v in qs)]
        lines.append(" ".join(map(str, flav)))
        for x in xs:
            for q in qs:
                lines.append(" ".join(f"{fn(x, q) * (k + 1):.17e}" for k in range(len(flav))))
        lines.append("---")
    path.write_text("\n".join(lines) + "\n")


def _quad(x: float | torch.Tensor, q: float | torch.Tensor) -> float | torch.Tensor:
    lib = torch if isinstance(x, torch.Tensor) else np
    lx, lq = lib.log(x), lib.log(q * q)
    return (2.0 + 0.3 * lx + 0.05 * lx**2) * (1.0 + 0.2 * lq - 0.01 * lq**2)


@pytest.fixture
def synthetic_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A two-subgrid set in the LHAPDF layout under LHAPDF_DATA_PATH, with an ipol αs table."""
    xs = np.exp(np.linspace(math.log(1e-5), math.log(0.5), 30))
    qs = np.exp(np.linspace(math.log(2.0), math.log(1000.0), 25))
    d = tmp_path / "TOY"
    d.mkdir()
    _write_grid(d / "TOY_0000.dat", _quad, xs, [qs[:9], qs[8:]])
    # LHAPDF tables repeat the flavour thresholds, where the running has kinks.
    aq = np.concatenate(
        [np.geomspace(a, b, 40) for a, b in pairwise([1.0, 1.5, 4.8, 171.0, 2000.0])]
    )
    avals = P.AlphaS(0.118, 1)(torch.tensor(aq)).tolist()
    for i in (40, 80, 120):  # the upper-side value at each threshold knot
        avals[i] = P.AlphaS(0.118, 1)(torch.tensor(aq[i] * (1 + 1e-15))).item()
    info = [
        "AlphaS_MZ: 0.118",
        "AlphaS_OrderQCD: 0",
        "AlphaS_Type: ipol",
        f"AlphaS_Qs: [{', '.join(f'{v:.12e}' for v in aq)}]",
        f"AlphaS_Vals: [{', '.join(f'{v:.12e}' for v in avals)}]",
    ]
    (d / "TOY.info").write_text("\n".join(info) + "\n")
    monkeypatch.setenv("LHAPDF_DATA_PATH", str(tmp_path))
    P._load_cached.cache_clear()
    return d


def test_logcubic_reproduces_quadratics(synthetic_set: Path) -> None:
    """Hermite splines with central-difference slopes are exact for quadratics in (ln x, ln Q²)
    on a uniform grid away from the edges (Buckley et al., arXiv:1412.7420, sec. 3): the
    interpolant equals the tabulated analytic function, on both Q subgrids, for every flavour."""
    pdf = P.load_pdf("TOY")
    gen = torch.Generator().manual_seed(4)
    lx = torch.empty(300, dtype=torch.float64).uniform_(
        math.log(3e-5), math.log(0.3), generator=gen
    )
    lq = torch.empty(300, dtype=torch.float64).uniform_(
        math.log(2.6), math.log(700.0), generator=gen
    )
    # Stay one knot away from the subgrid edge at Q = qs[8] too.
    edge = math.exp(np.linspace(math.log(2.0), math.log(1000.0), 25)[8])
    keep = (torch.exp(lq) < edge / 1.3) | (torch.exp(lq) > edge * 1.3)
    x, q = torch.exp(lx[keep]), torch.exp(lq[keep])
    for k, pid in enumerate((-1, 21, 1, 2)):
        torch.testing.assert_close(pdf.xfx(pid, x, q), (k + 1) * _quad(x, q), rtol=1e-10, atol=0)
    pids = torch.tensor((-1, 21, 1, 2, 5))[torch.arange(x.numel()) % 5]  # one flavour per event
    factor = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0], dtype=torch.float64)[
        torch.arange(x.numel()) % 5
    ]
    torch.testing.assert_close(pdf.xfx(pids, x, q), factor * _quad(x, q), rtol=1e-10, atol=0)
    assert (pdf.xfx(5, x, q) == 0).all()
    assert torch.equal(pdf.xfx(0, x, q), pdf.xfx(21, x, q))


@pytest.mark.parametrize("q", [1.0, 2.6, 30.0, 700.0, 5000.0])
def test_fixed_scale_flavours_equal_xfx(synthetic_set: Path, q: float) -> None:
    """``xfx_flavours_at_scale`` (the ln Q² step applied once to the knots, as the MEM does at a
    fixed μ_F) equals one ``xfx`` call per flavour to rounding, below, inside and above the
    grid and on both Q subgrids (a flavour absent from the set gives 0), and away from the edges
    it reproduces the tabulated quadratic exactly like ``xfx`` does."""
    pdf = P.load_pdf("TOY")
    gen = torch.Generator().manual_seed(6)
    x = torch.exp(torch.empty(2000, dtype=torch.float64).uniform_(math.log(1e-7), 0.0, generator=gen))
    pids = (-1, 21, 1, 2, 5)
    got = pdf.xfx_flavours_at_scale(pids, x.view(40, 50), q)
    assert got.shape == (5, 40, 50)
    for k, pid in enumerate(pids):
        torch.testing.assert_close(got[k].reshape(-1), pdf.xfx(pid, x, q), rtol=1e-12, atol=1e-14)
    assert (got[4] == 0).all()
    if q == 30.0:
        inner = (x > 3e-5) & (x < 0.3)
        for k in range(4):
            torch.testing.assert_close(got[k].reshape(-1)[inner], (k + 1) * _quad(x[inner], torch.full_like(x[inner], q)),
                                       rtol=1e-10, atol=0)


def test_fixed_scale_flavours_on_the_real_set() -> None:
    """The same on the shipped NNPDF grid at the cards' scales and at its subgrid boundary."""
    pdf = P.load_pdf(SET)
    x = torch.exp(torch.linspace(math.log(1e-9), 0.0, 3001, dtype=torch.float64))
    pids = [-5, -4, -3, -2, -1, 21, 1, 2, 3, 4, 5]
    for q in (1.65, 4.92, 91.1876, 172.5, 1e5):
        torch.testing.assert_close(pdf.xfx_flavours_at_scale(pids, x, q),
                                   pdf.xfx_flavours(pids, x, q), rtol=1e-12, atol=1e-12)


def test_extrapolation_freezes_and_grad(synthetic_set: Path) -> None:
    """Outside the grid the value is that of the nearest grid point; inside, d(xf)/dx from
    autograd matches finite differences (gradcheck)."""
    pdf = P.load_pdf("TOY")
    q = torch.tensor([5.0, 5.0, 1.0, 5000.0], dtype=torch.float64)
    x = torch.tensor([1e-7, 0.9, 1e-3, 1e-3], dtype=torch.float64)
    edge = pdf.xfx(
        2,
        torch.tensor([pdf.x_min, pdf.x_max, 1e-3, 1e-3], dtype=torch.float64),
        torch.tensor([5.0, 5.0, pdf.q_min, pdf.q_max], dtype=torch.float64),
    )
    torch.testing.assert_close(pdf.xfx(2, x, q), edge, rtol=1e-13, atol=0)
    xg = torch.tensor([1e-4, 0.01, 0.2], dtype=torch.float64, requires_grad=True)
    qg = torch.tensor([3.0, 50.0, 400.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: pdf.xfx(21, a, b), (xg, qg))


def test_ipol_alphas_and_info(synthetic_set: Path) -> None:
    """AlphaS_Type ipol: the LHAPDF cubic table interpolation reproduces the one-loop formula it
    was tabulated from (40 knots per flavour range) to 2e-4, exactly at the knots; an explicit alpha_s_mz switches to the analytic running."""
    pdf = P.load_pdf("TOY")
    assert pdf.alpha_s.ipol is not None
    q = torch.tensor(np.geomspace(1.2, 1900.0, 200))
    torch.testing.assert_close(pdf.alphas(q), P.AlphaS(0.118, 1)(q), rtol=2e-4, atol=0)
    knots = torch.tensor(pdf.alpha_s.ipol[0], dtype=torch.float64).sqrt()[1:-1]
    torch.testing.assert_close(pdf.alphas(knots), P.AlphaS(0.118, 1)(knots), rtol=1e-10, atol=0)
    other = P.load_pdf("TOY", alpha_s_mz=0.13)
    assert other.alpha_s.ipol is None
    assert other.alphas(91.188).item() == pytest.approx(0.13, rel=1e-12)


def test_bare_file_layout_cache_and_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bare <name>_0000.dat in a LHAPDF_DATA_PATH dir is found, loads are cached, and a
    missing set raises InputFileError naming every place it looked."""
    xs = np.exp(np.linspace(math.log(1e-4), 0.0, 10))
    _write_grid(tmp_path / "BARE_0000.dat", _quad, xs, [np.geomspace(2.0, 100.0, 3)])
    monkeypatch.setenv("LHAPDF_DATA_PATH", str(tmp_path))
    a, b = P.load_pdf("BARE"), P.load_pdf("BARE")
    assert a is b and a.q_max == pytest.approx(100.0)
    with pytest.raises(InputFileError) as err:
        P.load_pdf("NO_SUCH_SET")
    assert str(tmp_path / "NO_SUCH_SET" / "NO_SUCH_SET_0000.dat") in str(err.value)
    assert "pdfdata" in str(err.value)
