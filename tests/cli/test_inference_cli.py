"""`unfoldmem scan|fit|posterior|calibrate` run as a user runs them, on a Gaussian toy file."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from unfoldmem.cli import app
from unfoldmem.errors import CardError, InputFileError, OutputExistsError
from unfoldmem.inference.calibration import GaussianToy, toy_likelihoods
from unfoldmem.inference.likelihood_file import write_likelihoods

S, N = 10.0, 2000


@pytest.fixture(scope="module")
def ll(tmp_path_factory) -> tuple:
    """A toy ll.root: N Gaussian measurements of m_t (resolution 10 GeV), 3 events flagged."""
    toy = GaussianToy.sample(173.0, S, N, seed=1)
    lik = toy_likelihoods(toy, {"m_t": np.linspace(171.0, 175.0, 17)})
    lik.flag[:3] = 1
    path = write_likelihoods(tmp_path_factory.mktemp("ll") / "ll.root", lik)
    return path, float(toy.x[3:].mean()), S / math.sqrt(N - 3)


def _run(*args: str):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def test_scan_writes_json_and_plot(ll, tmp_path) -> None:
    """scan: μ̂ = x̄ and the 68 % interval x̄ ± s/√n (Gaussian, exact); flagged events reported."""
    path, xbar, sig = ll
    res = _run("scan", path, "--param", "m_t", "-o", tmp_path / "out")
    assert "excluded 3 of 2000 events" in res.output and "68.3% CL interval" in res.output
    data = json.loads((tmp_path / "out" / "scan.json").read_text())
    assert data["theta_hat"] == pytest.approx(xbar, abs=1e-7)
    assert data["sigma"] == pytest.approx(sig, rel=1e-6)
    assert data["n_flagged"] == 3
    assert (tmp_path / "out" / "scan.png").read_bytes()[:4] == b"\x89PNG"


def test_fit_prints_hesse_and_minos(ll, tmp_path) -> None:
    """fit: HESSE and MINOS errors equal s/√n (parabolic lnL)."""
    path, xbar, sig = ll
    res = _run("fit", path, "-o", tmp_path / "fit")
    assert f"m_t = {xbar:.6g} ± {sig:.3g} (HESSE)" in res.output
    data = json.loads((tmp_path / "fit" / "fit.json").read_text())
    lo, hi = data["params"]["m_t"]["minos"]["0.6827"]
    assert -lo == pytest.approx(sig, rel=1e-3) and hi == pytest.approx(sig, rel=1e-3)
    assert (tmp_path / "fit" / "fit.png").exists()


def test_posterior_small(ll, tmp_path) -> None:
    """posterior with a flat prior: mean x̄ within 4 MC errors of the NUTS estimate."""
    path, xbar, sig = ll
    _run("-q", "posterior", path, "--prior", "m_t=uniform:171:175", "--samples", "300",
         "--warmup", "150", "--chains", "1", "-o", tmp_path / "post")
    summ = json.loads((tmp_path / "post" / "posterior.json").read_text())["summary"]["m_t"]
    assert abs(summ["mean"] - xbar) < 4 * sig / math.sqrt(summ["ess"])
    assert (tmp_path / "post" / "posterior.png").exists()


def test_calibrate_small(ll, tmp_path) -> None:
    """calibrate: 30 pseudo-experiments, pull width within 4/√(2·29) of 1."""
    path, _, _ = ll
    res = _run("calibrate", path, "--true", "m_t=173", "--n-pseudo", "30", "--n-events", "100",
               "-o", tmp_path / "cal")
    assert "30 good pseudo-experiments" in res.output
    summ = json.loads((tmp_path / "cal" / "calibration.json").read_text())["summary"]["m_t"]
    assert abs(summ["pull_width"] - 1) < 4 / math.sqrt(2 * 29)
    assert (tmp_path / "cal" / "calibration.png").exists()


def test_user_errors(ll, tmp_path) -> None:
    """Mistakes raise the project's user errors naming the problem (the CLI turns them into one
    line and exit code 2, checked once below as a subprocess)."""
    path, _, _ = ll
    out = tmp_path / "o"
    out.mkdir()
    cases = [
        (["scan", str(path), "-p", "m_top"], InputFileError, "no parameter 'm_top'"),
        (["scan", str(path), "-o", str(out)], OutputExistsError, "output exists"),
        (["calibrate", str(path), "--true", "m_t:173"], CardError, "--true"),
        (["posterior", str(path), "--prior", "m_t=uniform:160:180"], CardError, "leaves the θ grid"),
        (["fit", str(path), "--method", "newton"], CardError, "expected minuit or lbfgs"),
    ]
    for args, cls, msg in cases:
        res = CliRunner().invoke(app, args)
        assert isinstance(res.exception, cls) and msg in str(res.exception), (args, res.exception)


def test_missing_file_exit_2(tmp_path) -> None:
    """A missing ll.root: one line on stderr, exit code 2 (subprocess, as a user runs it)."""
    proc = subprocess.run([sys.executable, "-m", "unfoldmem", "scan", str(tmp_path / "no.root")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and "no.root: file does not exist" in proc.stderr
