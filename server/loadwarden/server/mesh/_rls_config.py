"""``[rls]``: rate limits for Envoy's rate-limit service, in envoyproxy/ratelimit's shape.

A domain holds a tree of descriptors. Each has a ``key``, an optional ``value``
(absent: any value matches, and each distinct value gets its own bucket; ending in
``*``: values with that prefix match), and a limit: ``rate_limit = {unit,
requests_per_unit}`` (or ``unlimited = true``), or ``pool = "<name>"``: the
bucket of that pool's ``rate_limit``, the one AcquireSlot spends from, keyed by the
request entry's value as the client key. Nested ``descriptors`` match the next
entry of a request descriptor. A request descriptor is limited by the rule it
reaches with its last entry, at the same depth; at each level an exact
key/value match is tried before a wildcard, and a wildcard before the bare key
(``_rls_limiter.Matcher``, as envoyproxy/ratelimit's ``GetLimit``).

``parse_rls`` builds ``RlsSettings`` from the TOML table; every bad value is a
ConfigError naming its dotted key (``rls.domains[0].descriptors[1].rate_limit.unit``).
The frozen dataclasses check their own values in ``__post_init__`` (keys relative
to themselves), and the parser prefixes where they sit.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loadwarden.policy import NAME_CHARS, NAME_MAX_LEN, NAME_PATTERN, RateLimit, shown

from .._errors import ConfigError

# envoyproxy/ratelimit's units (UnitToDivider): a month is 30 days, a year 365.
UNIT_SECONDS = {
    "second": 1,
    "minute": 60,
    "hour": 3_600,
    "day": 86_400,
    "week": 604_800,
    "month": 2_592_000,
    "year": 31_536_000,
}
MAX_REQUESTS_PER_UNIT = 2**32 - 1  # the proto's uint32
MAX_RULES = 5_000  # descriptors in all domains together
MAX_TEXT_LEN = 1_024  # a domain, key or value, characters
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")  # an HTTP field name (RFC 9110 token)


@contextlib.contextmanager
def _within(path: str) -> Iterator[None]:
    """Re-raises a ConfigError of a nested value with ``path`` in front of its key."""
    try:
        yield
    except ConfigError as exc:
        problem = str(exc)[len(exc.key) + 2 :]
        raise ConfigError(f"{path}.{exc.key}" if exc.key else path, problem) from None


def _check_text(value: object, key: str, *, empty_ok: bool = True) -> None:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {shown(value)}")
    if not value and not empty_ok:
        raise ConfigError(key, "must not be empty")
    if len(value) > MAX_TEXT_LEN or "\0" in value:
        raise ConfigError(key, f"must be at most {MAX_TEXT_LEN} characters without NUL")


def _check_flag(value: object, key: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {shown(value)}")


@dataclass(frozen=True, slots=True)
class RlsRateLimit:
    """A descriptor's ``rate_limit`` table.

    Attributes:
        unit: ``second``, ``minute``, ``hour``, ``day``, ``week``, ``month`` (30 days) or
            ``year`` (365 days); none with ``unlimited``.
        requests_per_unit: Requests (hits) allowed per unit, 0-4294967295; 0 refuses all.
        unlimited: Matched but never limited (OK, ``limit_remaining`` 4294967295).
        name: Names the limit for another descriptor's ``replaces``.
        replaces: Names of limits this one replaces when both match in one request.
    """

    unit: str = ""
    requests_per_unit: int = 0
    unlimited: bool = False
    name: str = ""
    replaces: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_flag(self.unlimited, "unlimited")
        _check_text(self.name, "name")
        if not isinstance(self.unit, str):
            raise ConfigError("unit", f"must be a string, got {shown(self.unit)}")
        count = self.requests_per_unit
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_REQUESTS_PER_UNIT:
            raise ConfigError(
                "requests_per_unit", f"must be a whole number 0-{MAX_REQUESTS_PER_UNIT}, got {shown(count)}"
            )
        if self.unlimited:
            if self.unit:
                raise ConfigError("unit", "should not specify rate limit unit when unlimited")
            if count:
                raise ConfigError("requests_per_unit", "should not specify requests_per_unit when unlimited")
        elif self.unit.lower() not in UNIT_SECONDS:
            valid = ", ".join(UNIT_SECONDS)
            raise ConfigError("unit", f"invalid rate limit unit {shown(self.unit)}; valid units: {valid}")
        for index, replaced in enumerate(self.replaces):
            _check_text(replaced, f"replaces[{index}]", empty_ok=False)
            if replaced == self.name:
                raise ConfigError(f"replaces[{index}]", "replaces should not contain name of same descriptor")

    @property
    def per_s(self) -> int:
        """The unit, seconds (0 when unlimited)."""
        return UNIT_SECONDS.get(self.unit.lower(), 0)

    @property
    def bucket(self) -> RateLimit | None:
        """The token bucket: requests_per_unit tokens per unit, all spendable at once;
        None when unlimited or when nothing is allowed."""
        if self.unlimited or not self.requests_per_unit:
            return None
        return RateLimit(self.requests_per_unit, float(self.per_s), self.requests_per_unit)


@dataclass(frozen=True, slots=True)
class RlsDescriptor:
    """One ``[[...descriptors]]`` table.

    Attributes:
        key: The entry key to match, non-empty.
        value: The entry value to match; empty matches any value (each its own bucket),
            a trailing ``*`` any value with that prefix.
        rate_limit: The limit for a request descriptor that ends here; None for none.
        pool: Instead of ``rate_limit``: the bucket of this pool's rate limit (the one
            AcquireSlot spends from), the request entry's value being the client key.
        shadow_mode: Counted as usual, never answered OVER_LIMIT.
        detailed_metric: Counted under the request's own values, not the rule's key
            (at most MAX_DETAILED_SERIES such series in all).
        descriptors: Nested descriptors, matching a request's next entry.
    """

    key: str
    value: str = ""
    rate_limit: RlsRateLimit | None = None
    pool: str = ""
    shadow_mode: bool = False
    detailed_metric: bool = False
    descriptors: tuple[RlsDescriptor, ...] = ()

    def __post_init__(self) -> None:
        if self.key == "":
            raise ConfigError("key", "descriptor has empty key")
        _check_text(self.key, "key")
        _check_text(self.value, "value")
        _check_flag(self.shadow_mode, "shadow_mode")
        _check_flag(self.detailed_metric, "detailed_metric")
        if self.rate_limit is not None and not isinstance(self.rate_limit, RlsRateLimit):
            raise ConfigError("rate_limit", f"must be a table, got {shown(self.rate_limit)}")
        if self.pool:
            if not isinstance(self.pool, str) or not NAME_PATTERN.fullmatch(self.pool):
                raise ConfigError("pool", f"must be a pool name of 1-{NAME_MAX_LEN} characters of {NAME_CHARS}")
            if self.rate_limit is not None:
                raise ConfigError("pool", "a descriptor takes its limit from rate_limit or from a pool, not both")
        _check_unique(self.descriptors, "descriptors")

    @property
    def composite(self) -> str:
        """``key`` or ``key_value``, as envoyproxy/ratelimit names it in keys and stats."""
        return f"{self.key}_{self.value}" if self.value else self.key


def _check_unique(descriptors: Sequence[RlsDescriptor], key: str) -> None:
    seen: set[tuple[str, str]] = set()
    for index, descriptor in enumerate(descriptors):
        if not isinstance(descriptor, RlsDescriptor):
            raise ConfigError(f"{key}[{index}]", f"must be a descriptor table, got {shown(descriptor)}")
        if (descriptor.key, descriptor.value) in seen:
            raise ConfigError(f"{key}[{index}]", f"duplicate descriptor composite key {descriptor.composite!r}")
        seen.add((descriptor.key, descriptor.value))


@dataclass(frozen=True, slots=True)
class RlsDomain:
    """One ``[[rls.domains]]`` table: a domain (Envoy's filter ``domain``) and its descriptors."""

    domain: str
    descriptors: tuple[RlsDescriptor, ...] = ()

    def __post_init__(self) -> None:
        _check_text(self.domain, "domain", empty_ok=False)
        _check_unique(self.descriptors, "descriptors")


# Header names by default: the x-ratelimit-*; envoyproxy/ratelimit's default is RateLimit-*.
LIMIT_HEADER, REMAINING_HEADER, RESET_HEADER = "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"


@dataclass(frozen=True, slots=True)
class RlsSettings:
    """The ``[rls]`` section: Envoy's rate-limit service (envoy.service.ratelimit.v3).

    Attributes:
        enabled: Whether the service is served (on the gRPC port).
        domains: The domains and their descriptors, each domain once.
        shadow_mode: Every limit in shadow mode: OVER_LIMIT descriptors are reported,
            the overall answer is always OK (envoyproxy/ratelimit's SHADOW_MODE).
        response_headers: Whether answers carry the limit, remaining and reset headers
            of the descriptor closest to its limit (LIMIT_RESPONSE_HEADERS_ENABLED).
        limit_header: Its name for requests per unit.
        remaining_header: Its name for the whole requests left.
        reset_header: Its name for the seconds until the bucket is full again.
        max_keys: Buckets one descriptor rule keeps in this process, count,
            1-1000000; past it the least recently used is forgotten and starts full
            again (a pool's buckets follow its ``rate_limit_keys``). Redis keeps one
            key per bucket until it is full again.
        near_limit_ratio: Share of a limit over which a hit counts as near the
            limit, 0-1 (NEAR_LIMIT_RATIO).
    """

    enabled: bool = False
    domains: tuple[RlsDomain, ...] = ()
    shadow_mode: bool = False
    response_headers: bool = True
    limit_header: str = LIMIT_HEADER
    remaining_header: str = REMAINING_HEADER
    reset_header: str = RESET_HEADER
    max_keys: int = 10_000
    near_limit_ratio: float = 0.8

    def __post_init__(self) -> None:
        for key in ("enabled", "shadow_mode", "response_headers"):
            _check_flag(getattr(self, key), key)
        for key in ("limit_header", "remaining_header", "reset_header"):
            value = getattr(self, key)
            if not isinstance(value, str) or not _HEADER.fullmatch(value):
                raise ConfigError(key, f"must be an HTTP header name (1-128 token characters), got {shown(value)}")
        keys = self.max_keys
        if isinstance(keys, bool) or not isinstance(keys, int) or not 1 <= keys <= 1_000_000:
            raise ConfigError("max_keys", f"must be a whole number 1-1000000, got {shown(keys)}")
        ratio = self.near_limit_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
            raise ConfigError("near_limit_ratio", f"must be a number 0-1, got {shown(ratio)}")
        seen: set[str] = set()
        for index, domain in enumerate(self.domains):
            if not isinstance(domain, RlsDomain):
                raise ConfigError(f"domains[{index}]", f"must be a domain table, got {shown(domain)}")
            if domain.domain in seen:
                raise ConfigError(f"domains[{index}].domain", f"duplicate domain {domain.domain!r}")
            seen.add(domain.domain)
        rules = sum(_count(domain.descriptors) for domain in self.domains)
        if rules > MAX_RULES:
            raise ConfigError("domains", f"hold {rules} descriptors in all; at most {MAX_RULES} allowed")


def _count(descriptors: Sequence[RlsDescriptor]) -> int:
    return sum(1 + _count(d.descriptors) for d in descriptors)


# --- the TOML table ---------------------------------------------------------------------------

_SETTINGS_KEYS = frozenset(RlsSettings.__dataclass_fields__)
_DOMAIN_KEYS = frozenset({"domain", "descriptors"})
_DESCRIPTOR_KEYS = frozenset(RlsDescriptor.__dataclass_fields__)
_RATE_LIMIT_KEYS = frozenset(RlsRateLimit.__dataclass_fields__)


def _table(value: object, where: str, valid: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(where, f"must be a table, got {shown(value)}")
    for key in value:
        if key not in valid:
            raise ConfigError(f"{where}.{key}", f"unknown key; valid keys: {', '.join(sorted(valid))}")
    return value


def _array(value: object, where: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ConfigError(where, f"must be an array of tables, got {shown(value)}")
    return list(value)


def parse_rls(mapping: Mapping[str, Any], where: str = "rls") -> RlsSettings:
    """``RlsSettings`` from the ``[rls]`` table of a config file (as tomllib reads it).

    Raises:
        ConfigError: naming the dotted key, e.g. ``rls.domains[0].descriptors[1].rate_limit.unit``.
    """
    table = _table(mapping, where, _SETTINGS_KEYS)
    values = dict(table)
    path = f"{where}.domains"
    domains = _array(table.get("domains", ()), path)
    values["domains"] = tuple(_domain(raw, f"{path}[{i}]") for i, raw in enumerate(domains))
    with _within(where):
        return RlsSettings(**values)


def _domain(raw: object, where: str) -> RlsDomain:
    table = _table(raw, where, _DOMAIN_KEYS)
    path = f"{where}.descriptors"
    raws = _array(table.get("descriptors", ()), path)
    descriptors = tuple(_descriptor(d, f"{path}[{i}]") for i, d in enumerate(raws))
    with _within(where):
        return RlsDomain(table.get("domain", ""), descriptors)


def _descriptor(raw: object, where: str) -> RlsDescriptor:
    values = dict(_table(raw, where, _DESCRIPTOR_KEYS))
    path = f"{where}.descriptors"
    values["descriptors"] = tuple(
        _descriptor(d, f"{path}[{i}]") for i, d in enumerate(_array(values.get("descriptors", ()), path))
    )
    if "rate_limit" in values:
        values["rate_limit"] = _rate_limit(values["rate_limit"], f"{where}.rate_limit")
    with _within(where):
        return RlsDescriptor(**{"key": "", **values})


def _rate_limit(raw: object, where: str) -> RlsRateLimit:
    values = dict(_table(raw, where, _RATE_LIMIT_KEYS))
    if "replaces" in values:  # envoyproxy/ratelimit writes [{name = "..."}]; a plain name is fine too
        replaces = _array(values["replaces"], f"{where}.replaces")
        names = []
        for index, entry in enumerate(replaces):
            if isinstance(entry, Mapping):
                entry = _table(entry, f"{where}.replaces[{index}]", frozenset({"name"})).get("name", "")
            names.append(entry)
        values["replaces"] = tuple(names)
    if not values.get("unlimited") and "requests_per_unit" not in values:
        raise ConfigError(f"{where}.requests_per_unit", "is required (0 refuses every request)")
    with _within(where):
        return RlsRateLimit(**values)
