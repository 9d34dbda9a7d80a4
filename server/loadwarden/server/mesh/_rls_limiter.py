"""The rate-limit service's decisions: request descriptors in, statuses out (no gRPC here).

Each request descriptor is matched to a ``[rls]`` rule (``Matcher``) and
spends its hits (``hits_addend``: the descriptor's own, else the request's, 0 meaning
1) from that rule's buckets: a ``pool`` rule's are the pool's own, so a hit here and an
AcquireSlot of the same caller with the same client key count as one; a
``rate_limit`` rule's are one per caller and request entries. The admission keeps
both (``Admission.take_pool_rate`` / ``take_named_rate``): in this process for the
memory store, in Redis for the redis store, so replicas share them.

The answer is envoyproxy/ratelimit's: a DescriptorStatus per request descriptor
(``current_limit``, ``limit_remaining``, ``duration_until_reset``), OVER_LIMIT overall
when any descriptor is; shadow-mode rules count and answer OK; ``unlimited`` rules
answer OK with 4294967295 remaining; an unknown domain, a descriptor with no entries
and one that matches no rule at its depth answer OK with no limit; and the limit,
remaining and reset headers of the descriptor closest to its limit (an OVER_LIMIT one
first). An empty domain or descriptor list is INVALID_ARGUMENT with envoyproxy's
message (it answers them UNKNOWN); nothing a client sends is INTERNAL.

Token buckets, not fixed windows: a rule allows ``requests_per_unit`` at once and refills
continuously at that rate per unit. ``limit_remaining`` is the whole tokens left (0 when
OVER_LIMIT) and ``duration_until_reset`` (and the reset header, in whole seconds rounded
up) the time until the bucket is full again: where a window would reset.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from loadwarden.policy import NAME_PATTERN, InvalidArgument, RateLimit, RateTaken

from ..engine._core import DecisionCore
from ._rls_config import UNIT_SECONDS, RlsDescriptor, RlsRateLimit, RlsSettings

MAX_UINT32 = 2**32 - 1
# Series counted under a request's own values (detailed_metric) at most; later ones count under the rule.
MAX_DETAILED_SERIES = 1_000
RESULTS = ("within_limit", "over_limit", "shadow_mode")  # each hit is one of these; near_limit is within
# Rates of Envoy's limit overrides (client-supplied) with buckets at once; a new one takes the
# least recently used one's place, whose buckets in this process start full again.
MAX_OVERRIDE_RATES = 16


@dataclass(frozen=True, slots=True)
class Rule:
    """A configured descriptor with a limit, as a request descriptor reaches it.

    Attributes:
        domain: Its domain.
        full_key: ``domain.key_value.key...`` (envoyproxy/ratelimit's stats key).
        path: The (key, value) of each level down to it: what names its buckets.
        rate_limit: Its limit; None when it takes a pool's.
        pool: The pool whose rate limit it takes; "" with ``rate_limit``.
        shadow_mode, detailed_metric: As configured.
    """

    domain: str
    full_key: str
    path: tuple[tuple[str, str], ...]
    rate_limit: RlsRateLimit | None
    pool: str
    shadow_mode: bool
    detailed_metric: bool


@dataclass(slots=True)
class _Level:
    exact: dict[tuple[str, str], _Node] = field(default_factory=dict)
    wildcards: list[tuple[str, str, _Node]] = field(default_factory=list)  # (key, value prefix, node), config order
    any_value: dict[str, _Node] = field(default_factory=dict)


@dataclass(slots=True)
class _Node:
    rule: Rule | None
    children: _Level | None


class Matcher:
    """Finds the rule a request descriptor is limited by (envoyproxy/ratelimit's ``GetLimit``)."""

    __slots__ = ("_domains",)

    def __init__(self, settings: RlsSettings) -> None:
        self._domains = {d.domain: _level(d.domain, d.domain, (), d.descriptors) for d in settings.domains}

    def knows(self, domain: str) -> bool:
        return domain in self._domains

    def match(self, domain: str, entries: Sequence[tuple[str, str]]) -> Rule | None:
        """The rule ``entries`` (a request descriptor's key/value pairs) end at; None when the
        domain is unknown, nothing matches, the match is at another depth, or it has no limit."""
        level = self._domains.get(domain)
        rule = None
        for index, (key, value) in enumerate(entries):
            if level is None:
                break
            node = level.exact.get((key, value)) if value else None
            if node is None:
                node = next((n for k, prefix, n in level.wildcards if k == key and value.startswith(prefix)), None)
            if node is None:
                node = level.any_value.get(key)
            if node is None:
                break
            if index == len(entries) - 1:
                rule = node.rule
            level = node.children
        return rule


def _level(domain: str, parent: str, path: tuple[tuple[str, str], ...], descriptors: Sequence[RlsDescriptor]) -> _Level:
    level = _Level()
    for descriptor in descriptors:
        full_key = f"{parent}.{descriptor.composite}"
        here = (*path, (descriptor.key, descriptor.value))
        rule = None
        if descriptor.rate_limit is not None or descriptor.pool:
            rule = Rule(
                domain,
                full_key,
                here,
                descriptor.rate_limit,
                descriptor.pool,
                descriptor.shadow_mode,
                descriptor.detailed_metric,
            )
        children = _level(domain, full_key, here, descriptor.descriptors) if descriptor.descriptors else None
        node = _Node(rule, children)
        if not descriptor.value:
            level.any_value[descriptor.key] = node
        elif descriptor.value.endswith("*"):
            level.wildcards.append((descriptor.key, descriptor.value[:-1], node))
        else:
            level.exact[(descriptor.key, descriptor.value)] = node
    return level


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A request descriptor: its entries, the tokens it spends, and Envoy's limit override."""

    entries: tuple[tuple[str, str], ...]
    hits: int
    override: tuple[int, str] | None = None  # (requests_per_unit, unit) from the descriptor's ``limit``


@dataclass(frozen=True, slots=True)
class Limit:
    """A ``current_limit``: requests per unit (a UNIT_SECONDS name) and the limit's name."""

    requests_per_unit: int
    unit: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class Status:
    """One descriptor's answer; ``limit`` None when no limit applied (then no reset either)."""

    over: bool
    limit: Limit | None = None
    remaining: int = 0
    reset_s: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The whole answer: the statuses in request order, the overall code, the headers."""

    statuses: tuple[Status, ...]
    over: bool
    headers: tuple[tuple[str, str], ...]


class RlsStats:
    """What was counted, per rule key (``domain.key_value.key``, envoyproxy/ratelimit's stats
    key; with ``detailed_metric`` the request's own values): ``total_hits`` and, summing to
    it, ``within_limit``, ``over_limit`` and ``shadow_mode`` (over the limit, answered OK);
    ``near_limit`` hits are within it but past ``near_limit_ratio``. Keys are configured,
    or detailed ones, at most MAX_DETAILED_SERIES."""

    def __init__(self) -> None:
        self._counts: dict[str, dict[str, int]] = {}
        self.unknown_domain_requests = 0
        self.global_shadow_mode = 0  # overall OVER_LIMIT answered OK by [rls] shadow_mode
        self._detailed = 0

    def key(self, rule: Rule, entries: Sequence[tuple[str, str]]) -> str:
        if not rule.detailed_metric:
            return rule.full_key
        detailed = ".".join((rule.domain, *(f"{k}_{v}" for k, v in entries)))
        if detailed not in self._counts and self._detailed >= MAX_DETAILED_SERIES:
            return rule.full_key
        self._detailed += detailed not in self._counts
        return detailed

    def add(self, key: str, stat: str, hits: int) -> None:
        counts = self._counts.setdefault(key, {})
        counts[stat] = counts.get(stat, 0) + hits

    def get(self, key: str, stat: str) -> int:
        return self._counts.get(key, {}).get(stat, 0)

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {key: dict(counts) for key, counts in self._counts.items()}


def _digest_of(*parts: object) -> str:
    """A fixed-size name for client-supplied parts (bucket keys stay small whatever they send)."""
    return hashlib.blake2b(json.dumps(parts).encode("utf-8"), digest_size=16).hexdigest()


def _client_key(value: str) -> str:
    """The AcquireSlot client key an entry value is; one AcquireSlot cannot send (not a name)
    gets a bucket of its own that no client key can name ('#' is not a name character)."""
    return value if not value or NAME_PATTERN.fullmatch(value) else f"#{_digest_of(value)}"


def _pool_limit(rate: RateLimit, pool: str) -> Limit:
    """A pool's rate as a ``current_limit``: in the smallest unit it fits, at the same rate."""
    for unit, seconds in UNIT_SECONDS.items():
        if rate.per_s <= seconds + 1e-9 or unit == "year":
            return Limit(max(1, int(rate.count * seconds / rate.per_s + 1e-9)), unit, f"pool {pool}")
    raise AssertionError("unreachable: year is the last unit")  # pragma: no cover


class RlsLimiter:
    """The decisions: descriptors in, statuses out, over a core's admission (no gRPC here)."""

    def __init__(self, settings: RlsSettings, stats: RlsStats) -> None:
        self.settings = settings
        self.stats = stats
        self._matcher = Matcher(settings)
        # (domain, requests per unit, unit) -> its place, least recently used first: a place
        # names the admission's rate, so at most MAX_OVERRIDE_RATES exist whatever Envoy sends.
        self._overrides: OrderedDict[tuple[str, int, str], int] = OrderedDict()

    async def decide(self, core: DecisionCore, domain: str, descriptors: Sequence[Descriptor], caller: str) -> Verdict:
        """Spends every descriptor's hits and answers for each.

        Raises:
            InvalidArgument: an empty domain or descriptor list.
            Unavailable: the shared buckets are unreachable and rate limits fail closed.
        """
        if not domain:
            raise InvalidArgument("domain", "rate limit domain must not be empty")
        if not descriptors:
            raise InvalidArgument("descriptors", "rate limit descriptor list must not be empty")
        known = self._matcher.knows(domain)
        if not known:
            self.stats.unknown_domain_requests += 1
        rules = [self._matcher.match(domain, d.entries) if known and d.override is None else None for d in descriptors]
        replaced = {name for rule in rules if rule and rule.rate_limit for name in rule.rate_limit.replaces}
        statuses = []
        for descriptor, rule in zip(descriptors, rules, strict=True):
            if rule is not None and rule.rate_limit is not None and rule.rate_limit.name in replaced:
                rule = None
            if known and descriptor.override is not None:
                statuses.append(await self._override(core, domain, descriptor, caller))
            elif rule is None:
                statuses.append(Status(False))
            else:
                statuses.append(await self._spend(core, rule, descriptor, caller))
        over = any(status.over for status in statuses)
        headers = self._headers(statuses) if self.settings.response_headers else ()
        if over and self.settings.shadow_mode:
            self.stats.global_shadow_mode += 1
            over = False
        return Verdict(tuple(statuses), over, headers)

    async def _spend(self, core: DecisionCore, rule: Rule, descriptor: Descriptor, caller: str) -> Status:
        hits, key = descriptor.hits, self.stats.key(rule, descriptor.entries)
        limit_cfg, pool = rule.rate_limit, None
        if limit_cfg is not None and limit_cfg.unlimited:
            self.stats.add(key, "total_hits", hits)
            self.stats.add(key, "within_limit", hits)
            return Status(False, remaining=MAX_UINT32)
        if limit_cfg is None:  # the pool's own buckets: AcquireSlot's
            pool = core.find_pool(rule.pool)
            rate = pool.slots.settings.rate_limit if pool is not None else None
            if pool is None or rate is None:
                return Status(False)  # no limit applies (now): the pool is gone or has no rate limit
            client_key = _client_key(descriptor.entries[-1][1])
            taken = await core.admission.take_pool_rate(pool.slots, client_key, caller, hits)
            limit, capacity = _pool_limit(rate, rule.pool), rate.burst
        else:
            limit = Limit(limit_cfg.requests_per_unit, limit_cfg.unit.lower(), limit_cfg.name)
            name = f"rls.{_digest_of(rule.domain, rule.path)}"
            taken = await self._take(core, name, limit, descriptor, caller, rule.domain)
            capacity = limit_cfg.requests_per_unit
        if taken is None:
            return Status(False)  # the shared store is unreachable and rate limits fail open
        self.stats.add(key, "total_hits", hits)
        over = taken.wait_s > 0
        if not over:
            self.stats.add(key, "within_limit", hits)
            if capacity - taken.remaining > math.floor(capacity * self.settings.near_limit_ratio):
                self.stats.add(key, "near_limit", hits)
            return Status(False, limit, min(taken.remaining, MAX_UINT32), taken.full_in_s)
        if rule.shadow_mode:
            self.stats.add(key, "shadow_mode", hits)
            return Status(False, limit, 0, taken.full_in_s)
        self.stats.add(key, "over_limit", hits)
        if pool is not None:
            pool.slots.rate_limited_total += 1  # refused by the pool's rate limit, as AcquireSlot counts it
        return Status(True, limit, 0, taken.full_in_s)

    async def _take(
        self, core: DecisionCore, name: str, limit: Limit, descriptor: Descriptor, caller: str, domain: str
    ) -> RateTaken | None:
        """Spends from the caller's bucket for these entries, at this rate in this domain, of
        the admission's rate ``name``."""
        per_s = float(UNIT_SECONDS[limit.unit])
        if not limit.requests_per_unit:  # 0 per unit refuses everything; no bucket needed
            return RateTaken(math.inf, 0, per_s)
        rate = RateLimit(limit.requests_per_unit, per_s, limit.requests_per_unit)
        key = _digest_of(domain, caller, descriptor.entries, limit.requests_per_unit, limit.unit)
        return await core.admission.take_named_rate(name, rate, key, descriptor.hits, self.settings.max_keys)

    async def _override(self, core: DecisionCore, domain: str, descriptor: Descriptor, caller: str) -> Status:
        """Envoy's ``limit`` override: that rate instead of the config's, never in shadow mode."""
        assert descriptor.override is not None
        requests, unit = descriptor.override
        limit = Limit(requests, unit)
        taken = await self._take(core, self._override_name(domain, requests, unit), limit, descriptor, caller, domain)
        if taken is None:
            return Status(False)
        over = taken.wait_s > 0
        return Status(over, limit, 0 if over else min(taken.remaining, MAX_UINT32), taken.full_in_s)

    def _override_name(self, domain: str, requests: int, unit: str) -> str:
        """The admission's name for an override rate: one of MAX_OVERRIDE_RATES places (taken
        over by another rate, the place's buckets are made anew; in Redis the bucket keys
        hold the rate, so another rate's buckets are other keys)."""
        rate = (domain, requests, unit)
        place = self._overrides.get(rate)
        if place is None:
            if len(self._overrides) >= MAX_OVERRIDE_RATES:
                _, place = self._overrides.popitem(last=False)
            else:
                place = len(self._overrides)
            self._overrides[rate] = place
        self._overrides.move_to_end(rate)
        return f"rls-override.{place}"

    def _headers(self, statuses: Sequence[Status]) -> tuple[tuple[str, str], ...]:
        """envoyproxy/ratelimit's: of the descriptor with the fewest remaining (the last
        OVER_LIMIT one, if any), its limit, remaining and seconds until reset."""
        closest, least = None, MAX_UINT32
        for status in statuses:
            if status.limit is not None and status.remaining < least:
                closest, least = status, status.remaining
            if status.over:
                closest, least = status, 0
        if closest is None or closest.limit is None:
            return ()
        reset = max(0, math.ceil((closest.reset_s or 0.0) - 1e-9))
        settings = self.settings
        return (
            (settings.limit_header, str(closest.limit.requests_per_unit)),
            (settings.remaining_header, str(closest.remaining)),
            (settings.reset_header, str(reset)),
        )
