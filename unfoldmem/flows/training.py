r"""Weighted maximum-likelihood training with exact checkpoint/resume, early stopping and plots.

The loss of a batch B is the weighted negative log-likelihood

.. math:: L_B = \frac{1}{|B|\,\bar w}\sum_{i\in B} w_i\,\big(-\log q(x_i \mid c_i)\big)
    + \frac{1}{N}\,\mathrm{penalty},

with :math:`\bar w` the mean weight of the whole training set (not of the batch), so that
negative weights (NLO generators) and small batches keep it an unbiased estimate of the weighted
mean NLL. ``penalty`` is a model's KL term (Bayesian flows), divided by the number N of training
events (the ELBO per event).

Any ``nn.Module`` with ``nll(batch) -> (B,)`` (and optionally ``penalty() -> ()``) trains here:
:class:`~unfoldmem.flows.cinn.CINN`, :class:`~unfoldmem.flows.transfer.TransferFlow`, the
Bayesian and ensemble wrappers. ``data`` is the dict of equal-length tensors from their
``prepare`` method, with a ``weight`` entry.

Example:
    >>> from unfoldmem.flows.cinn import CouplingNSF
    >>> class Toy(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.flow = CouplingNSF(2, 0, FlowConfig(transforms=2, hidden=[8]))
    ...     def nll(self, batch):
    ...         return -self.flow().log_prob(batch["x"])
    >>> data = {"x": torch.randn(256, 2), "weight": torch.ones(256)}
    >>> res = train(Toy(), data, TrainingConfig(epochs=2, batch_size=64), quiet=True)
    >>> len(res.history["train"]), res.steps
    (2, 8)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unfoldmem.cards.model import FlowConfig, TrainingConfig
from unfoldmem.io.atomic import atomic_path

__all__ = ["TrainResult", "train", "plot_loss", "weighted_nll", "split_indices"]

_ = FlowConfig  # re-exported for the example


@dataclass
class TrainResult:
    """What :func:`train` did: per-epoch curves, best epoch, speed."""

    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = -1
    best_val: float = math.inf
    steps: int = 0
    epochs_run: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    events_per_second: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON summary."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded random split of range(n) into (train, validation) index tensors."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(val_fraction * n)
    return perm[n_val:], perm[:n_val]


def _batch(data: dict[str, Tensor], idx: Tensor, device: torch.device) -> dict[str, Tensor]:
    return {k: v[idx].to(device) for k, v in data.items()}


def weighted_nll(model: nn.Module, batch: dict[str, Tensor], mean_weight: float) -> Tensor:
    """Weighted mean NLL of a batch, normalised by the training set's mean weight (see module)."""
    nll = model.nll(batch)
    w = batch["weight"].to(nll.dtype)
    return (w * nll).sum() / (nll.shape[0] * mean_weight)


@torch.no_grad()
def _evaluate(model: nn.Module, data: dict[str, Tensor], idx: Tensor, batch_size: int,
              device: torch.device) -> float:
    total, wsum = 0.0, 0.0
    for start in range(0, len(idx), batch_size):
        b = _batch(data, idx[start : start + batch_size], device)
        nll = model.nll(b).double()
        w = b["weight"].double()
        total += float((w * nll).sum())
        wsum += float(w.sum())
    return total / wsum if wsum else math.nan


def _scheduler(opt: torch.optim.Optimizer, config: TrainingConfig, total: int) -> Any:
    sched = torch.optim.lr_scheduler
    if config.schedule == "onecycle":
        return sched.OneCycleLR(opt, max_lr=config.lr, total_steps=max(total, 2))
    if config.schedule == "cosine":
        return sched.CosineAnnealingLR(opt, T_max=max(total, 1))
    return sched.ConstantLR(opt, factor=1.0, total_iters=0)


def _save(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(state, tmp)


def train(
    model: nn.Module,
    data: dict[str, Tensor],
    config: TrainingConfig,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    quiet: bool = False,
    callback: Callable[[int, float], None] | None = None,
    restore_best: bool = True,
) -> TrainResult:
    """Train ``model`` by weighted maximum likelihood; seeded, resumable, with early stopping.

    Arguments:
        model: module with ``nll(batch) -> (B,)``; optionally ``penalty() -> ()``.
        data: equal-length tensors (from the model's ``prepare``), with ``weight`` (n,).
        config: epochs, batch size, AdamW lr / weight decay, schedule, validation fraction,
            patience, seed, checkpoint interval, gradient clipping.
        checkpoint: file written every ``config.checkpoint_every`` steps and at the end.
        resume: continue from ``checkpoint`` if it exists: model, optimizer, scheduler, RNG
            states, data order and position, so the result equals an uninterrupted run.
        device: ``cpu`` or ``cuda``; data stay on the CPU and move per batch.
        quiet: no progress bar.
        callback: called as ``callback(step, loss)`` after every optimizer step.
        restore_best: load the weights of the best validation epoch at the end.

    Returns:
        A :class:`TrainResult`; the model is trained in place (and left in eval mode).
    """
    device = torch.device(device)
    model.to(device)
    n = int(data["weight"].shape[0])
    train_idx, val_idx = split_indices(n, config.val_fraction, config.seed)
    mean_w = float(data["weight"][train_idx].double().mean())
    if not math.isfinite(mean_w) or mean_w <= 0:
        msg = f"the mean training weight is {mean_w}; weighted training needs a positive sum"
        raise ValueError(msg)
    per_epoch = math.ceil(len(train_idx) / config.batch_size)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr,
        weight_decay=config.weight_decay,
    )
    sched = _scheduler(opt, config, config.epochs * per_epoch)
    gen = torch.Generator().manual_seed(config.seed + 1)
    s: dict[str, Any] = {
        "epoch": 0, "batch": 0, "step": 0, "order": None, "loss_sum": 0.0, "count": 0,
        "history": {"train": [], "val": [], "lr": []}, "best_val": math.inf, "best_epoch": -1,
        "best_state": None, "bad_epochs": 0, "stopped": False, "seconds": 0.0, "events": 0,
    }
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, weights_only=True, map_location="cpu")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        gen.set_state(saved["generator"])
        torch.set_rng_state(saved["rng"])
        if device.type == "cuda" and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        s = saved["loop"]
    else:
        torch.manual_seed(config.seed)

    def snapshot() -> None:
        if ckpt is None:
            return
        _save(ckpt, {
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "generator": gen.get_state(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "loop": s,
        })

    penalty = getattr(model, "penalty", None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), disable=quiet, transient=True)
    with progress:
        task = progress.add_task("train", total=config.epochs * per_epoch, completed=s["step"],
                                 info="")
        while s["epoch"] < config.epochs and not s["stopped"]:
            if s["order"] is None:
                s["order"] = train_idx[torch.randperm(len(train_idx), generator=gen)]
            model.train()
            t0 = time.perf_counter()
            while s["batch"] < per_epoch:
                i = s["batch"] * config.batch_size
                b = _batch(data, s["order"][i : i + config.batch_size], device)
                loss = weighted_nll(model, b, mean_w)
                if penalty is not None:
                    loss = loss + penalty() / len(train_idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                opt.step()
                sched.step()
                value = float(loss.detach())
                nb = int(b["weight"].shape[0])
                s["loss_sum"] += value * nb
                s["count"] += nb
                s["events"] += nb
                s["batch"] += 1
                s["step"] += 1
                progress.update(task, advance=1,
                                description=f"epoch {s['epoch'] + 1}/{config.epochs}",
                                info=f"loss {value:.4f}")
                if s["step"] % config.checkpoint_every == 0:
                    s["seconds"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    snapshot()
                if callback is not None:
                    callback(s["step"], value)
            s["seconds"] += time.perf_counter() - t0
            model.eval()
            val = _evaluate(model, data, val_idx, config.batch_size, device) if len(val_idx) else math.nan
            s["history"]["train"].append(s["loss_sum"] / max(s["count"], 1))
            s["history"]["val"].append(val)
            s["history"]["lr"].append(float(opt.param_groups[0]["lr"]))
            monitor = val if len(val_idx) else s["history"]["train"][-1]
            if monitor < s["best_val"]:
                s["best_val"], s["best_epoch"], s["bad_epochs"] = monitor, s["epoch"], 0
                s["best_state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                s["bad_epochs"] += 1
                s["stopped"] = 0 < config.patience <= s["bad_epochs"]
            s.update(epoch=s["epoch"] + 1, batch=0, order=None, loss_sum=0.0, count=0)
        snapshot()
    if restore_best and s["best_state"] is not None:
        model.load_state_dict(s["best_state"])
    model.eval()
    return TrainResult(
        history=s["history"], best_epoch=s["best_epoch"], best_val=s["best_val"], steps=s["step"],
        epochs_run=s["epoch"], stopped_early=bool(s["stopped"]) and s["epoch"] < config.epochs,
        seconds=s["seconds"], events_per_second=s["events"] / max(s["seconds"], 1e-9),
    )


def plot_loss(history: dict[str, list[float]], path: str | Path, title: str = "") -> Path:
    """Plot train/validation loss per epoch to ``path`` (PNG/PDF, Agg backend, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    epochs = range(1, len(history.get("train", [])) + 1)
    ax.plot(epochs, history.get("train", []), label="train")
    if any(math.isfinite(v) for v in history.get("val", [])):
        ax.plot(epochs, history["val"], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weighted NLL")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
