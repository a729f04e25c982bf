r"""What the MEM proposal channels share: the sampling context of a batch, the channel protocol,
and the discrete assignment draws (probabilities ``prep["pick_logp"]`` adapted by
:func:`~unfoldmem.mem.sampling.importance_sample`, else uniform over the valid assignments)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from unfoldmem.mem.integrand import MEMIntegrand, RecoEvents

__all__ = ["Channel", "SamplingContext", "draw_assignments", "gather_pick", "pick_log_prob"]


@dataclass
class SamplingContext:
    """What a channel sees of a batch of B events."""

    integrand: MEMIntegrand
    events: RecoEvents
    prep: Mapping[str, Tensor]
    kernel_sigma: Tensor  # (B,) GeV

    def subset(self, rows: Tensor) -> SamplingContext:
        """The context of the events ``rows`` (bool (B,) or indices)."""
        prep = {k: v[rows] for k, v in self.prep.items()}
        return SamplingContext(self.integrand, self.events[rows], prep, self.kernel_sigma[rows])


class Channel(Protocol):
    """An importance-sampling channel over z = (pt, eta, phi) of the n outgoing partons."""

    def sample(self, n: int, ctx: SamplingContext, generator: torch.Generator) -> Tensor:
        """(n, B, n_partons, 3) samples."""

    def log_prob(self, z: Tensor, ctx: SamplingContext) -> Tensor:
        """(S, B) log density per unit (pt, eta, phi) of every parton."""

    def sample_joint(self, n: int, ctx: SamplingContext,
                     generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(n, B, n_partons, 3) samples and (n, B) assignments drawn with them."""

    def log_prob_joint(self, z: Tensor, pick: Tensor, ctx: SamplingContext) -> Tensor:
        """(S, B) log density of (z, assignment ``pick``): per unit z, per assignment."""


def pick_log_prob(ctx: SamplingContext) -> Tensor:
    """(B, P) log probability of drawing each assignment: ``prep["pick_logp"]`` where the
    sampler has adapted it, else uniform over the event's valid assignments; −inf for padding."""
    valid = ctx.prep["valid"]
    if "pick_logp" in ctx.prep:
        return torch.where(valid, ctx.prep["pick_logp"], -math.inf)
    lv = -torch.log(valid.sum(-1, keepdim=True).clamp(min=1).double())
    return torch.where(valid, lv, -math.inf)


def draw_assignments(n: int, ctx: SamplingContext, generator: torch.Generator) -> Tensor:
    """(n, B) assignments drawn with :func:`pick_log_prob` (index 0 for events without any)."""
    lp = pick_log_prob(ctx)
    probs = torch.exp(lp) + 1e-300 * torch.isneginf(lp).all(-1, keepdim=True).double()
    return torch.multinomial(probs, n, replacement=True, generator=generator).T


def gather_pick(t: Tensor, pick: Tensor) -> Tensor:
    """t (B, P, n, 3), pick (S, B) → (S, B, n, 3)."""
    s, b = pick.shape
    return torch.gather(t[None].expand(s, *t.shape), 2,
                        pick[..., None, None, None].expand(s, b, 1, *t.shape[2:]))[:, :, 0]
