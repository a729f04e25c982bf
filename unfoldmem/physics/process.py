r"""The hard-process protocol and the process registry.

A process is an object with

* ``name``; ``channels``: incoming PDG pairs (beam 1, beam 2); ``final_state``: outgoing PDG ids;
* ``parameters``: the theory parameters θ with defaults and units (:class:`Parameter`);
* ``matrix_element_squared(p_in, p_out, theta, channel)``: |M|² summed over final and averaged
  over initial helicities and colours, (N,) float64, differentiable in θ;
* ``phase_space(u, shat, theta)``: final-state momenta in the partonic rest frame from
  (N, dim) unit numbers, with the weight of :math:`d\Phi_n` (2π factors included);
* ``shat_mapping(theta, cuts)``: the :math:`\hat s` range and the resonance (if any) the hadronic
  integrand maps :math:`\hat s` with.

Subclass :class:`Process` (which supplies θ handling and a per-channel loop) and decorate the
class with :func:`register_process`; ``get_process(name)`` then builds it. See
``docs/processes.md`` and ``examples/my_process.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from unfoldmem.physics.phase_space import two_body_decay

__all__ = [
    "Parameter",
    "ShatMapping",
    "Process",
    "register_process",
    "get_process",
    "available_processes",
    "incoming_momenta",
    "two_body_final_state",
]


@dataclass(frozen=True)
class Parameter:
    """A theory parameter θ_i: default value, unit and meaning."""

    default: float
    unit: str = "GeV"
    description: str = ""


@dataclass(frozen=True)
class ShatMapping:
    r"""How the hadronic integrand samples :math:`\hat s` (GeV²).

    ``resonance = (M, Γ)`` gives a Breit–Wigner mapping; ``None`` a :math:`d\hat s/\hat s` one.
    ``s_max = None`` means up to the hadronic s.
    """

    s_min: Tensor | float
    s_max: Tensor | float | None = None
    resonance: tuple[Tensor | float, Tensor | float] | None = None


class Process:
    """Base class of a hard process; subclasses set the class attributes and the three methods."""

    name: ClassVar[str] = ""
    channels: tuple[tuple[int, int], ...] = ()
    final_state: tuple[int, ...] = ()
    parameters: ClassVar[dict[str, Parameter]] = {}
    dim: int = 0
    cut_keys: ClassVar[tuple[str, ...]] = ()
    qcd: ClassVar[bool] = False  # True if |M|² needs theta["alpha_s"]

    def theta(
        self,
        values: Mapping[str, Tensor | float] | None = None,
        alpha_s: Tensor | float | None = None,
    ) -> dict[str, Tensor]:
        """θ with defaults filled in, as float64 tensors (scalars or (N,)).

        Raises:
            KeyError: for a name that is not a parameter of this process (the message lists them).
        """
        values = dict(values or {})
        unknown = sorted(set(values) - set(self.parameters) - {"alpha_s"})
        if unknown:
            msg = (
                f"process '{self.name}' has no parameter(s) {', '.join(unknown)}; "
                f"parameters: {', '.join(self.parameters)}"
            )
            raise KeyError(msg)
        out = {
            k: torch.as_tensor(values.get(k, p.default), dtype=torch.float64)
            for k, p in self.parameters.items()
        }
        if alpha_s is not None:
            out["alpha_s"] = torch.as_tensor(alpha_s, dtype=torch.float64)
        elif "alpha_s" in values:
            out["alpha_s"] = torch.as_tensor(values["alpha_s"], dtype=torch.float64)
        elif self.qcd:
            out["alpha_s"] = torch.tensor(0.118, dtype=torch.float64)
        return out

    def matrix_element_squared(
        self, p_in: Tensor, p_out: Tensor, theta: Mapping[str, Tensor], channel: tuple[int, int]
    ) -> Tensor:
        """|M|², spin/colour summed and averaged; p_in (N, 2, 4), p_out (N, n, 4) GeV → (N,)."""
        raise NotImplementedError

    def matrix_elements_by_channel(
        self, p_in: Tensor, p_out: Tensor, theta: Mapping[str, Tensor]
    ) -> Tensor:
        """|M|² for every channel at once, (N, n_channels); override to share work."""
        return torch.stack(
            [self.matrix_element_squared(p_in, p_out, theta, c) for c in self.channels], -1
        )

    def phase_space(
        self, u: Tensor, shat: Tensor, theta: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Final-state momenta (N, n, 4) in the partonic rest frame and the dΦ_n weight (N,)."""
        raise NotImplementedError

    def shat_mapping(
        self, theta: Mapping[str, Tensor], cuts: Mapping[str, float] | None = None
    ) -> ShatMapping:
        """The :math:`\\hat s` range (GeV²) and resonance for the hadronic integrand."""
        raise NotImplementedError

    def check_cuts(self, cuts: Mapping[str, float]) -> None:
        """Raise KeyError for a cut this process does not know (the message lists the known)."""
        unknown = sorted(set(cuts) - set(self.cut_keys))
        if unknown:
            known = ", ".join(self.cut_keys) or "(none)"
            msg = f"process '{self.name}' has no cut(s) {', '.join(unknown)}; cuts: {known}"
            raise KeyError(msg)


_REGISTRY: dict[str, Callable[..., Process]] = {}


def register_process(cls: type[Process]) -> type[Process]:
    """Class decorator: make ``cls`` available as ``get_process(cls.name)``."""
    if not cls.name:
        msg = f"{cls.__name__} needs a non-empty class attribute 'name'"
        raise ValueError(msg)
    _REGISTRY[cls.name] = cls
    return cls


def available_processes() -> list[str]:
    """Sorted names of the registered processes."""
    _load_builtin()
    return sorted(_REGISTRY)


def get_process(name: str, **options: Any) -> Process:
    """Build the registered process ``name`` with its ``options`` (e.g. ``top_width="lo"``).

    Raises:
        KeyError: naming the unknown process and the registered ones.
    """
    _load_builtin()
    if name not in _REGISTRY:
        msg = f"unknown process '{name}'; registered: {', '.join(sorted(_REGISTRY))}"
        raise KeyError(msg)
    return _REGISTRY[name](**options)


def _load_builtin() -> None:
    import unfoldmem.physics.processes  # noqa: F401  (registers the built-in processes)


def incoming_momenta(shat: Tensor) -> Tensor:
    """Massless beams along ±z in the partonic rest frame: (N,) GeV² → (N, 2, 4) GeV."""
    e = 0.5 * torch.sqrt(shat)
    z = torch.zeros_like(e)
    return torch.stack([torch.stack([e, z, z, e], -1), torch.stack([e, z, z, -e], -1)], 1)


def two_body_final_state(u: Tensor, shat: Tensor, m1: Any, m2: Any) -> tuple[Tensor, Tensor]:
    """Two particles of masses m1, m2 (GeV) decaying isotropically from the partonic rest frame.

    Arguments:
        u: (N, 2) unit-hypercube angles. shat: (N,) GeV².

    Returns:
        p_out (N, 2, 4) GeV and the two-body phase-space weight (N,).
    """
    z = torch.zeros_like(shat)
    parent = torch.stack([torch.sqrt(shat), z, z, z], -1)
    p1, p2, w = two_body_decay(parent, m1, m2, u)
    return torch.stack([p1, p2], 1), w
