r"""Atomic outputs: write to a temporary file beside the target, rename on success only."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from unfoldmem.errors import OutputExistsError, OutputPathError

__all__ = ["atomic_path", "check_writable"]


def check_writable(path: str | Path, overwrite: bool = False) -> Path:
    """Check that ``path`` can be created: its directory exists, and it exists only if allowed.

    Raises:
        OutputPathError: the parent directory is missing.
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(str(path), f"directory '{parent}' does not exist")
    if path.exists() and not overwrite:
        raise OutputExistsError(str(path))
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = False, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it replaces ``path`` only if the block succeeds.

    A crash or exception leaves no file (or directory) at ``path`` and removes the temporary,
    so a half-written output never looks complete.

    Arguments:
        path: the final output path.
        overwrite: replace an existing ``path``.
        directory: the output is a directory (the temporary one is created empty).
    """
    path = check_writable(path, overwrite)
    fd_dir = str(path.parent)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=fd_dir))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=fd_dir)
        os.close(fd)
        os.unlink(name)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            os.replace(tmp, path)
        else:
            if not tmp.exists():
                msg = f"the writer produced no file at {tmp}"
                raise RuntimeError(msg)
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise
