r"""Exceptions for user mistakes: bad files, cards, models and inputs.

Every class here is something a user can fix; the CLI prints its message on one line and
exits with code 2. Programming errors raise ordinary Python exceptions.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "UnfoldmemError",
    "CardError",
    "InputFileError",
    "MissingTreeError",
    "MissingBranchError",
    "BranchTypeError",
    "NonFiniteValueError",
    "OutputExistsError",
    "OutputPathError",
    "ModelError",
    "NotYetAvailableError",
    "WeightError",
    "closest",
]


def closest(wanted: str, available: Iterable[str], n: int = 5) -> list[str]:
    """The names in ``available`` closest to ``wanted`` by edit distance (as uproot does)."""
    available = sorted(set(available))
    hits = difflib.get_close_matches(wanted, available, n=n, cutoff=0.4)
    return hits or available[:n]


class UnfoldmemError(Exception):
    """Base class of every error a user can fix by changing an input."""


class CardError(UnfoldmemError):
    """Raised when a YAML card has an unknown key, a wrong type or a missing referenced file."""

    def __init__(self, card: str, key: str, problem: str) -> None:
        self.card, self.key, self.problem = card, key, problem
        one_line = " ".join(problem.split())
        super().__init__(f"{card}: key '{key}': {one_line}")


class InputFileError(UnfoldmemError):
    """Raised when an input file cannot be read: missing, not ROOT, truncated, empty."""

    def __init__(self, path: str, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}")


class MissingTreeError(InputFileError):
    """Raised when a tree asked for is not in the file; lists the trees that are."""

    def __init__(self, path: str, tree: str, available: Iterable[str]) -> None:
        self.tree = tree
        avail = ", ".join(sorted(available)) or "(none)"
        super().__init__(path, f"no tree '{tree}'; trees in file: {avail}")


class MissingBranchError(InputFileError):
    """Raised when a branch is not in a tree; lists the closest names."""

    def __init__(self, path: str, tree: str, branch: str, available: Iterable[str]) -> None:
        self.tree, self.branch = tree, branch
        near = ", ".join(closest(branch, available))
        super().__init__(path, f"tree '{tree}' has no branch '{branch}'; closest: {near}")


class BranchTypeError(InputFileError):
    """Raised when a branch has the wrong dtype or is jagged where a flat one is expected."""

    def __init__(self, path: str, branch: str, expected: str, found: str) -> None:
        self.branch, self.expected, self.found = branch, expected, found
        super().__init__(path, f"branch '{branch}': expected {expected}, found {found}")


class NonFiniteValueError(InputFileError):
    """Raised when a branch holds NaN or inf values and the policy is ``error``."""

    def __init__(self, path: str, branch: str, count: int) -> None:
        self.branch, self.count = branch, count
        super().__init__(
            path,
            f"branch '{branch}' has {count} non-finite value(s) (NaN/inf); "
            "use --on-nan drop to drop those events",
        )


class OutputExistsError(UnfoldmemError):
    """Raised when an output exists and overwriting was not asked for."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path}: output exists; pass --overwrite to replace it")


class OutputPathError(UnfoldmemError):
    """Raised when an output cannot be written where asked (missing directory, not writable)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        super().__init__(f"{path}: {problem}")


class ModelError(UnfoldmemError):
    """Raised when a model directory is missing pieces or does not match the data or card."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        super().__init__(f"{path}: {problem}")


class NotYetAvailableError(UnfoldmemError):
    """Raised by a command that is planned but not built yet."""

    def __init__(self, verb: str) -> None:
        super().__init__(f"'unfoldmem {verb}' is not yet available in this version")


class WeightError(UnfoldmemError):
    """Raised when event or importance weights cross a diagnostic threshold set in a card
    (non-finite weights, effective sample size, largest share) and ``on_violation`` is ``error``."""
