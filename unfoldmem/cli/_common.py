r"""State shared by the CLI verbs: global flags and the console."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console

__all__ = ["state", "console"]


@dataclass
class _State:
    quiet: bool = False
    verbose: bool = False


state = _State()
console = Console(stderr=True)
