r"""State and helpers shared by the CLI verbs: global flags, console, progress, output checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from unfoldmem.errors import OutputExistsError, OutputPathError

__all__ = ["state", "console", "check_output"]


@dataclass
class _State:
    quiet: bool = False
    verbose: bool = False


state = _State()
console = Console(stderr=True)


def check_output(path: Path, overwrite: bool, is_dir: bool = False) -> Path:
    """Refuse an existing output unless ``overwrite``; the parent directory must exist."""
    path = Path(path)
    parent = path.parent if not is_dir else path.parent
    if not parent.exists():
        raise OutputPathError(str(path), f"directory '{parent}' does not exist")
    if path.exists() and not overwrite:
        raise OutputExistsError(str(path))
    return path
