"""Cache keys: the arguments of a call, bound to the function's signature, as canonical JSON.

One call, one key, however it is spelled: `f(1, b=2)`, `f(b=2, a=1)` and `f(1)` (when
`b` defaults to 2) bind to the same arguments; dicts give one key whatever their order
(sorted keys), sets whatever their iteration order; and by default every string in the
key has its runs of whitespace collapsed to one space and is stripped. That is for the
key only: the function is called with exactly what it was given, so `f("a  b")` after
`f("a b")` is a hit on the first call's result.

A key reads `prefix:name:{"text":"..."}` while it is at most `MAX_KEY_LENGTH` characters;
a longer one is `prefix:name:#<sha256 of name and arguments>`, with the name cut to 64
characters, so every key is bounded whatever the arguments.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from loadwarden.sdk._cache.errors import CacheKeyError

MAX_KEY_LENGTH = 200  # characters
MAX_PREFIX_LENGTH = 64  # characters; with the name cut to 64, a hashed key is at most 195
_NAME_IN_HASHED_KEY = 64  # characters
_SCALARS = (str, int, float, bool, type(None))


def plain(value: Any, where: str, *, normalize: bool) -> Any:
    """`value` as JSON data with one form per meaning (see the module docstring).

    Args:
        value: An argument: str, int, float, bool, None, an Enum member (keyed by its
            value), or a list, tuple, set, frozenset or dict (str keys) of those.
        where: The argument's name and path, for the error (`argument 'items'[2]`).
        normalize: Collapse and strip whitespace in strings.

    Raises:
        CacheKeyError: Something else; the message names `where` and the type.
    """
    if isinstance(value, enum.Enum):
        return plain(value.value, where, normalize=normalize)
    if isinstance(value, str):
        return " ".join(value.split()) if normalize else value
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(item, f"{where}[{i}]", normalize=normalize) for i, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [plain(item, f"{where} item", normalize=normalize) for item in value]
        return sorted(items, key=canonical_json)
    if isinstance(value, Mapping):
        out = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise CacheKeyError(
                    f"{where}: cannot build a cache key from a dict with a {type(name).__qualname__} key "
                    f"({name!r}); only str keys are keyed, pass key= to say how to key this call"
                )
            out[name] = plain(item, f"{where}[{name!r}]", normalize=normalize)
        return out
    raise CacheKeyError(
        f"{where}: cannot build a cache key from a {type(value).__module__}.{type(value).__qualname__}; "
        "pass key= (a function of the same arguments returning str, numbers, lists or dicts) "
        "or ignore= to leave the argument out of the key"
    )


def canonical_json(data: Any) -> str:
    """`data` (already `plain`) as compact JSON with sorted keys."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def assemble(prefix: str, name: str | None, canonical: str) -> str:
    """`prefix[:name]:canonical`, or its hashed form when that is longer than `MAX_KEY_LENGTH`."""
    head = prefix if name is None else f"{prefix}:{name}"
    key = f"{head}:{canonical}"
    if len(key) <= MAX_KEY_LENGTH:
        return key
    digest = hashlib.sha256(f"{name or ''}\0{canonical}".encode()).hexdigest()
    short = prefix if name is None else f"{prefix}:{name[:_NAME_IN_HASHED_KEY]}"
    return f"{short}:#{digest}"


def explicit_key(prefix: str, parts: Any, *, normalize: bool) -> str:
    """The key of `cache.get(parts)` and the other explicit calls."""
    return assemble(prefix, None, canonical_json(plain(parts, "key", normalize=normalize)))


class CallKeys:
    """Builds the key of each call of one decorated function.

    Args:
        fn: The function; its signature binds the arguments.
        prefix: The cache's key prefix.
        name: The function's name in its keys; default `module.qualname`.
        key: A function of the same arguments whose result (plain data) is keyed in
            place of the arguments; None keys the bound arguments.
        ignore: Parameters left out of the key (`"self"` for a method).
        normalize: Collapse and strip whitespace in strings.

    Raises:
        ValueError: `ignore` names a parameter `fn` does not have.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        prefix: str,
        name: str | None,
        key: Callable[..., Any] | None,
        ignore: Iterable[str],
        normalize: bool,
    ) -> None:
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self._signature = inspect.signature(fn)
        self._ignore = frozenset(ignore)
        unknown = sorted(self._ignore - set(self._signature.parameters))
        if unknown:
            raise ValueError(f"ignore: {fn.__qualname__} has no parameter {', '.join(map(repr, unknown))}")
        self._prefix = prefix
        self._key = key
        self._normalize = normalize

    def build(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The key of the call `fn(*args, **kwargs)`.

        Raises:
            TypeError: The arguments do not bind to the signature (as the call would).
            CacheKeyError: An argument (or the `key=` result) cannot be keyed.
        """
        if self._key is not None:
            data = plain(self._key(*args, **kwargs), "the key= function's result", normalize=self._normalize)
        else:
            bound = self._signature.bind(*args, **kwargs)
            bound.apply_defaults()
            data = {
                name: plain(value, f"argument {name!r}", normalize=self._normalize)
                for name, value in bound.arguments.items()
                if name not in self._ignore
            }
        return assemble(self._prefix, self.name, canonical_json(data))
