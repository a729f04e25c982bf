r"""Card loading: YAML → pydantic model, with errors that name the card, the key and the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo
from pydantic.functional_validators import AfterValidator

from unfoldmem.errors import CardError

__all__ = ["StrictModel", "CardFile", "read_yaml", "validate_card"]

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """A config model that refuses unknown keys and re-validates on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("card_dir")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    if not path.exists():
        msg = f"file '{value}' does not exist (looked for {path})"
        raise ValueError(msg)
    return path.resolve()


CardFile = Annotated[Path, AfterValidator(_existing_file)]
"""A path in a card, resolved relative to the card's directory, that must exist."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a card file into a dict; a missing file or bad YAML is a :class:`CardError`."""
    path = Path(path)
    if not path.is_file():
        raise CardError(str(path), "<file>", "card file does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CardError(str(path), "<file>", f"not valid YAML{where}: {problem}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CardError(str(path), "<top>", f"expected a mapping, found {type(data).__name__}")
    return data


def _describe(err: dict[str, Any]) -> tuple[str, str]:
    key = ".".join(str(p) for p in err["loc"]) or "<top>"
    kind = err["type"]
    if kind == "extra_forbidden":
        return key, "unknown key"
    if kind == "missing":
        return key, "required key is missing"
    got = err.get("input")
    got_s = repr(got) if not isinstance(got, dict | list) else type(got).__name__
    return key, f"{err['msg']} (got {got_s})"


def validate_card(model: type[M], data: dict[str, Any], card: str | Path) -> M:
    """Validate ``data`` read from ``card`` against ``model``.

    Raises:
        CardError: naming the card file, the dotted key path and what was expected; with
        several problems, the first is named and the count of the others given.
    """
    card_dir = Path(card).parent
    try:
        return model.model_validate(data, context={"card_dir": card_dir})
    except ValidationError as exc:
        errs = exc.errors()
        key, problem = _describe(errs[0])
        if key != "<top>" and errs[0]["type"] == "extra_forbidden":
            allowed = sorted(_allowed_keys(model, errs[0]["loc"][:-1]))
            if allowed:
                problem += f"; expected one of: {', '.join(allowed)}"
        if len(errs) > 1:
            problem += f" (and {len(errs) - 1} more problem(s))"
        raise CardError(str(card), key, problem) from exc


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = field.annotation
        args = getattr(current, "__args__", ())
        for a in args:
            if isinstance(a, type) and issubclass(a, BaseModel):
                current = a
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []
