"""The Python examples in examples/ run as a user runs them and produce physics that can be checked.

Each example runs as a subprocess with tiny settings (as ``.venv/bin/python examples/X.py``)
and writes its result as JSON; the assertions compare it with the truth the example generated.
``examples/my_process.py`` is tested in ``tests/physics/test_processes.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def run_example(name: str, args: list[str], tmp_path) -> dict:
    """Run examples/NAME with ARGS from a scratch directory; return its --json output."""
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, str(REPO / "examples" / name), *args, "--json", str(out)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text())


def test_unfold_my_file(tmp_path):
    """Unfolded m_ll vs the generated truth of the pseudo-data (same Drell–Yan generator).

    Reference: the median of the true parton-level m_ll of the same events. A cINN that
    ignored the correlation between the two leptons would sample them independently and put
    the median of m_ll tens of GeV away from the Z peak; 6 GeV allows for a 2-epoch network.
    """
    r = run_example("unfold_my_file.py", ["-n", "2500", "--n-data", "800", "--epochs", "2",
                                          "--samples", "10", "--replicas", "5"], tmp_path)
    values, stat = r["values"], r["stat"]
    assert r["events"] > 100
    # reco phase space: each event spreads one unit over the bins (samples outside the
    # 60-120 GeV window are lost), so the histogram holds at most the number of events
    assert 0.3 * r["events"] < sum(values) <= r["events"] + 1e-6
    assert all(s >= 0 for s in stat) and sum(stat) > 0
    assert abs(r["median_m_ll_unfolded"] - r["median_m_ll_truth"]) < 6.0


def test_likelihood_scan(tmp_path):
    """MEM fit of m_Z on events generated at a known m_Z (shifted from the card's 91.1876 GeV).

    Reference: the value the sample was generated with; the fit must lie within 4 of its HESSE
    σ (a correct, unbiased likelihood gives |pull| < 4 with probability 0.9999).
    """
    truth = 91.6876
    r = run_example("likelihood_scan.py", ["--truth", str(truth), "--events", "8",
                                           "--n-sim", "1500", "--n-max", "512"], tmp_path)
    assert r["events"] == 8 and r["flagged"] < 8
    assert 0 < r["error"] < 2.0
    assert abs(r["theta_hat"] - truth) < 4 * r["error"]
    lo, hi = r["interval_68"]
    assert lo is not None and hi is not None and lo < r["scan_theta_hat"] < hi


def test_omnifold_example(tmp_path):
    """OmniFold moves the prior's mean rapidity towards the (tilted) truth of the pseudo-data.

    Reference: the generated truth. The prior has ⟨y_ll⟩ ≈ 0 (pp is symmetric); the pseudo-data's
    truth is tilted (default tilt 0.8: ⟨y_ll⟩ ≈ 0.6 in the fiducial region). OmniFold must move ⟨y_ll⟩ up by more than 0.1 (15σ of the
    prior's statistical error) without overshooting the truth by more than 4σ.
    """
    r = run_example("omnifold_example.py", ["-n", "3000", "--n-data", "3000", "--epochs", "8",
                                            "-k", "2"], tmp_path)
    assert abs(r["mean_y_prior"]) < 0.1
    assert r["mean_y_truth"] > 0.5
    assert r["mean_y_omnifold"] - r["mean_y_prior"] > 0.1
    assert r["mean_y_omnifold"] < r["mean_y_truth"] + 4 * r["mean_y_truth_error"]
    assert r["diverged"] == []
