"""Tests of unfoldmem.flows.training: exact resume, weights, determinism, early stopping, plots."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests._support.training_toy import KillTraining, TinyFlow, gaussian_data
from unfoldmem.cards.model import TrainingConfig
from unfoldmem.flows.training import plot_loss, split_indices, train


class _Gauss(torch.nn.Module):
    """N(mu, sigma²) with learnable mu, log sigma: its weighted MLE is known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.mu = torch.nn.Parameter(torch.zeros(()))
        self.log_sigma = torch.nn.Parameter(torch.zeros(()))

    def nll(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return -torch.distributions.Normal(self.mu, self.log_sigma.exp()).log_prob(batch["x"])


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_kill_and_resume_is_exact(tmp_path: Path, schedule: str) -> None:
    """Killed after step 7 (last checkpoint at 5), resumed: identical weights and loss curve to
    an uninterrupted run. Reference: the uninterrupted run."""
    cfg = TrainingConfig(epochs=3, batch_size=64, checkpoint_every=5, schedule=schedule,
                         patience=0)
    data = gaussian_data()
    torch.manual_seed(3)
    ref = TinyFlow()
    r_ref = train(ref, data, cfg, quiet=True)

    def kill(step: int, loss: float) -> None:
        if step == 7:
            raise KillTraining

    torch.manual_seed(3)
    with pytest.raises(KillTraining):
        train(TinyFlow(), data, cfg, checkpoint=tmp_path / "ckpt.pt", callback=kill, quiet=True)
    torch.manual_seed(99)  # a different init: everything must come from the checkpoint
    resumed = TinyFlow()
    r_res = train(resumed, data, cfg, checkpoint=tmp_path / "ckpt.pt", resume=True, quiet=True)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert r_res.history == r_ref.history
    assert r_res.steps == r_ref.steps == 3 * 4


def test_seeded_runs_identical() -> None:
    """Same seed and init, same result (deterministic on CPU); a different seed differs."""
    cfg = TrainingConfig(epochs=2, batch_size=64, patience=0)
    out = []
    for seed in (1, 1, 2):
        torch.manual_seed(0)
        m = TinyFlow()
        train(m, gaussian_data(), cfg.model_copy(update={"seed": seed}), quiet=True)
        out.append(torch.cat([p.flatten() for p in m.parameters()]))
    assert torch.equal(out[0], out[1]) and not torch.equal(out[0], out[2])


def test_weighted_mle_matches_closed_form() -> None:
    """Weighted fit of a Gaussian = weighted mean/std (closed form), incl. 10% negative weights;
    and weight 2 on half the events (other half dropped) fits like the full sample within the
    statistical error σ/√N."""
    g = torch.Generator().manual_seed(1)
    n = 4000
    x = 0.7 + 1.3 * torch.randn(n, generator=g, dtype=torch.float64)
    w = torch.ones(n, dtype=torch.float64)
    w[torch.randperm(n, generator=g)[: n // 10]] = -0.3
    cfg = TrainingConfig(epochs=60, batch_size=500, lr=0.05, schedule="cosine", val_fraction=0.0,
                         patience=0, weight_decay=0.0)

    def fit(xs: torch.Tensor, ws: torch.Tensor) -> tuple[float, float]:
        m = _Gauss().double()
        train(m, {"x": xs, "weight": ws}, cfg, quiet=True)
        return float(m.mu.detach()), float(m.log_sigma.detach().exp())

    mu, sigma = fit(x, w)
    ref_mu = float((w * x).sum() / w.sum())
    ref_sigma = math.sqrt(float((w * (x - ref_mu) ** 2).sum() / w.sum()))
    assert abs(mu - ref_mu) < 2e-3 and abs(sigma - ref_sigma) < 2e-3

    ones = torch.ones(n, dtype=torch.float64)
    mu_full, s_full = fit(x, ones)
    half = torch.randperm(n, generator=g)[: n // 2]
    mu_half, s_half = fit(x[half], 2 * ones[half])
    err = 1.3 / math.sqrt(n / 2)
    assert abs(mu_half - mu_full) < 4 * err
    assert abs(s_half - s_full) < 4 * err / math.sqrt(2)


def test_early_stopping_and_best_state() -> None:
    """With lr far too high the validation loss stops improving: training stops after `patience`
    epochs and the best epoch's weights are restored."""
    torch.manual_seed(0)
    m = TinyFlow()
    cfg = TrainingConfig(epochs=40, batch_size=32, lr=0.5, schedule="constant", patience=2,
                         max_grad_norm=None)
    res = train(m, gaussian_data(), cfg, quiet=True)
    assert res.stopped_early and res.epochs_run < 40
    assert res.epochs_run - 1 - res.best_epoch == 2
    assert res.best_val == min(res.history["val"])


def test_split_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The split is a seeded partition; quiet training prints nothing; the loss plot is written."""
    tr, va = split_indices(100, 0.2, 7)
    assert len(va) == 20 and sorted(torch.cat([tr, va]).tolist()) == list(range(100))
    assert torch.equal(split_indices(100, 0.2, 7)[1], va)
    torch.manual_seed(0)
    res = train(TinyFlow(), gaussian_data(), TrainingConfig(epochs=2, batch_size=64), quiet=True,
                device="cpu")
    assert capsys.readouterr().err == ""
    assert res.events_per_second > 0 and len(res.history["val"]) == 2
    out = plot_loss(res.history, tmp_path / "loss.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_nonpositive_weight_sum_refused() -> None:
    """A training set whose weights sum to ≤ 0 cannot define a likelihood: a clear error."""
    data = gaussian_data(100)
    data["weight"] = -data["weight"]
    with pytest.raises(ValueError, match="mean training weight"):
        train(TinyFlow(), data, TrainingConfig(epochs=1), quiet=True)
