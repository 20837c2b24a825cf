"""Turn YAML and pydantic failures into messages a plant engineer can act on.

Every message names the file, the path of the bad field, the bad value and a hint, and all
problems of a file are reported at once:

>>> from pydantic import BaseModel, ConfigDict
>>> class Port(BaseModel):
...     model_config = ConfigDict(extra="forbid")
...     port: int = 502
>>> errs = validate_model(Port, {"prot": 5020}, "plant.yaml")
>>> print(errs.render())
plant.yaml: prot: unknown key (did you mean 'port'?)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    message: str


@dataclass
class ConfigErrors(Exception):  # noqa: N818 (it carries many problems, not one error)
    """All problems found in one file. ``str()`` gives the full, user-facing report."""

    source: str
    problems: list[Problem] = field(default_factory=list)

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def render(self) -> str:
        return "\n".join(
            f"{self.source}: {p.path}: {p.message}" if p.path else f"{self.source}: {p.message}"
            for p in self.problems
        )

    def __str__(self) -> str:
        return self.render()


def dotted(loc: Iterable[int | str]) -> str:
    """``("machines", 2, "kind")`` -> ``machines[2].kind``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def load_yaml(path: Path) -> Any:
    """Read a YAML file; a syntax error names the line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigErrors(
            str(path), [Problem("", f"cannot read the file: {exc.strerror}")]
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = getattr(exc, "problem", None) or str(exc)
        raise ConfigErrors(str(path), [Problem("", f"{where}YAML syntax error: {what}")]) from None


def _members(annotation: Any) -> list[type[BaseModel]]:
    """Every BaseModel inside an annotation (``X``, ``list[X]``, ``A | B``, ``Annotated``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or getattr(annotation, "__metadata__", ()):
        out.extend(_members(arg))
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and not out:
        out.extend(_members(origin))
    return out


def _tag_of(model: type[BaseModel]) -> str | None:
    """The literal ``type:`` value that selects ``model`` in a discriminated union."""
    info = model.model_fields.get("type")
    args: tuple[Any, ...] = getattr(info.annotation, "__args__", ()) if info is not None else ()
    return str(args[0]) if len(args) == 1 else None


def _walk(model: type[BaseModel], loc: Sequence[int | str]) -> tuple[Any, Any, tuple[Any, ...]]:
    """(sub-model, field info, location without union tags) that ``loc`` points at."""
    current: Any = model
    info: Any = None
    clean: list[int | str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            clean.append(part)
            continue
        fields = getattr(current, "model_fields", None)
        found = fields.get(part) if fields else None
        if found is None and info is not None:
            # pydantic puts a discriminated union's tag into the location: follow that member
            member = next((m for m in _members(info.annotation) if _tag_of(m) == part), None)
            if member is not None:
                current = member
                continue
        if found is None:
            return None, None, (*clean, *loc[i:])
        info = found
        clean.append(part)
        members = _members(found.annotation)
        current = members[0] if len(members) == 1 else None
    return current, info, tuple(clean)


def _known_keys(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """Field names (and aliases) of the sub-model that ``loc`` points into."""
    current, _, _ = _walk(model, loc)
    if current is None or not hasattr(current, "model_fields"):
        return []
    return [info.alias or name for name, info in current.model_fields.items()]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


#: pydantic error types reworded for people who do not read pydantic.
_PLAIN = {
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "too_short": "too few entries: at least {min_length} needed",
    "too_long": "too many entries: at most {max_length} allowed",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "bool_parsing": "must be true or false",
    "string_type": "must be text",
    "list_type": "must be a list",
    "dict_type": "must be a mapping of keys to values",
    "model_type": "must be a mapping of keys to values",
    "string_pattern_mismatch": "may contain only letters, digits, '_', '.' and '-'",
}


def problems_from_validation(model: type[BaseModel], exc: ValidationError) -> list[Problem]:
    out: list[Problem] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = dotted(_walk(model, loc)[2])
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1])
            close = difflib.get_close_matches(key, _known_keys(model, loc[:-1]), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            out.append(Problem(path, f"unknown key{hint}"))
        elif kind == "missing":
            out.append(Problem(path, "required but missing"))
        elif kind == "literal_error":
            choices = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
            value = err.get("input")
            close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            out.append(Problem(path, f"{_short(value)} is not one of: {', '.join(choices)}{hint}"))
        elif kind == "union_tag_invalid":
            ctx = err.get("ctx", {})
            choices = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
            tag = str(ctx.get("tag", ""))
            close = difflib.get_close_matches(tag, choices, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            out.append(Problem(f"{path}.type" if path else "type",
                               f"{tag!r} is not one of: {', '.join(choices)}{hint}"))  # fmt: skip
        elif kind == "union_tag_not_found":
            out.append(Problem(f"{path}.type" if path else "type", "required but missing"))
        elif kind in _PLAIN:
            value = err.get("input")
            shown = "" if isinstance(value, Mapping | list) else f"{_short(value)}: "
            _, info, _ = _walk(model, loc)
            about = getattr(info, "description", None)
            hint = f" ({loc[-1]}: {about})" if about else ""
            ctx = {
                k: f"{v:g}" if isinstance(v, float) else v for k, v in err.get("ctx", {}).items()
            }
            text = _PLAIN[kind].format(**ctx)
            out.append(Problem(path, f"{shown}{text}{hint}"))
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            value = err.get("input")
            shown = "" if isinstance(value, Mapping | list) else f"{_short(value)}: "
            _, info, _ = _walk(model, loc)
            about = getattr(info, "description", None)
            named = isinstance(loc[-1], str) if loc else False
            hint = f" ({loc[-1]}: {about})" if about and named and kind != "value_error" else ""
            out.append(Problem(path, f"{shown}{msg}{hint}"))
    return out


def validate_model(model: type[M], data: Any, source: str) -> ConfigErrors:
    """Validate ``data`` against ``model``; return the problems (empty when valid)."""
    errors = ConfigErrors(source)
    try:
        model.model_validate(data)
    except ValidationError as exc:
        errors.problems.extend(problems_from_validation(model, exc))
    return errors


def parse_model(model: type[M], data: Any, source: str) -> M:
    """Validate and return the model, or raise :class:`ConfigErrors` with every problem."""
    if not isinstance(data, Mapping):
        raise ConfigErrors(source, [Problem("", "the file must hold a mapping of keys to values")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigErrors(source, problems_from_validation(model, exc)) from None
