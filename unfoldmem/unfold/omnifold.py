r"""OmniFold unfolding (arXiv:1911.09107): the public entry points, re-exported.

The method lives in one module per concept:

- :mod:`unfoldmem.unfold.omnifold_config`: :class:`OmniFoldConfig`, the card section;
- :mod:`unfoldmem.unfold.omnifold_step`: one classifier step (likelihood ratio, sum rule,
  weight checks);
- :mod:`unfoldmem.unfold.omnifold_iteration`: :func:`omnifold`, the two-step iteration with
  misses and fakes, and its :class:`OmniFoldResult`;
- :mod:`unfoldmem.unfold.omnifold_replicas`: :func:`omnifold_replicas`, the ensemble and
  bootstrap driver.

Import from here (``from unfoldmem.unfold.omnifold import OmniFoldConfig, omnifold``).
"""

from __future__ import annotations

from unfoldmem.unfold.omnifold_config import MIN_EPOCHS as MIN_EPOCHS
from unfoldmem.unfold.omnifold_config import OmniFoldConfig
from unfoldmem.unfold.omnifold_iteration import OmniFoldResult, omnifold
from unfoldmem.unfold.omnifold_replicas import omnifold_replicas
from unfoldmem.unfold.omnifold_step import Trainer as Trainer

__all__ = [
    "OmniFoldConfig",
    "OmniFoldResult",
    "omnifold",
    "omnifold_replicas",
]
