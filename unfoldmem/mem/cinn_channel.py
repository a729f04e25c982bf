r"""The cINN posterior q(p | x) as a proposal channel of the MEM importance sampling.

The "two invertible networks" MEM: the conditional INN trained on (parton, reco) pairs proposes
parton momenta for a reco event, with its exact density; the assignment is drawn independently
(:func:`~unfoldmem.mem.context.pick_log_prob`), so the channel gives the density of z and of the
pair (z, assignment) that the sampler draws (:mod:`unfoldmem.mem.context`).

References:
    | A. Butter et al., SciPost Phys. 15 (2023) 094, https://arxiv.org/abs/2210.00019
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from unfoldmem.flows.encoding import StandardisedEncoding
from unfoldmem.mem.context import SamplingContext, draw_assignments, pick_log_prob

__all__ = ["CINNChannel"]


class CINNChannel:
    """The cINN posterior q(p | x) as a channel (:class:`~unfoldmem.flows.cinn.CINN`).

    Arguments:
        model: trained cINN whose parton objects are the process final state (``order`` maps
            process partons to the model's objects).
        order: (n,) model object index of each process parton (default identity).
    """

    def __init__(self, model: Any, order: Sequence[int] | None = None) -> None:
        if any(isinstance(m, StandardisedEncoding) and m.redraws for m in model.modules()):
            # its samples follow the flow restricted to a region whose probability the flow
            # does not know, so log_prob would not be the density they were drawn from
            msg = ("CINNChannel: this cINN's parton encoding redraws samples outside its "
                   "physical region (encoding.leptonic_chain: top_lepton), so its density is "
                   "not normalised over what it samples; train the MEM proposal with "
                   "leptonic_chain 'resonances'")
            raise ValueError(msg)
        self.model = model.eval()
        self.order = None if order is None else torch.as_tensor(order, dtype=torch.long)

    def _idx(self, n: int) -> Tensor:
        return torch.arange(n) if self.order is None else self.order

    def sample(self, n: int, ctx: SamplingContext, generator: torch.Generator) -> Tensor:
        """(n, B, n_partons, 3); the flow uses torch's global RNG, re-seeded from ``generator``."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            v = self.model.sample_partons(n, ctx.events.objects, ctx.events.mask)
        return v[..., self._idx(ctx.integrand.n), :3].to(torch.float64)

    def sample_joint(self, n: int, ctx: SamplingContext,
                     generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """z from the cINN and, independently, an assignment from :func:`pick_log_prob`."""
        z = self.sample(n, ctx, generator)
        return z, draw_assignments(n, ctx, generator)

    def log_prob_joint(self, z: Tensor, pick: Tensor, ctx: SamplingContext) -> Tensor:
        """(S, B) log q(z | x) + log π(pick)."""
        lpi = torch.gather(pick_log_prob(ctx)[None].expand(len(pick), -1, -1), -1,
                           pick[..., None])[..., 0]
        return self.log_prob(z, ctx) + lpi

    def log_prob(self, z: Tensor, ctx: SamplingContext) -> Tensor:
        """(S, B) log q(z | x) per unit (pt, eta, phi)."""
        s, b, n, _ = z.shape
        enc = self.model.parton_encoding
        n_model = enc.n_objects
        v = enc.fixed_mass.to(torch.float64).expand(s, b, n_model)[..., None].repeat(1, 1, 1, 4)
        v[..., self._idx(n), :3] = z
        v[..., 3] = enc.fixed_mass.to(torch.float64)
        m = self.model
        with torch.no_grad():
            if all(hasattr(m, a) for a in ("context", "flow", "encode_partons")):
                # the condition network (attention included) runs once per event, not per sample
                c = m.context(ctx.events.objects, ctx.events.mask)
                x, ladj = m.encode_partons(v.reshape(s * b, n_model, 4))
                c = c.expand(s, *c.shape).reshape(s * b, -1)
                lq = (m.flow(c).log_prob(x).double() + ladj).view(s, b)
            else:
                obj = ctx.events.objects.expand(s, *ctx.events.objects.shape).reshape(s * b, -1, 7)
                msk = ctx.events.mask.expand(s, *ctx.events.mask.shape).reshape(s * b, -1)
                lq = m.log_prob_partons(v.reshape(s * b, n_model, 4), obj, msk).view(s, b)
        return torch.where(torch.isnan(lq), -math.inf, lq.double())
