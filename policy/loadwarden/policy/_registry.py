"""One registry pattern for the kernel's three families: routing strategies, limit
algorithms and batch controllers.

Each entry is a class with a `name` (the config's word for it) and a frozen `Params`
dataclass; the registry looks a name up once, at configuration time, and an unknown one
is refused with a message listing the valid names. Parameters arrive as a mapping (a TOML
table or a protobuf Struct) and are parsed into `Params` with field paths in every error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import InvalidArgument
from ._validation import shown

if TYPE_CHECKING:  # only for annotations: the standard library's dataclass protocol
    from _typeshed import DataclassInstance


E = TypeVar("E", bound=type[Any])  # a class with a `name` and a frozen dataclass `Params`
P = TypeVar("P", bound="DataclassInstance")


class Registry(MutableMapping[str, E]):
    """Classes of one family by name; a mapping from name to class.

    Adding an entry checks it: its key must be its `name` and its `Params` a frozen
    dataclass. Entries are registered once, when the family's package is imported (a test
    may add one of its own and remove it again).

    Args:
        kind: The family's name in messages, singular and plural ("strategy", "strategies").
        name_field: The config key holding the name, e.g. "strategy" (errors name
            `<where>.<name_field>`).
        params_field: The config key holding the parameters, e.g. "strategy_params".
        entries: The classes, each with a unique `name` and a frozen dataclass `Params`.
    """

    def __init__(self, kind: tuple[str, str], name_field: str, params_field: str, entries: Iterable[E]) -> None:
        self.kind, self.kinds = kind
        self.name_field = name_field
        self.params_field = params_field
        self._entries: dict[str, E] = {}
        for entry in entries:
            if entry.name in self._entries:
                raise TypeError(f"two {self.kinds} are named {entry.name!r}")
            self[entry.name] = entry

    def __getitem__(self, name: str) -> E:
        return self._entries[name]

    def __setitem__(self, name: str, entry: E) -> None:
        if getattr(entry, "name", None) != name:
            raise TypeError(f"{entry.__name__} is named {getattr(entry, 'name', None)!r}, not {name!r}")
        params = getattr(entry, "Params", None)
        if not (isinstance(params, type) and dataclasses.is_dataclass(params)):
            raise TypeError(f"{entry.__name__}.Params must be a dataclass")
        if not params.__dataclass_params__.frozen:  # type: ignore[attr-defined]  # set by @dataclass
            raise TypeError(f"{entry.__name__}.Params must be frozen")
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def get_entry(self, name: str, where: str) -> E:
        """The class registered as `name`; InvalidArgument naming `<where>.<name_field>` otherwise."""
        found = self._entries.get(name)
        if found is None:
            valid = ", ".join(sorted(self._entries))
            raise InvalidArgument(
                f"{where}.{self.name_field}", f"unknown {self.kind} {shown(name)}; valid {self.kinds}: {valid}"
            )
        return found

    def params(self, name: str, values: Mapping[str, Any], where: str) -> tuple[E, Any]:
        """The class registered as `name` and `values` parsed into its `Params`."""
        entry = self.get_entry(name, where)
        return entry, parse_params(entry.Params, values, f"{where}.{self.params_field}")


def parse_params(params_type: type[P], values: Mapping[str, Any], where: str) -> P:
    """Builds a frozen params dataclass from config/Struct values.

    Unknown names, wrong types and values the dataclass rejects raise
    InvalidArgument naming ``where.<name>``. Integral floats are accepted for int
    fields, because a protobuf Struct carries every number as a float.
    """
    fields = {f.name: f for f in dataclasses.fields(params_type)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        field = fields.get(key)
        if field is None:
            valid = ", ".join(sorted(fields)) or "none"
            raise InvalidArgument(f"{where}.{key}", f"unknown parameter; valid parameters: {valid}")
        kwargs[key] = _coerce(value, field.type, f"{where}.{key}")
    try:
        return params_type(**kwargs)
    except ValueError as exc:
        # __post_init__ raises ValueError("name: problem"); re-anchor it under `where`.
        name, _, problem = str(exc).partition(": ")
        raise InvalidArgument(f"{where}.{name}", problem or str(exc)) from None


def _coerce(value: Any, type_name: Any, field: str) -> Any:
    kind = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", "")
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind == "str" and isinstance(value, str):
        return value
    raise InvalidArgument(field, f"must be of type {kind}, got {value!r}")
