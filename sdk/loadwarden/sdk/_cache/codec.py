"""What a cache stores: a value or a cached error, serialised, behind a one-byte tag.

`JsonSerializer` is the default: any process that can write to a shared Redis can
then make the cache return wrong data, but never run code. `PickleSerializer` keeps
any picklable value; loading a pickle runs code, so use it only with a store that
no one else can write to (the in-process store, or a Redis you trust).

A value comes back as the serializer gives it back, on a miss too: JSON turns tuples
into lists and dict keys into strings, on the first call as on every later one.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from loadwarden.sdk._cache.errors import CacheValueError

_VALUE = b"v"
_ERROR = b"e"


class Serializer(Protocol):
    """Turns values into bytes and back."""

    def dumps(self, value: Any) -> bytes:
        """`value` as bytes; TypeError or ValueError when it cannot be."""
        ...

    def loads(self, data: bytes) -> Any:
        """The value `dumps` made `data` from; any exception when `data` is not such bytes."""
        ...


class JsonSerializer:
    """JSON (UTF-8): str, int, float, bool, None, lists and dicts with str keys. Safe to load
    from a store others write to."""

    def dumps(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)

    def __repr__(self) -> str:
        return "JsonSerializer()"


class PickleSerializer:
    """Pickle: any picklable value. Loading runs code: only for a store no one else writes to."""

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)  # opt-in and documented: only for a store no one else writes to

    def __repr__(self) -> str:
        return "PickleSerializer()"


class Undecodable(Exception):
    """A stored entry that this cache cannot read (another format, another writer, corrupt)."""


class StoredError:
    """A cached error, rebuilt; the cache raises `error` where it would return a value."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _subclasses(types: Iterable[type[BaseException]]) -> Iterator[type[BaseException]]:
    for cls in types:
        yield cls
        yield from _subclasses(cls.__subclasses__())


def type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Codec:
    """Encodes values and errors for a store and decodes them back.

    Args:
        serializer: Turns values (and an error's arguments) into bytes.
        error_types: The errors the cache keeps; a stored error is rebuilt only when its
            class is one of them or a subclass of one, as `cls(*args)`.
    """

    def __init__(self, serializer: Serializer, error_types: tuple[type[BaseException], ...]) -> None:
        self.serializer = serializer
        self._error_types = error_types

    def value(self, value: Any, what: str) -> bytes:
        """`value`'s entry; `what` names it in the error ("the result of app.classify").

        Raises:
            CacheValueError: The serializer cannot encode it; names its type and what to do.
        """
        try:
            return _VALUE + self.serializer.dumps(value)
        except (TypeError, ValueError, AttributeError, pickle.PicklingError, RecursionError) as exc:
            raise CacheValueError(
                f"cannot cache {what}: {self.serializer!r} cannot serialise a "
                f"{type(value).__module__}.{type(value).__qualname__} ({exc}); return JSON data "
                "(str, int, float, bool, None, lists, dicts with str keys) or give the cache "
                "serializer=PickleSerializer() (only for a store no one else writes to)"
            ) from exc

    def caches(self, error: BaseException) -> bool:
        """Whether `error` is one of the kept errors."""
        return isinstance(error, self._error_types)

    def error(self, error: BaseException) -> bytes | None:
        """`error`'s entry; None when its arguments cannot be serialised (it is not cached)."""
        try:
            return _ERROR + self.serializer.dumps({"type": type_name(type(error)), "args": list(error.args)})
        except (TypeError, ValueError, AttributeError, pickle.PicklingError, RecursionError):
            return None

    def decode(self, data: bytes) -> Any:
        """The value `data` holds, or a `StoredError`.

        Raises:
            Undecodable: `data` is no entry of this cache's, or holds an error it does not keep.
        """
        tag, payload = data[:1], data[1:]
        try:
            decoded = self.serializer.loads(payload)
        except Exception as exc:  # a serializer's loads may raise anything on foreign bytes
            raise Undecodable(f"{type(exc).__name__}: {exc}") from exc
        if tag == _VALUE:
            return decoded
        if tag != _ERROR or not isinstance(decoded, dict) or not isinstance(decoded.get("args"), list):
            raise Undecodable("not an entry of loadwarden.sdk.cache")
        name = decoded.get("type")
        for cls in _subclasses(self._error_types):
            if type_name(cls) == name:
                try:
                    error = cls(*decoded["args"])
                except Exception as exc:  # an error class's __init__ may refuse its own args
                    raise Undecodable(f"cannot rebuild {name}: {exc}") from exc
                error.add_note("(a cached error, raised again by loadwarden.sdk.cache)")
                return StoredError(error)
        raise Undecodable(f"a cached {name}, which this cache does not keep")
