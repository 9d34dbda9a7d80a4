"""TOML tables validated by pydantic, in loadwarden's own error wording.

The config file and the scenario files are described by ``Table`` models whose
fields use the annotated types below. pydantic checks them and gives the JSON
Schema editors read (``loadwarden config-schema``); each check words its
problem as the hand-written checks always did (``must be an integer in [1, 100],
got 'x'``), and ``first_problem`` turns a ``ValidationError`` into the dotted key
and that problem, so ``ConfigError`` and ``ScenarioError`` read as before::

    class Monitor(Table):
        enabled: Flag = True
        interval_ms: Annotated[int, Count(10, 3_600_000)] = 1_000

    try:
        Monitor.model_validate({"interval_ms": 5})
    except ValidationError as exc:
        first_problem(exc, Monitor)   # ('interval_ms', 'must be an integer in [10, 3600000], got 5')

The first error pydantic reports wins: fields are checked in the order the model
declares them, then unknown keys.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Annotated, Any, ClassVar

import annotated_types
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, create_model
from pydantic_core import PydanticCustomError

from loadwarden.policy import shown

__all__ = [
    "SCHEMA_DIALECT",
    "Checked",
    "Choice",
    "Count",
    "Flag",
    "Number",
    "Table",
    "Text",
    "described",
    "first_problem",
    "problem",
    "table_of",
]

_PROBLEM = "loadwarden"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
"""The JSON Schema dialect the tables' schemas are written in (``$schema``)."""


def problem(text: str) -> PydanticCustomError:
    """The error a check raises: ``text`` is the whole problem, shown as it is."""
    return PydanticCustomError(_PROBLEM, "{problem}", {"problem": text})


class Table(BaseModel):
    """A TOML table: unknown keys are errors, values are checked as declared.

    Subclasses may set ``not_a_table``: the problem when a value stands where the
    table should (``{got}`` is the value shown).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    not_a_table: ClassVar[str] = "must be a table"


def _checked(check: Callable[[Any], Any]) -> BeforeValidator:
    def validate(value: Any) -> Any:
        return check(value)

    return BeforeValidator(validate)


def Checked(check: Callable[[Any], Any], **json_schema: Any) -> Any:  # noqa: N802 - reads as a type in annotations
    """Any value ``check`` accepts (it returns the value, or raises ``problem(...)``).

    ``json_schema`` is the value's JSON Schema (e.g. ``type="string"``); it replaces the
    one pydantic would derive from the annotation.
    """
    if json_schema:
        return _Metadata(_checked(check), WithJsonSchema(json_schema))
    return _checked(check)


def Count(low: int, high: int, *, whole_floats: bool = False) -> Any:  # noqa: N802 - reads as a type in annotations
    """An integer (never a bool) in ``[low, high]``; ``whole_floats`` also takes ``3.0``."""

    def check(value: Any) -> int:
        if whole_floats and isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        raise problem(f"must be an integer in [{low}, {high}], got {shown(value)}")

    return _Metadata(annotated_types.Ge(low), annotated_types.Le(high), _checked(check))


def Number(  # noqa: N802 - reads as a type in annotations
    low: float = 0.0,
    high: float = math.inf,
    *,
    above: bool = False,
    below: bool = False,
    wording: str = "a finite number in",
) -> Any:
    """A finite number (int or float, never a bool) from ``low`` to ``high``, each excluded
    when ``above`` / ``below``; the schema says so (exclusiveMinimum, exclusiveMaximum).

    ``wording`` picks the problem's words: ``"a finite number in"`` gives
    ``must be a finite number in [0, 1], got ...``; ``"a number in"`` the same without
    "finite"; ``"bounds"`` gives ``must be a finite number > 0 and <= 10, got ...``.
    """

    def check(value: Any) -> float:
        number = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if number and (value > low if above else value >= low) and (value < high if below else value <= high):
            return float(value)
        if wording == "bounds":
            bound = (f"> {low:g}" if above else f">= {low:g}") + (
                f" and {'<' if below else '<='} {high:g}" if high < math.inf else ""
            )
            raise problem(f"must be a finite number {bound}, got {shown(value)}")
        raise problem(f"must be {wording} [{low:g}, {high:g}], got {shown(value)}")

    limits: list[Any] = [annotated_types.Gt(low) if above else annotated_types.Ge(low)]
    if high < math.inf:
        limits.append(annotated_types.Lt(high) if below else annotated_types.Le(high))
    return _Metadata(*limits, _checked(check))


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise problem(f"must be true or false, got {shown(value)}")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise problem(f"must be a string, got {shown(value)}")


def Choice(  # noqa: N802 - reads as a type in annotations
    choices: Sequence[str], wording: str = "must be one of {valid}, got {got}"
) -> Any:
    """One of ``choices``; ``wording`` takes ``{got}`` (the value shown) and ``{valid}`` (the choices)."""
    valid = ", ".join(choices)

    def check(value: Any) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise problem(wording.format(got=shown(value), valid=valid))

    return _Metadata(_checked(check), WithJsonSchema({"type": "string", "enum": list(choices)}))


class _Metadata(annotated_types.GroupedMetadata):
    """Several pieces of ``Annotated`` metadata written as one (pydantic unpacks them)."""

    __slots__ = ("_parts",)

    def __init__(self, *parts: Any) -> None:
        self._parts = parts

    def __iter__(self) -> Iterator[Any]:
        return iter(self._parts)


Flag = Annotated[bool, _checked(_flag)]
"""true or false (a TOML boolean; never 0 or 1)."""
Text = Annotated[str, _checked(_text)]
"""Any string."""


def described(cls: type) -> dict[str, str]:
    """The attribute descriptions of a class's Google-style ``Attributes:`` docstring section.

    ``a / b: text`` describes both ``a`` and ``b``; continuation lines join the text, and
    reST's double backticks become Markdown's single ones.
    """
    docs: dict[str, str] = {}
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    inside = False
    names: list[str] = []
    for line in lines:
        if line.strip() == "Attributes:":
            inside, names = True, []
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):  # the next section, or prose
            inside = False
            continue
        entry = _ENTRY.fullmatch(line)
        if entry is not None:
            names = [name.strip() for name in entry.group(1).split("/")]
            for name in names:
                docs[name] = entry.group(2).strip()
        elif line.strip() and names:
            for name in names:
                docs[name] += " " + line.strip()
    return {name: text.replace("``", "`") for name, text in docs.items()}  # Markdown, as editors show it


_ENTRY = re.compile(r"    ([a-z_][a-z0-9_]*(?: / [a-z_][a-z0-9_]*)*): (.*)")


def table_of(
    title: str,
    sources: Mapping[type, Mapping[str, Any]],
    doc: str = "",
    extra: Mapping[str, tuple[Any, Any, str]] | None = None,
) -> type[Table]:
    """A Table whose fields are dataclass fields: their defaults and descriptions, with the given checks.

    Args:
        title: The model's name (and the schema's title).
        sources: dataclass -> {field name: annotated type}, in the order the table lists them.
        doc: The table's own description.
        extra: Keys that are no dataclass's field: name -> (annotated type, default, description).
    """
    fields: dict[str, Any] = {}
    for cls, checks in sources.items():
        docs = described(cls)
        declared = {f.name: f for f in dataclasses.fields(cls)}
        for name, annotation in checks.items():
            spec = declared[name]
            default: Any = ...  # required: the dataclass has no default
            if spec.default is not dataclasses.MISSING:
                default = spec.default
            elif spec.default_factory is not dataclasses.MISSING:
                default = spec.default_factory()
            fields[name] = (annotation, Field(default=default, description=docs.get(name)))
    for name, (annotation, default, description) in (extra or {}).items():
        fields[name] = (annotation, Field(default=default, description=description))
    table: type[Table] = create_model(title, __base__=Table, __doc__=doc or None, **fields)
    return table


def first_problem(exc: ValidationError, model: type[BaseModel]) -> tuple[str, str]:
    """The dotted key (``a.b[2].c``) and the problem of the first error in ``exc``.

    ``model`` is the model that was validated: unknown keys list the valid keys
    of the table they were found in.
    """
    error = exc.errors(include_url=False)[0]
    loc = tuple(error["loc"])
    key = _dotted(loc)
    kind = error["type"]
    if kind == _PROBLEM:
        return key, str(error["ctx"]["problem"])
    if kind == "extra_forbidden":
        table = _model_at(model, loc[:-1])
        valid = sorted(_keys(table)) if table is not None else []
        return key, f"unknown key; valid keys: {', '.join(valid)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        table = _model_at(model, loc)
        wording = table.not_a_table if table is not None and issubclass(table, Table) else "must be a table"
        return key, wording.format(got=shown(error.get("input")))
    if kind == "missing":
        return key, "is required"
    if kind in ("list_type", "tuple_type"):
        return key, f"must be a list, got {shown(error.get('input'))}"
    return key, f"{error['msg'][:1].lower()}{error['msg'][1:]}, got {shown(error.get('input'))}"


def _dotted(loc: tuple[int | str, ...]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The Table class expected at ``loc`` inside ``model``, or None if none is."""
    current: Any = model
    for part in loc:
        current = _strip(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = {info.alias or name: info for name, info in current.model_fields.items()}
            if part not in fields:
                return None
            current = fields[part].annotation
        elif typing.get_origin(current) in (dict, typing.get_origin(dict[str, Any])):
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) in (list, tuple):
            current = typing.get_args(current)[0]
        else:
            return None
    current = _strip(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _strip(annotation: Any) -> Any:
    """``annotation`` without Annotated metadata or None in a union."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            annotation = rest[0] if len(rest) == 1 else annotation
            if len(rest) != 1:
                return annotation
        else:
            return annotation
