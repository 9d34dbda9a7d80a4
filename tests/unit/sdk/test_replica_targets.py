"""Several replica addresses: the channel target a client builds, and what its breaker counts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from loadwarden.sdk import (
    AsyncClient,
    BreakerConfig,
    BreakerState,
    Client,
    DeadlineExceededError,
    RetryConfig,
    UnavailableError,
)
from loadwarden.sdk._base import CHANNEL_OPTIONS, ClientOptions
from loadwarden.sdk._targets import MAX_REPLICAS, ChannelTarget, channel_target
from loadwarden.v1 import decision_pb2 as _pb

from .conftest import FakeChannel, as_aio_channel, as_channel

ROUND_ROBIN = '{"loadBalancingConfig":[{"round_robin":{}}]}'
NEVER_S = 3600.0
FAST_RETRY = RetryConfig(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.002)
TRIP_AT_ONCE = BreakerConfig(consecutive_failures=1, open_wait_s=NEVER_S, max_open_wait_s=NEVER_S)


def options_of(target: ChannelTarget) -> dict[str, Any]:
    return dict(target.channel_options(()))


# --- the target a list becomes ---------------------------------------------------------


@pytest.mark.parametrize("kind", [list, tuple])
def test_a_list_of_ipv4_addresses_becomes_one_static_target_spread_round_robin(kind: type) -> None:
    target = channel_target(kind(["127.0.0.1:5001", "127.0.0.1:5002", "10.0.0.7:50051"]))

    assert target.target == "ipv4:127.0.0.1:5001,127.0.0.1:5002,10.0.0.7:50051"
    assert target.load_balancing == "round_robin"
    assert target.service_config == ROUND_ROBIN
    assert json.loads(ROUND_ROBIN) == {"loadBalancingConfig": [{"round_robin": {}}]}


def test_a_list_of_ipv6_addresses_becomes_an_ipv6_target_in_normal_form() -> None:
    target = channel_target(["[::1]:5001", "[0:0:0:0:0:0:0:1]:5002", "[2001:DB8::7]:50051"])

    assert target.target == "ipv6:[::1]:5001,[::1]:5002,[2001:db8::7]:50051"
    assert target.service_config == ROUND_ROBIN


def test_a_list_channel_carries_the_service_config_and_its_first_address_as_authority() -> None:
    # The authority is what TLS checks the certificate against: without it gRPC would
    # use the whole "a,b" list, which no certificate names.
    target = channel_target(["127.0.0.1:5001", "127.0.0.1:5002"])

    assert options_of(target) == {
        "grpc.service_config": ROUND_ROBIN,
        "grpc.service_config_disable_resolution": 1,
        "grpc.default_authority": "127.0.0.1:5001",
    }
    assert target.channel_options(CHANNEL_OPTIONS)[: len(CHANNEL_OPTIONS)] == CHANNEL_OPTIONS


def test_a_one_address_list_is_a_replica_list_too() -> None:
    target = channel_target(["127.0.0.1:5001"])

    assert (target.target, target.service_config) == ("ipv4:127.0.0.1:5001", ROUND_ROBIN)


def test_a_list_may_ask_for_pick_first_and_then_carries_no_service_config() -> None:
    target = channel_target(["127.0.0.1:5001", "127.0.0.1:5002"], "pick_first")

    assert target.target == "ipv4:127.0.0.1:5001,127.0.0.1:5002"
    assert target.service_config is None
    assert "grpc.service_config" not in options_of(target)


# --- one string: today's behaviour ------------------------------------------------------


@pytest.mark.parametrize("given", ["127.0.0.1:50051", "localhost:50051", "dns:///loadwarden.internal:50051"])
def test_a_single_string_is_dialled_exactly_as_given_with_no_extra_options(given: str) -> None:
    target = channel_target(given)

    assert (target.target, target.load_balancing, target.authority) == (given, "pick_first", None)
    assert target.service_config is None
    assert target.channel_options(CHANNEL_OPTIONS) == CHANNEL_OPTIONS


def test_a_dns_name_is_spread_round_robin_when_asked() -> None:
    target = channel_target("dns:///loadwarden.internal:50051", "round_robin")

    assert target.target == "dns:///loadwarden.internal:50051"
    assert options_of(target) == {"grpc.service_config": ROUND_ROBIN, "grpc.service_config_disable_resolution": 1}


def test_client_options_hold_the_built_target() -> None:
    common: dict[str, Any] = {
        "timeout_s": 1.0,
        "outcome_batch_size": 1,
        "outcome_flush_interval_s": 1.0,
        "outcome_buffer_size": 1,
    }
    single = ClientOptions(target="127.0.0.1:50051", **common)
    several = ClientOptions(target=["127.0.0.1:5001", "127.0.0.1:5002"], **common)

    assert single.channel == ChannelTarget("127.0.0.1:50051", "pick_first")
    assert several.channel.target == "ipv4:127.0.0.1:5001,127.0.0.1:5002"


def test_one_breaker_per_method_guards_the_replicas_as_a_whole() -> None:
    client = AsyncClient(["127.0.0.1:5001", "127.0.0.1:5002"])  # opens its channel at its first call only
    breaker = client.breaker("SelectServer")

    assert breaker is not None and breaker.name == "SelectServer@ipv4:127.0.0.1:5001,127.0.0.1:5002"
    assert client._channel is None  # no socket was opened


# --- validation: errors name the parameter ----------------------------------------------


@pytest.mark.parametrize(
    ("target", "names"),
    [
        ("", "target must be a non-empty"),
        ([], "target must hold at least one"),
        ((), "target must hold at least one"),
        (None, "target must be a 'host:port' string or a list/tuple"),
        ({"127.0.0.1:5001"}, "target must be a 'host:port' string or a list/tuple"),
        (b"127.0.0.1:5001", "target must be a 'host:port' string or a list/tuple"),
        (["127.0.0.1:5001", 5002], "target[1] must be a 'host:port' string"),
        (["127.0.0.1:5001", None], "target[1] must be a 'host:port' string"),
        (["127.0.0.1"], "target[0] must be 'host:port' with a port in 1-65535"),
        (["127.0.0.1:"], "target[0] must be 'host:port'"),
        ([":5001"], "target[0] must be 'host:port'"),
        (["127.0.0.1:0"], "target[0] must be 'host:port' with a port in 1-65535"),
        (["127.0.0.1:65536"], "target[0] must be 'host:port' with a port in 1-65535"),
        (["127.0.0.1:+80"], "target[0] must be 'host:port'"),
        (["127.0.0.1:5001", "localhost:5002"], "target[1] must be an IP address and port"),
        (["::1:5001"], "target[0] must put an IPv6 address in brackets"),
        (["[127.0.0.1]:5001"], "target[0] must not put an IPv4 address in brackets"),
        (["[fe80::1%eth0]:5001"], "target[0] must not carry an IPv6 zone id"),
        (["127.0.0.1:5001", "[::1]:5002"], "target must not mix IPv4 and IPv6"),
        (["127.0.0.1:5001", "127.0.0.1:5002", "127.0.0.1:05001"], "target[2] repeats the address '127.0.0.1:5001'"),
        (["127.0.0.1:5001"] * (MAX_REPLICAS + 1), f"target must hold at most {MAX_REPLICAS}"),
    ],
)
def test_a_malformed_target_is_refused_naming_it(target: Any, names: str) -> None:
    for construct in (channel_target, Client, AsyncClient):
        with pytest.raises(ValueError, match="^" + re.escape(names)):
            construct(target)


def test_a_host_name_in_a_list_points_to_the_dns_target() -> None:
    with pytest.raises(ValueError, match="dns:///name:port' and load_balancing='round_robin'"):
        channel_target(["loadwarden.internal:50051"])


@pytest.mark.parametrize("policy", ["roundrobin", "ROUND_ROBIN", "", 1, "weighted_round_robin"])
def test_an_unknown_load_balancing_policy_is_refused_naming_it(policy: Any) -> None:
    for construct in (Client, AsyncClient):
        with pytest.raises(ValueError, match=r"^load_balancing must be one of 'pick_first', 'round_robin' or None"):
            construct(["127.0.0.1:5001"], load_balancing=policy)


# --- the breaker judges calls, not attempts --------------------------------------------


def unavailable() -> grpc.RpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="replica died"
    )


def selected(decision: str) -> _pb.SelectServerResponse:
    return _pb.SelectServerResponse(decision_id=decision, server_id="s1", address="10.0.0.1:80", strategy="round_robin")


def first_attempt_fails(calls: int) -> Iterator[grpc.RpcError | _pb.SelectServerResponse]:
    """Each call's first attempt fails as on a killed replica; its retry succeeds."""
    for i in range(calls):
        yield unavailable()
        yield selected(f"d-{i}")


def make(fake_channel: FakeChannel, **options: Any) -> Client:
    values: dict[str, Any] = {"timeout_s": 0.5, "outcome_flush_interval_s": NEVER_S, "server_refresh_s": 0}
    values.update(options)
    return Client(channel=as_channel(fake_channel), **values)


def test_a_call_a_retry_saved_does_not_count_against_the_breaker(fake_channel: FakeChannel) -> None:
    client = make(fake_channel, retry=FAST_RETRY, breaker=TRIP_AT_ONCE)  # one failure would open it
    answers = first_attempt_fails(10)
    fake_channel.answers["SelectServer"] = lambda request: next(answers)
    try:
        selections = [client.select("api") for _ in range(10)]
        breaker = client.breaker("SelectServer")
        assert breaker is not None
        stats = breaker.stats()
    finally:
        client.close()

    assert [s.fallback for s in selections] == [False] * 10
    assert fake_channel.methods().count("SelectServer") == 20
    assert breaker.state is BreakerState.CLOSED
    assert (stats["total_calls"], stats["total_failures"]) == (10, 0)


async def test_an_async_call_a_retry_saved_does_not_count_against_the_breaker() -> None:
    fake = FakeChannel(asynchronous=True)
    answers = first_attempt_fails(5)
    fake.answers["SelectServer"] = lambda request: next(answers)
    client = AsyncClient(
        channel=as_aio_channel(fake), retry=FAST_RETRY, breaker=TRIP_AT_ONCE, server_refresh_s=0, timeout_s=0.5
    )
    try:
        selections = [await client.select("api") for _ in range(5)]
        breaker = client.breaker("SelectServer")
        assert breaker is not None
        stats = breaker.stats()
    finally:
        await client.close()

    assert not any(s.fallback for s in selections)
    assert breaker.state is BreakerState.CLOSED
    assert (stats["total_calls"], stats["total_failures"]) == (5, 0)


def test_a_call_whose_every_attempt_fails_counts_once(fake_channel: FakeChannel) -> None:
    client = make(fake_channel, retry=FAST_RETRY, breaker=BreakerConfig(consecutive_failures=2))
    fake_channel.answers["SelectServer"] = unavailable()
    try:
        with pytest.raises(UnavailableError):  # no server known yet: nothing to answer locally
            client.select("api")
        breaker = client.breaker("SelectServer")
        assert breaker is not None
        stats = breaker.stats()
    finally:
        client.close()

    assert fake_channel.methods().count("SelectServer") == 3
    assert (stats["total_calls"], stats["total_failures"], stats["consecutive_failures"]) == (1, 1, 1)
    assert breaker.state is BreakerState.CLOSED  # one failed call of the two it takes


def test_a_breaker_opened_by_other_calls_stops_a_retry(fake_channel: FakeChannel) -> None:
    client = make(fake_channel, retry=FAST_RETRY, breaker=TRIP_AT_ONCE)

    def another_call_fails_meanwhile(request: _pb.SelectServerRequest) -> grpc.RpcError:
        breaker = client.breaker("SelectServer")
        assert breaker is not None
        breaker.record_failure()  # what a concurrent call's failure does
        return unavailable()

    fake_channel.answers["SelectServer"] = another_call_fails_meanwhile
    try:
        with pytest.raises(UnavailableError):
            client.select("api")
        breaker = client.breaker("SelectServer")
    finally:
        client.close()

    assert fake_channel.methods().count("SelectServer") == 1  # no retry once OPEN
    assert breaker is not None and breaker.state is BreakerState.OPEN


def test_a_call_refused_before_its_first_attempt_has_no_outcome(fake_channel: FakeChannel) -> None:
    client = make(fake_channel, retry=FAST_RETRY, breaker=TRIP_AT_ONCE)
    try:
        with pytest.raises(DeadlineExceededError):
            client.select("api", timeout_s=0.0005)  # less than one attempt's least time
        breaker = client.breaker("SelectServer")
        assert breaker is not None
        stats = breaker.stats()
    finally:
        client.close()

    assert fake_channel.methods() == []
    assert breaker.state is BreakerState.CLOSED and stats["total_calls"] == 0
