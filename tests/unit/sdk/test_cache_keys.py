"""Cache keys: one key per call however it is spelled; bounded length; clear errors."""

from __future__ import annotations

import enum
import re
from typing import Any

import pytest

from loadwarden.sdk._cache.keys import MAX_KEY_LENGTH, CallKeys, explicit_key
from loadwarden.sdk.cache import Cache, CacheKeyError, cached


def keys_of(fn: Any, **options: Any) -> CallKeys:
    settings: dict[str, Any] = {"prefix": "p", "name": None, "key": None, "ignore": (), "normalize": True}
    return CallKeys(fn, **{**settings, **options})


def classify(text: str, model: str = "small", *tags: str, **options: Any) -> None: ...


NAME = "p:tests.unit.sdk.test_cache_keys.classify"  # the prefix and the name in classify's keys


class Color(enum.Enum):
    RED = "red"


def test_positional_keyword_and_defaulted_spellings_of_a_call_share_a_key() -> None:
    keys = keys_of(classify)
    spellings = [
        keys.build(("hi",), {}),
        keys.build((), {"text": "hi"}),
        keys.build(("hi", "small"), {}),
        keys.build((), {"model": "small", "text": "hi"}),
    ]
    assert len(set(spellings)) == 1
    assert spellings[0] == f'{NAME}:{{"model":"small","options":{{}},"tags":[],"text":"hi"}}'
    assert keys.build(("hi", "large"), {}) != spellings[0]


def test_keyword_arguments_and_dicts_in_any_order_share_a_key() -> None:
    keys = keys_of(classify)
    assert keys.build(("t",), {"a": 1, "b": {"x": 1, "y": 2}}) == keys.build(("t",), {"b": {"y": 2, "x": 1}, "a": 1})
    assert explicit_key("p", {"b": 1, "a": [1, {"d": 2, "c": 3}]}, normalize=True) == explicit_key(
        "p", {"a": [1, {"c": 3, "d": 2}], "b": 1}, normalize=True
    )
    assert explicit_key("p", {3, 1, 2}, normalize=True) == explicit_key("p", {2, 3, 1}, normalize=True) == "p:[1,2,3]"


def test_whitespace_is_collapsed_and_stripped_unless_turned_off() -> None:
    keys = keys_of(classify)
    assert keys.build(("  My package\n\twas   delayed ",), {}) == keys.build(("My package was delayed",), {})
    assert explicit_key("p", ("a  b", {"k": " c "}), normalize=True) == 'p:["a b",{"k":"c"}]'
    raw = keys_of(classify, normalize=False)
    assert raw.build(("a  b",), {}) != raw.build(("a b",), {})
    assert keys.build(("My package",), {}) != keys.build(("my package",), {})  # case is meaning


def test_types_keep_their_keys_apart_and_enums_key_by_value() -> None:
    assert len({explicit_key("p", value, normalize=True) for value in ("1", 1, 1.5, True, None, [1])}) == 6
    assert explicit_key("p", Color.RED, normalize=True) == explicit_key("p", "red", normalize=True)
    assert explicit_key("p", (1, 2), normalize=True) == explicit_key("p", [1, 2], normalize=True)


def test_a_long_key_is_a_bounded_hash_that_still_tells_calls_apart() -> None:
    keys = keys_of(classify, name="ml." + "n" * 300)
    long_a, long_b = keys.build(("a" * 5000,), {}), keys.build(("a" * 4999 + "b",), {})
    for key in (long_a, long_b):
        assert len(key) <= MAX_KEY_LENGTH
        assert key.startswith("p:ml.nnn") and ":#" in key
    assert long_a != long_b
    short = keys_of(classify, name="ml").build(("a",), {})
    assert "#" not in short and len(short) < MAX_KEY_LENGTH
    assert len(explicit_key("p" * 64, "x" * 10_000, normalize=True)) <= MAX_KEY_LENGTH


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        ((object(),), {}, "argument 'text'"),
        (("t", "m", "ok", b"bytes"), {}, "argument 'tags'[1]"),
        (("t",), {"opts": {"when": object()}}, "argument 'options'['opts']['when']"),
    ],
)
def test_an_argument_that_cannot_be_keyed_is_a_type_error_naming_it(
    args: tuple[Any, ...], kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(CacheKeyError, match=f"^{re.escape(named)}: cannot build a cache key from a .*pass key="):
        keys_of(classify).build(args, kwargs)
    assert issubclass(CacheKeyError, TypeError)


def test_a_dict_with_non_str_keys_is_refused_rather_than_merged_with_str_keys() -> None:
    with pytest.raises(CacheKeyError, match=r"key: .*a dict with a int key \(1\)"):
        explicit_key("p", {1: "a"}, normalize=True)


def test_key_and_ignore_say_how_to_key_what_cannot_be() -> None:
    class Model:
        pass

    by_name = keys_of(classify, key=lambda text, model=None, *_, **__: text.lower())
    assert by_name.build(("Hi", Model()), {}) == by_name.build(("HI",), {}) == f'{NAME}:"hi"'

    class Service:
        def predict(self, text: str) -> None: ...

    method = keys_of(Service.predict, ignore=("self",))
    assert method.build((Service(), "x"), {}) == method.build((Service(),), {"text": "x"})
    with pytest.raises(ValueError, match=r"ignore: .*no parameter 'slf'"):
        keys_of(Service.predict, ignore=("slf",))


def test_arguments_that_do_not_bind_fail_as_the_call_would() -> None:
    cache = Cache()

    @cached(cache)
    def f(a: int) -> int:
        return a

    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        f()  # type: ignore[call-arg]  # the mistake under test
