r"""Built-in hard processes; importing this package registers them with the process registry."""

from __future__ import annotations

from unfoldmem.physics.processes.drell_yan import DrellYan
from unfoldmem.physics.processes.ttbar import TTbar
from unfoldmem.physics.processes.ttbar_semileptonic import TTbarSemileptonic, TTbarSemileptonicMinus
from unfoldmem.physics.processes.w_lnu import WLepNu

__all__ = ["DrellYan", "TTbar", "TTbarSemileptonic", "TTbarSemileptonicMinus", "WLepNu"]
