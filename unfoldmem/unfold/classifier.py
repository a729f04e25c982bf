r"""Weighted binary classifiers (MLP, deep set) whose output gives likelihood-ratio weights.

A classifier trained with weighted binary cross-entropy between samples 0 and 1 converges to
:math:`p(x) = f_1(x) / (f_0(x) + f_1(x))` for the class-balanced densities, so
:math:`p/(1-p)` estimates :math:`f_1/f_0`. Used by OmniFold and iterative cINN reweighting.

References:
    K. Cranmer, J. Pavez, G. Louppe, "Approximating likelihood ratios with calibrated
    discriminative classifiers", arXiv:1506.02169.
    M. Zaheer et al., "Deep Sets", arXiv:1703.06114.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from unfoldmem.cards.base import StrictModel

__all__ = [
    "ClassifierConfig",
    "EventFeatures",
    "EventClassifier",
    "TrainedClassifier",
    "train_classifier",
]


class ClassifierConfig(StrictModel):
    """Architecture and training of a weighted binary classifier (a card section).

    Arguments:
        kind: ``mlp`` on fixed features, or ``deepset`` over masked objects + global features.
        hidden: width of hidden layers; layers: number of hidden layers (per sub-network).
        latent: deep-set per-object embedding size.
        epochs, batch_size, lr, weight_decay: Adam training.
        patience: early stopping on the weighted validation loss.
        min_epochs: epochs trained before an epoch may count as the best one: the earlier
            states are no candidates for early stopping (a small remaining difference, below
            the noise of the validation loss, is then still learned; its noise shows in the
            bootstrap).
        val_fraction: fraction of events held out for early stopping.
        p_clip: probabilities are clipped to [p_clip, 1 - p_clip]; the count is reported.
        seed: torch seed of initialisation, split and batching.
        device: torch device.
    """

    kind: Literal["mlp", "deepset"] = "mlp"
    hidden: int = Field(64, gt=0)
    layers: int = Field(3, gt=0)
    latent: int = Field(32, gt=0)
    epochs: int = Field(40, gt=0)
    batch_size: int = Field(1024, gt=0)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(10, ge=1)
    min_epochs: int = Field(1, ge=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    p_clip: float = Field(1e-6, ge=0, lt=0.5)
    seed: int = 0
    device: str = "cpu"


@dataclass
class EventFeatures:
    """Network inputs for n events: global features and optional variable-length objects.

    Attributes:
        globals: (n, n_global) float features (e.g. MET, observables).
        objects: (n, n_max, n_obj) float per-object features, or ``None`` (MLP only).
        mask: (n, n_max) bool, True where an object exists.
    """

    globals: Tensor
    objects: Tensor | None = None
    mask: Tensor | None = None

    def __post_init__(self) -> None:
        self.globals = torch.as_tensor(self.globals, dtype=torch.float32)
        if self.globals.ndim == 1:
            self.globals = self.globals[:, None]
        if (self.objects is None) != (self.mask is None):
            msg = "objects and mask must be given together"
            raise ValueError(msg)
        if self.objects is not None:
            self.objects = torch.as_tensor(self.objects, dtype=torch.float32)
            self.mask = torch.as_tensor(self.mask, dtype=torch.bool)
            if self.objects.shape[:2] != self.mask.shape or len(self.objects) != len(self):
                msg = (
                    f"objects {tuple(self.objects.shape)} / mask {tuple(self.mask.shape)} mismatch"
                )
                raise ValueError(msg)

    def __len__(self) -> int:
        return int(self.globals.shape[0])

    def __getitem__(self, idx: Any) -> EventFeatures:
        if self.objects is None:
            return EventFeatures(self.globals[idx])
        return EventFeatures(self.globals[idx], self.objects[idx], self.mask[idx])  # type: ignore[index]

    @staticmethod
    def cat(parts: list[EventFeatures]) -> EventFeatures:
        """Concatenate along events (object axes padded to the longest)."""
        g = torch.cat([p.globals for p in parts])
        if parts[0].objects is None:
            return EventFeatures(g)
        n_max = max(p.objects.shape[1] for p in parts)  # type: ignore[union-attr]
        objs, masks = [], []
        for p in parts:
            pad = n_max - p.objects.shape[1]  # type: ignore[union-attr]
            objs.append(nn.functional.pad(p.objects, (0, 0, 0, pad)))
            masks.append(nn.functional.pad(p.mask, (0, pad), value=False))
        return EventFeatures(g, torch.cat(objs), torch.cat(masks))

    def to(self, device: str | torch.device) -> EventFeatures:
        if self.objects is None:
            return EventFeatures(self.globals.to(device))
        return EventFeatures(self.globals.to(device), self.objects.to(device), self.mask.to(device))  # type: ignore[union-attr]


def _mlp(n_in: int, hidden: int, layers: int, n_out: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(n_in if i == 0 else hidden, hidden), nn.SiLU()]
    last = nn.Linear(hidden, n_out)
    return nn.Sequential(*mods, last)


def _zero_last(seq: nn.Sequential) -> None:
    # start at logit 0 (p = 1/2, ratio 1): an under-trained network then means "no
    # reweighting" instead of the random structure of its initialisation
    last = seq[-1]
    assert isinstance(last, nn.Linear)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)


@dataclass
class _Standardizer:
    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, x: Tensor, mask: Tensor | None = None) -> _Standardizer:
        if mask is not None:
            x = x[mask]
        x = x.reshape(-1, x.shape[-1]) if x.numel() else torch.zeros(1, x.shape[-1])
        std = x.std(0) if len(x) > 1 else torch.ones(x.shape[-1])
        return cls(x.mean(0), torch.where(std > 0, std, torch.ones_like(std)))

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


class EventClassifier(nn.Module):
    """Logit network: MLP on globals, or deep set :math:`\\rho(\\sum_j \\phi(o_j), g)`.

    Arguments:
        n_global: number of global features; n_object: per-object features (deep set only).
        config: architecture.
    """

    def __init__(self, n_global: int, n_object: int, config: ClassifierConfig) -> None:
        super().__init__()
        self.kind = config.kind
        if self.kind == "deepset":
            self.phi = _mlp(n_object, config.hidden, max(config.layers - 1, 1), config.latent)
            self.rho = _mlp(config.latent + n_global, config.hidden, config.layers, 1)
        else:
            self.net = _mlp(n_global, config.hidden, config.layers, 1)
        _zero_last(self.rho if self.kind == "deepset" else self.net)
        self.g_norm: _Standardizer | None = None
        self.o_norm: _Standardizer | None = None

    def forward(self, f: EventFeatures) -> Tensor:
        """Logits (n,) for standardized-on-the-fly inputs."""
        g = self.g_norm(f.globals) if self.g_norm is not None else f.globals
        if self.kind == "mlp":
            return self.net(g).squeeze(-1)
        if f.objects is None or f.mask is None:
            msg = "the deepset classifier needs objects and mask"
            raise ValueError(msg)
        o = self.o_norm(f.objects) if self.o_norm is not None else f.objects
        emb = self.phi(o) * f.mask[..., None]
        # sum pooling scaled by a fixed constant keeps multiplicity information
        pooled = emb.sum(1) / 10.0
        return self.rho(torch.cat([pooled, g], dim=-1)).squeeze(-1)


@dataclass
class TrainedClassifier:
    """A trained classifier with its training record.

    Attributes:
        model: the logit network (eval mode).
        config: how it was trained.
        class_sums: (Σw_0, Σw_1) of the training samples, for unnormalised ratios.
        history: per-epoch ``train_loss`` and ``val_loss``; ``best_epoch``.
    """

    model: EventClassifier
    config: ClassifierConfig
    class_sums: tuple[float, float]
    history: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def predict_proba(self, f: EventFeatures, batch_size: int = 65536) -> Tensor:
        """p(class 1 | x), (n,) float64, not clipped."""
        dev = self.config.device
        out = [
            torch.sigmoid(self.model(f[i : i + batch_size].to(dev)).double()).cpu()
            for i in range(0, len(f), batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def likelihood_ratio(
        self, f: EventFeatures, *, normalized: bool = True, p: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        """Weights :math:`p/(1-p)`, clipped at ``p_clip``, and a report of the clipping.

        Arguments:
            f: (n) events to weight.
            normalized: ratio of unit-normalised densities :math:`f_1/f_0`; if False, the ratio
                of the weighted (unnormalised) densities, i.e. times :math:`\\Sigma w_1/\\Sigma w_0`.
            p: precomputed probabilities (n,) to use instead of the network (tests, replays).

        Returns:
            (n,) float64 weights and ``{"n_clipped_low", "n_clipped_high", "n_nonfinite_p",
            "p_min", "p_max"}``.
        """
        p = self.predict_proba(f) if p is None else p.to(torch.float64)
        return likelihood_ratio_from_p(p, self.config.p_clip, self.class_sums, normalized)


def likelihood_ratio_from_p(
    p: Tensor, p_clip: float, class_sums: tuple[float, float], normalized: bool = True
) -> tuple[Tensor, dict[str, Any]]:
    """:math:`p/(1-p)` with reported clipping; a NaN probability stays NaN (counted)."""
    lo, hi = p_clip, 1.0 - p_clip
    finite = torch.isfinite(p)
    report = {
        "n_clipped_low": int((p[finite] < lo).sum()) if p_clip > 0 else 0,
        "n_clipped_high": int((p[finite] > hi).sum()) if p_clip > 0 else 0,
        "n_nonfinite_p": int((~finite).sum()),
        "p_min": float(p[finite].min()) if finite.any() else None,
        "p_max": float(p[finite].max()) if finite.any() else None,
    }
    pc = p.clamp(lo, hi) if p_clip > 0 else p
    # without clipping p = 1 gives inf: kept, so the weight diagnostics count it
    w = pc / (1.0 - pc)
    if not normalized:
        w = w * (class_sums[1] / class_sums[0])
    return w, report


def _weighted_bce(logits: Tensor, y: Tensor, w: Tensor) -> Tensor:
    per = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (w * per).sum() / w.sum()


def train_classifier(
    x0: EventFeatures,
    x1: EventFeatures,
    w0: Tensor | None = None,
    w1: Tensor | None = None,
    config: ClassifierConfig | None = None,
) -> TrainedClassifier:
    """Train a classifier sample 0 (label 0) vs sample 1 (label 1) with weighted BCE.

    Each class's weights are rescaled to the same total (balanced classes), so the trained
    :math:`p/(1-p)` estimates the ratio of normalised densities. Negative weights enter the
    loss as they are (the population minimiser is unchanged). Early stopping keeps the
    parameters of the epoch with the lowest weighted validation loss.

    Arguments:
        x0, x1: events of the two samples (n0, n1).
        w0, w1: (n0,), (n1,) event weights; ``None`` means 1 each.
        config: architecture and training; defaults if ``None``.

    Returns:
        :class:`TrainedClassifier`.
    """
    config = config or ClassifierConfig()
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    w0 = torch.ones(len(x0), dtype=torch.float64) if w0 is None else torch.as_tensor(w0).double()
    w1 = torch.ones(len(x1), dtype=torch.float64) if w1 is None else torch.as_tensor(w1).double()
    for name, w, x in (("w0", w0, x0), ("w1", w1, x1)):
        if w.shape != (len(x),):
            msg = f"{name} must have one weight per event, shape ({len(x)},), got {tuple(w.shape)}"
            raise ValueError(msg)
    s0, s1 = float(w0.sum()), float(w1.sum())
    if not (s0 > 0 and s1 > 0 and math.isfinite(s0) and math.isfinite(s1)):
        msg = f"class weight sums must be finite and positive, got {s0} and {s1}"
        raise ValueError(msg)
    n = len(x0) + len(x1)
    x = EventFeatures.cat([x0, x1])
    y = torch.cat([torch.zeros(len(x0)), torch.ones(len(x1))])
    # balanced classes, mean weight 1 so the learning rate does not depend on the weight scale
    w = torch.cat([w0 / s0, w1 / s1]).float() * (n / 2.0)

    n_obj = x.objects.shape[-1] if x.objects is not None else 0
    model = EventClassifier(x.globals.shape[1], n_obj, config)
    model.g_norm = _Standardizer.fit(x.globals)
    if x.objects is not None:
        model.o_norm = _Standardizer.fit(x.objects, x.mask)
    dev = config.device
    model.to(dev)
    x, y, w = x.to(dev), y.to(dev), w.to(dev)

    perm = torch.randperm(n, generator=gen).to(dev)
    n_val = max(int(config.val_fraction * n), 1)
    val, tr = perm[:n_val], perm[n_val:]
    xv, yv, wv = x[val], y[val], w[val]
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # annealing the step size damps the epoch-to-epoch noise of the validation loss, which
    # otherwise hides the small likelihood-ratio corrections of late OmniFold iterations
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    best, best_state, best_epoch, bad = math.inf, copy.deepcopy(model.state_dict()), -1, 0
    hist: dict[str, Any] = {"train_loss": [], "val_loss": []}
    for epoch in range(config.epochs):
        model.train()
        order = tr[torch.randperm(len(tr), generator=gen).to(dev)]
        total = 0.0
        for i in range(0, len(order), config.batch_size):
            b = order[i : i + config.batch_size]
            loss = _weighted_bce(model(x[b]), y[b], w[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        sched.step()
        model.eval()
        with torch.no_grad():
            vloss = float(_weighted_bce(model(xv), yv, wv))
        hist["train_loss"].append(total / max(len(tr), 1))
        hist["val_loss"].append(vloss)
        if epoch + 1 < config.min_epochs:
            continue
        if vloss < best - 1e-6:
            best, best_state, best_epoch, bad = vloss, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    hist["best_epoch"] = best_epoch
    return TrainedClassifier(model, config, (s0, s1), hist)
