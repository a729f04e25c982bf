r"""A tiny flow, its data and a simulated kill, shared by the training tests (CPU and CUDA)."""

from __future__ import annotations

import torch

from unfoldmem.cards.model import FlowConfig
from unfoldmem.flows.cinn import CouplingNSF

__all__ = ["KillTraining", "TinyFlow", "gaussian_data"]


class TinyFlow(torch.nn.Module):
    """A 2-d coupling flow small enough to train in a fraction of a second."""

    def __init__(self) -> None:
        super().__init__()
        self.flow = CouplingNSF(2, 0, FlowConfig(transforms=2, hidden=[8], bins=4))

    def nll(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return -self.flow().log_prob(batch["x"])


def gaussian_data(n: int = 300, seed: int = 0) -> dict[str, torch.Tensor]:
    """n seeded points of N((1, 1), diag(1, 0.25)) with unit weights."""
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 2, generator=g) * torch.tensor([1.0, 0.5]) + 1.0,
            "weight": torch.ones(n)}


class KillTraining(Exception):
    """Raised from a training callback to simulate a killed job."""
