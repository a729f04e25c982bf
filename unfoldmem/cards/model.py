r"""Model cards: architecture and training settings of a cINN or transfer-function flow."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from unfoldmem.cards.base import StrictModel

__all__ = ["ModelCard"]


class ModelCard(StrictModel):
    """A network to train; the flows issue fills in the architecture and training keys."""

    kind: Literal["model"] = "model"
    name: str = Field(description="model label")
