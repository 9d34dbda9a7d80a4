"""[rls]: the config's shape and errors, the matching rules, and the decisions over a core.

The matching cases are envoyproxy/ratelimit's README examples; the decisions run on a
DecisionCore with a manual clock (the memory store: the kernel's buckets), no sockets.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from loadwarden.policy import ManualClock, PoolSettings, RateLimit
from loadwarden.server import ConfigError
from loadwarden.server.app._service import build_core
from loadwarden.server.app._settings import MonitorSettings, ServiceConfig
from loadwarden.server.engine._core import DecisionCore
from loadwarden.server.mesh._rls_config import RlsDescriptor, RlsDomain, RlsRateLimit, RlsSettings, parse_rls
from loadwarden.server.mesh._rls_limiter import (
    MAX_OVERRIDE_RATES,
    MAX_UINT32,
    Descriptor,
    Limit,
    Matcher,
    RlsLimiter,
    RlsStats,
    Status,
)

README_EXAMPLE = """
[rls]
enabled = true

[[rls.domains]]
domain = "edge"

  [[rls.domains.descriptors]]
  key = "remote_address"
  rate_limit = { unit = "second", requests_per_unit = 10 }

  [[rls.domains.descriptors]]
  key = "remote_address"
  value = "50.0.0.5"
  rate_limit = { unit = "second", requests_per_unit = 0 }

  [[rls.domains.descriptors]]
  key = "message_type"
  value = "marketing"

    [[rls.domains.descriptors.descriptors]]
    key = "to_number"
    rate_limit = { unit = "day", requests_per_unit = 5 }

  [[rls.domains.descriptors]]
  key = "to_number"
  rate_limit = { unit = "day", requests_per_unit = 100 }

  [[rls.domains.descriptors]]
  key = "path"
  value = "/api/*"
  shadow_mode = true
  rate_limit = { unit = "minute", requests_per_unit = 20 }

  [[rls.domains.descriptors]]
  key = "client_id"
  pool = "api"

  [[rls.domains.descriptors]]
  key = "ldap"
  rate_limit = { unlimited = true }
"""


def settings_of(text: str) -> RlsSettings:
    return parse_rls(tomllib.loads(text)["rls"])


# --- the shape --------------------------------------------------------------------------------


def test_the_readme_example_reads_as_nested_frozen_settings() -> None:
    settings = settings_of(README_EXAMPLE)

    assert settings.enabled
    (edge,) = settings.domains
    assert edge.domain == "edge"
    assert [d.composite for d in edge.descriptors] == [
        "remote_address",
        "remote_address_50.0.0.5",
        "message_type_marketing",
        "to_number",
        "path_/api/*",
        "client_id",
        "ldap",
    ]
    assert edge.descriptors[2].descriptors == (
        RlsDescriptor("to_number", rate_limit=RlsRateLimit(unit="day", requests_per_unit=5)),
    )
    assert edge.descriptors[4].shadow_mode
    assert edge.descriptors[5].pool == "api"
    assert edge.descriptors[6].rate_limit == RlsRateLimit(unlimited=True)
    assert settings.limit_header == "x-ratelimit-limit"
    with pytest.raises(AttributeError):
        settings.enabled = False  # type: ignore[misc]  # frozen on purpose


def test_an_empty_table_is_off_with_envoyproxys_defaults_and_the_issues_header_names() -> None:
    settings = parse_rls({})

    assert settings == RlsSettings()
    assert not settings.enabled and not settings.shadow_mode and settings.response_headers
    assert (settings.limit_header, settings.remaining_header, settings.reset_header) == (
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    )
    assert (settings.max_keys, settings.near_limit_ratio) == (10_000, 0.8)


def test_units_are_case_insensitive_and_replaces_take_envoyproxys_tables_or_names() -> None:
    settings = parse_rls(
        {
            "domains": [
                {
                    "domain": "d",
                    "descriptors": [
                        {"key": "a", "rate_limit": {"unit": "MINUTE", "requests_per_unit": 1, "name": "x"}},
                        {
                            "key": "b",
                            "rate_limit": {"unit": "Week", "requests_per_unit": 1, "replaces": [{"name": "x"}]},
                        },
                        {"key": "c", "rate_limit": {"unit": "year", "requests_per_unit": 1, "replaces": ["x"]}},
                    ],
                }
            ]
        }
    )

    a, b, c = settings.domains[0].descriptors
    assert a.rate_limit is not None and a.rate_limit.per_s == 60
    assert b.rate_limit is not None and b.rate_limit.replaces == ("x",) and b.rate_limit.per_s == 604_800
    assert c.rate_limit is not None and c.rate_limit.replaces == ("x",)


def domains(*descriptors: dict[str, Any], domain: str = "d") -> dict[str, Any]:
    return {"domains": [{"domain": domain, "descriptors": list(descriptors)}]}


LIMIT = {"unit": "second", "requests_per_unit": 1}


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        ({"enable": True}, "rls.enable", "unknown key; valid keys: domains, enabled, limit_header"),
        ({"enabled": "yes"}, "rls.enabled", "must be true or false"),
        ({"max_keys": 0}, "rls.max_keys", "1-1000000"),
        ({"near_limit_ratio": 1.5}, "rls.near_limit_ratio", "0-1"),
        ({"reset_header": "x reset"}, "rls.reset_header", "HTTP header name"),
        ({"domains": {"domain": "d"}}, "rls.domains", "must be an array of tables"),
        ({"domains": [{"descriptors": []}]}, "rls.domains[0].domain", "must not be empty"),
        ({"domains": [{"domain": "d"}, {"domain": "d"}]}, "rls.domains[1].domain", "duplicate domain 'd'"),
        (domains({"value": "v"}), "rls.domains[0].descriptors[0].key", "descriptor has empty key"),
        (
            domains({"key": "k", "rate_limit": LIMIT, "shadow": True}),
            "rls.domains[0].descriptors[0].shadow",
            "unknown key",
        ),
        (
            domains({"key": "k", "rate_limit": {"unit": "fortnight", "requests_per_unit": 1}}),
            "rls.domains[0].descriptors[0].rate_limit.unit",
            "invalid rate limit unit 'fortnight'; valid units: second, minute, hour, day, week, month, year",
        ),
        (
            domains({"key": "k", "rate_limit": {"unit": "second"}}),
            "rls.domains[0].descriptors[0].rate_limit.requests_per_unit",
            "is required",
        ),
        (
            domains({"key": "k", "rate_limit": {"unit": "second", "requests_per_unit": -1}}),
            "rls.domains[0].descriptors[0].rate_limit.requests_per_unit",
            "0-4294967295",
        ),
        (
            domains({"key": "k", "rate_limit": {"unlimited": True, "unit": "second"}}),
            "rls.domains[0].descriptors[0].rate_limit.unit",
            "should not specify rate limit unit when unlimited",
        ),
        (
            domains({"key": "k", "rate_limit": {"name": "n", "replaces": [{"name": "n"}], **LIMIT}}),
            "rls.domains[0].descriptors[0].rate_limit.replaces[0]",
            "replaces should not contain name of same descriptor",
        ),
        (
            domains({"key": "k", "rate_limit": {"replaces": [{"name": ""}], **LIMIT}}),
            "rls.domains[0].descriptors[0].rate_limit.replaces[0]",
            "must not be empty",
        ),
        (
            domains({"key": "k", "pool": "api", "rate_limit": LIMIT}),
            "rls.domains[0].descriptors[0].pool",
            "from rate_limit or from a pool, not both",
        ),
        (domains({"key": "k", "pool": "no spaces"}), "rls.domains[0].descriptors[0].pool", "pool name"),
        (
            domains({"key": "k", "rate_limit": LIMIT}, {"key": "j"}, {"key": "k", "rate_limit": LIMIT}),
            "rls.domains[0].descriptors[2]",
            "duplicate descriptor composite key 'k'",
        ),
        (
            domains({"key": "a", "descriptors": [{"key": "b"}, {"key": "c", "rate_limit": {"unit": "hour"}}]}),
            "rls.domains[0].descriptors[0].descriptors[1].rate_limit.requests_per_unit",
            "is required",
        ),
        (
            domains({"key": "a", "descriptors": [{"key": "b", "descriptors": [{"key": "c", "value": 7}]}]}),
            "rls.domains[0].descriptors[0].descriptors[0].descriptors[0].value",
            "must be a string, got 7",
        ),
        (
            domains({"key": "k", "rate_limit": "10/second"}),
            "rls.domains[0].descriptors[0].rate_limit",
            "must be a table",
        ),
    ],
)
def test_every_bad_value_names_its_dotted_key(table: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_rls(table)

    assert caught.value.key == key
    assert problem in str(caught.value)


def test_the_where_argument_prefixes_every_key() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_rls(domains({"key": ""}), where="mesh.rls")

    assert caught.value.key == "mesh.rls.domains[0].descriptors[0].key"


def test_the_dataclasses_check_themselves_when_built_in_code() -> None:
    with pytest.raises(ConfigError, match=r"^unit: invalid rate limit unit"):
        RlsRateLimit(unit="jiffy", requests_per_unit=1)
    with pytest.raises(ConfigError, match=r"^descriptors\[1\]: duplicate descriptor composite key 'k_v'"):
        RlsDomain("d", (RlsDescriptor("k", "v"), RlsDescriptor("k", "v")))


# --- matching ---------------------------------------------------------------------------------


@pytest.fixture
def matcher() -> Matcher:
    return Matcher(settings_of(README_EXAMPLE))


@pytest.mark.parametrize(
    ("entries", "full_key"),
    [
        ([("remote_address", "50.0.0.1")], "edge.remote_address"),  # no value configured: any value
        ([("remote_address", "50.0.0.5")], "edge.remote_address_50.0.0.5"),  # key/value before key alone
        ([("remote_address", "")], "edge.remote_address"),
        ([("message_type", "marketing"), ("to_number", "2061111111")], "edge.message_type_marketing.to_number"),
        ([("to_number", "2061111111")], "edge.to_number"),
        ([("path", "/api/users")], "edge.path_/api/*"),  # a trailing * matches the prefix
        ([("client_id", "acme")], "edge.client_id"),
        ([("ldap", "x")], "edge.ldap"),
    ],
)
def test_a_descriptor_reaches_its_most_specific_rule(
    matcher: Matcher, entries: list[tuple[str, str]], full_key: str
) -> None:
    rule = matcher.match("edge", entries)

    assert rule is not None
    assert rule.full_key == full_key


@pytest.mark.parametrize(
    ("domain", "entries"),
    [
        ("nope", [("remote_address", "1.2.3.4")]),  # unknown domain
        ("edge", []),  # no entries
        ("edge", [("unknown", "x")]),
        ("edge", [("message_type", "marketing")]),  # a placeholder with no limit of its own
        ("edge", [("message_type", "other"), ("to_number", "1")]),  # the first level does not match
        ("edge", [("remote_address", "1.2.3.4"), ("extra", "x")]),  # deeper than the config (example 4)
        ("edge", [("path", "/apx")]),
        ("edge", [("REMOTE_ADDRESS", "1.2.3.4")]),  # descriptors are case-sensitive
    ],
)
def test_no_rule_is_no_limit(matcher: Matcher, domain: str, entries: list[tuple[str, str]]) -> None:
    assert matcher.match(domain, entries) is None


def test_an_exact_value_without_a_limit_hides_the_keys_default() -> None:
    settings = parse_rls(
        domains(
            {"key": "k", "rate_limit": LIMIT},
            {"key": "k", "value": "free"},  # whitelisted: matched, no limit (envoyproxy/ratelimit)
        )
    )

    assert Matcher(settings).match("d", [("k", "free")]) is None
    assert Matcher(settings).match("d", [("k", "other")]) is not None


# --- decisions over a core (memory store) ------------------------------------------------------

TOKEN_OWNER = "envoy"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def core(clock: ManualClock) -> DecisionCore:
    config = ServiceConfig(monitor=MonitorSettings(enabled=False))
    made = build_core(config, clock=clock)
    made.configure_pool(PoolSettings(name="api", rate_limit=RateLimit(count=3, per_s=60.0, burst=3)), None)
    return made


def limiter(text: str = README_EXAMPLE) -> RlsLimiter:
    return RlsLimiter(settings_of(text), RlsStats())


def one(key: str, value: str, hits: int = 1) -> list[Descriptor]:
    return [Descriptor(((key, value),), hits)]


async def test_a_rule_answers_ok_with_what_is_left_then_over_limit_and_refills(
    core: DecisionCore, clock: ManualClock
) -> None:
    rls = limiter()
    answers = [await rls.decide(core, "edge", one("to_number", "1"), TOKEN_OWNER) for _ in range(3)]
    assert [a.statuses[0].remaining for a in answers] == [99, 98, 97]
    assert answers[0].statuses[0] == Status(False, Limit(100, "day"), 99, 864.0)  # one token: 1/100 of a day

    day = limiter()
    for _ in range(5):
        await day.decide(core, "edge", [Descriptor((("message_type", "marketing"), ("to_number", "2")), 1)], "c")
    over = await day.decide(core, "edge", [Descriptor((("message_type", "marketing"), ("to_number", "2")), 1)], "c")
    assert over.over and over.statuses[0] == Status(True, Limit(5, "day"), 0, 86_400.0)
    assert over.headers == (("x-ratelimit-limit", "5"), ("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "86400"))

    clock.advance(86_400 / 5)  # one token back
    again = await day.decide(core, "edge", [Descriptor((("message_type", "marketing"), ("to_number", "2")), 1)], "c")
    assert not again.over


async def test_hits_addend_spends_that_many_and_zero_only_checks(core: DecisionCore) -> None:
    rls = limiter()

    assert (await rls.decide(core, "edge", one("to_number", "9", hits=60), "c")).statuses[0].remaining == 40
    assert (await rls.decide(core, "edge", one("to_number", "9", hits=0), "c")).statuses[0].remaining == 40
    assert (await rls.decide(core, "edge", one("to_number", "9", hits=41), "c")).over
    assert (await rls.decide(core, "edge", one("to_number", "9", hits=40), "c")).statuses[0].remaining == 0
    assert (await rls.decide(core, "edge", one("to_number", "9", hits=0), "c")).over  # empty: the next would fail


async def test_each_distinct_value_and_each_caller_has_its_own_bucket(core: DecisionCore) -> None:
    rls = limiter()
    for _ in range(10):
        await rls.decide(core, "edge", one("remote_address", "10.0.0.1"), "c")

    assert (await rls.decide(core, "edge", one("remote_address", "10.0.0.1"), "c")).over
    assert not (await rls.decide(core, "edge", one("remote_address", "10.0.0.2"), "c")).over
    assert not (await rls.decide(core, "edge", one("remote_address", "10.0.0.1"), "another caller")).over


async def test_zero_per_unit_refuses_and_unlimited_never_does(core: DecisionCore) -> None:
    rls = limiter()

    blocked = await rls.decide(core, "edge", one("remote_address", "50.0.0.5"), "c")
    assert blocked.over and blocked.statuses[0] == Status(True, Limit(0, "second"), 0, 1.0)
    free = await rls.decide(core, "edge", one("ldap", "x", hits=10**9), "c")
    assert not free.over and free.statuses[0] == Status(False, None, MAX_UINT32, None)
    assert free.headers == ()  # no limit to report


async def test_shadow_mode_counts_and_answers_ok(core: DecisionCore) -> None:
    rls = limiter()
    answers = [await rls.decide(core, "edge", one("path", "/api/x"), "c") for _ in range(25)]

    assert not any(a.over for a in answers)
    assert answers[-1].statuses[0] == Status(False, Limit(20, "minute"), 0, 60.0)
    assert rls.stats.get("edge.path_/api/*", "shadow_mode") == 5
    assert rls.stats.get("edge.path_/api/*", "within_limit") == 20
    assert rls.stats.get("edge.path_/api/*", "over_limit") == 0


async def test_global_shadow_mode_keeps_the_statuses_and_answers_ok(core: DecisionCore) -> None:
    rls = limiter(README_EXAMPLE.replace("enabled = true", "enabled = true\nshadow_mode = true"))

    answer = await rls.decide(core, "edge", one("remote_address", "50.0.0.5"), "c")

    assert not answer.over and answer.statuses[0].over
    assert rls.stats.global_shadow_mode == 1


async def test_a_pool_rule_spends_from_the_pools_own_buckets(core: DecisionCore) -> None:
    rls = limiter()
    pool = core.pool("api")
    assert pool.slots.rate is not None
    pool.slots.rate.try_acquire("acme", core.clock.monotonic(), "envoy")  # an AcquireSlot's token

    first = await rls.decide(core, "edge", one("client_id", "acme"), "envoy")
    second = await rls.decide(core, "edge", one("client_id", "acme"), "envoy")
    third = await rls.decide(core, "edge", one("client_id", "acme"), "envoy")

    assert first.statuses[0] == Status(False, Limit(3, "minute", "pool api"), 1, 40.0)
    assert second.statuses[0] == Status(False, Limit(3, "minute", "pool api"), 0, 60.0)
    assert third.statuses[0].over
    assert pool.slots.rate_limited_total == 1
    assert pool.slots.rate.try_acquire("acme", core.clock.monotonic(), "envoy") > 0  # AcquireSlot sees it too


async def test_a_pool_rule_for_a_value_no_client_key_can_be_has_its_own_bucket(core: DecisionCore) -> None:
    rls = limiter()  # the anonymous caller: one bucket per client key, no caller's bucket over them
    for _ in range(3):
        await rls.decide(core, "edge", one("client_id", "not a name?"), "")

    assert (await rls.decide(core, "edge", one("client_id", "not a name?"), "")).over
    assert not (await rls.decide(core, "edge", one("client_id", "not-a-name"), "")).over


async def test_a_pool_without_a_rate_limit_or_gone_is_no_limit(core: DecisionCore) -> None:
    rls = limiter()
    core.configure_pool(PoolSettings(name="api"), None)

    assert (await rls.decide(core, "edge", one("client_id", "acme"), "c")).statuses[0] == Status(False)
    core.delete_pool("api")
    assert (await rls.decide(core, "edge", one("client_id", "acme"), "c")).statuses[0] == Status(False)


async def test_headers_come_from_the_descriptor_closest_to_its_limit(core: DecisionCore) -> None:
    rls = limiter()
    await rls.decide(core, "edge", one("to_number", "1", hits=95), "c")

    answer = await rls.decide(
        core, "edge", [*one("remote_address", "1"), *one("to_number", "1"), *one("unknown", "x")], "c"
    )

    assert [s.remaining for s in answer.statuses] == [9, 4, 0]
    assert answer.headers == (
        ("x-ratelimit-limit", "100"),
        ("x-ratelimit-remaining", "4"),
        ("x-ratelimit-reset", "82944"),
    )


async def test_replaces_drops_the_replaced_limit_when_both_match() -> None:
    text = """
    [[rls.domains]]
    domain = "d"
      [[rls.domains.descriptors]]
      key = "k1"
        [[rls.domains.descriptors.descriptors]]
        key = "user"
        rate_limit = { name = "specific", unit = "second", requests_per_unit = 5 }
      [[rls.domains.descriptors]]
      key = "k2"
        [[rls.domains.descriptors.descriptors]]
        key = "user"
        rate_limit = { replaces = [{ name = "specific" }], unit = "second", requests_per_unit = 10 }
    """
    rls = limiter(text)
    clock = ManualClock()
    made = build_core(ServiceConfig(monitor=MonitorSettings(enabled=False)), clock=clock)
    both = [Descriptor((("k1", "a"), ("user", "u")), 1), Descriptor((("k2", "b"), ("user", "u")), 1)]

    answer = await rls.decide(made, "d", both, "c")

    assert answer.statuses[0] == Status(False)
    assert answer.statuses[1].limit == Limit(10, "second")


async def test_envoys_override_sets_the_rate(core: DecisionCore) -> None:
    rls = limiter()
    override = [Descriptor((("anything", "x"),), 1, (2, "hour"))]

    answers = [await rls.decide(core, "edge", override, "c") for _ in range(3)]

    assert [a.over for a in answers] == [False, False, True]
    assert answers[0].statuses[0] == Status(False, Limit(2, "hour"), 1, 1800.0)
    unknown = await rls.decide(core, "nope", override, "c")
    assert unknown.statuses[0] == Status(False)  # an unknown domain has no limits, overridden or not


async def test_override_rates_keep_a_bounded_number_of_bucket_tables(core: DecisionCore) -> None:
    rls = limiter()
    for requests in range(1, 3 * MAX_OVERRIDE_RATES):
        await rls.decide(core, "edge", [Descriptor((("k", "v"),), 1, (requests, "minute"))], "c")

    assert len(core.admission._named_rates) == MAX_OVERRIDE_RATES
    # The latest rates keep their buckets: the one just used is down a token.
    last = await rls.decide(core, "edge", [Descriptor((("k", "v"),), 1, (3 * MAX_OVERRIDE_RATES - 1, "minute"))], "c")
    assert last.statuses[0].remaining == 3 * MAX_OVERRIDE_RATES - 3


async def test_detailed_metric_counts_under_the_requests_values(core: DecisionCore) -> None:
    text = README_EXAMPLE.replace(
        'key = "to_number"\n  rate_limit', 'key = "to_number"\n  detailed_metric = true\n  rate_limit'
    )
    rls = limiter(text)

    await rls.decide(core, "edge", one("to_number", "555"), "c")

    assert rls.stats.get("edge.to_number_555", "total_hits") == 1
    assert rls.stats.get("edge.to_number", "total_hits") == 0


@pytest.mark.parametrize(
    ("domain", "descriptors", "problem"),
    [
        ("", one("k", "v"), "domain: rate limit domain must not be empty"),
        ("edge", [], "descriptors: rate limit descriptor list must not be empty"),
    ],
)
async def test_an_empty_domain_or_descriptor_list_is_envoyproxys_error(
    core: DecisionCore, domain: str, descriptors: list[Descriptor], problem: str
) -> None:
    from loadwarden.policy import InvalidArgument

    with pytest.raises(InvalidArgument, match=problem):
        await limiter().decide(core, domain, descriptors, "c")


async def test_an_unknown_domain_is_ok_with_no_limit_and_counted(core: DecisionCore) -> None:
    rls = limiter()

    answer = await rls.decide(core, "nope", [*one("k", "v"), Descriptor((), 1)], "c")

    assert answer == answer.__class__((Status(False), Status(False)), False, ())
    assert rls.stats.unknown_domain_requests == 1


@pytest.mark.parametrize(
    ("rate", "limit"),
    [
        (RateLimit(count=3, per_s=60.0, burst=3), Limit(3, "minute", "pool api")),
        (RateLimit(count=10, per_s=15.0, burst=10), Limit(40, "minute", "pool api")),  # the same rate
        (RateLimit(count=5, per_s=0.5, burst=5), Limit(10, "second", "pool api")),
        (RateLimit(count=100, per_s=7200.0, burst=100), Limit(1_200, "day", "pool api")),
    ],
)
def test_a_pools_rate_is_reported_in_the_smallest_unit_it_fits(rate: RateLimit, limit: Limit) -> None:
    from loadwarden.server.mesh._rls_limiter import _pool_limit

    assert _pool_limit(rate, "api") == limit
