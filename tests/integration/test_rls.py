"""Envoy's rate-limit service on a real service: the generated client, grpcurl, Redis replicas.

Every service runs on 127.0.0.1:0 with the RLS handlers given to ``start_service`` as
``extra_handlers`` (what the app will wire) and the running core attached. The memory
store's buckets follow the injected ManualClock; the Redis store's follow Redis's clock,
so its tests use limits per hour, which no test runs long enough to refill.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs, no py.typed
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc  # type: ignore[import-untyped]  # xds-protos: no stubs, no py.typed
from google.protobuf import wrappers_pb2

from loadwarden.policy import RateLimit
from loadwarden.server import (
    AuthSettings,
    ManualClock,
    PoolSettings,
    PoolSpec,
    RunningService,
    ServiceConfig,
    start_service,
)
from loadwarden.server.app._config import StateSettings
from loadwarden.server.app._service import build_core
from loadwarden.server.mesh._rls import SERVICE_NAME, RateLimitService, protoset
from loadwarden.server.mesh._rls_config import RlsSettings, parse_rls
from loadwarden.server.rpc.reflection import enable_reflection
from loadwarden.server.shared import RedisSettings
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..e2e._harness import GRPCURL_MAX_TIME_S, clean_env, tool

OK, OVER_LIMIT = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
TIMEOUT_S = 10.0
ENVOY_TOKEN = "envoy-token-0123456789abcdef"
APP_TOKEN = "app-token-0123456789abcdefgh"

RLS = {
    "enabled": True,
    "domains": [
        {
            "domain": "edge",
            "descriptors": [
                {"key": "remote_address", "rate_limit": {"unit": "minute", "requests_per_unit": 3}},
                {"key": "user", "shadow_mode": True, "rate_limit": {"unit": "minute", "requests_per_unit": 2}},
                {"key": "client_id", "pool": "api"},
                {"key": "tenant", "rate_limit": {"unit": "hour", "requests_per_unit": 4}},
            ],
        }
    ],
}
API = PoolSpec(PoolSettings(name="api", max_concurrency=0, rate_limit=RateLimit(count=3, per_s=3600.0, burst=3)))

Started = tuple[RunningService, RateLimitService]
Start = Callable[..., Awaitable[Started]]


@pytest.fixture
async def serve() -> AsyncIterator[Start]:
    """``await serve(clock=..., **config)``: a service with RLS on its port; stopped at teardown."""
    started: list[RunningService] = []

    async def _start(
        *, clock: ManualClock | None = None, settings: RlsSettings | None = None, **config: Any
    ) -> Started:
        cfg = ServiceConfig(listen="127.0.0.1:0", **{"pools": (API,), **config})
        rls = RateLimitService(settings or parse_rls(RLS), cfg.auth.tokens())
        running = await start_service(cfg, clock=clock, rng=random.Random(7), extra_handlers=rls.handlers())
        rls.attach(running.core)
        started.append(running)
        return running, rls

    yield _start
    for running in started:
        await running.stop(0)


@pytest.fixture
async def channel() -> AsyncIterator[Callable[[RunningService], grpc.aio.Channel]]:
    opened: list[grpc.aio.Channel] = []

    def _open(running: RunningService) -> grpc.aio.Channel:
        opened.append(grpc.aio.insecure_channel(running.target))
        return opened[-1]

    yield _open
    for ch in opened:
        await ch.close()


def request(*descriptors: dict[str, str], domain: str = "edge", hits: int = 0) -> Any:
    return rls_pb2.RateLimitRequest(
        domain=domain,
        hits_addend=hits,
        descriptors=[
            ratelimit_pb2.RateLimitDescriptor(
                entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries.items()]
            )
            for entries in descriptors
        ],
    )


def headers(response: Any) -> dict[str, str]:
    return {header.key: header.value for header in response.response_headers_to_add}


async def ask(ch: grpc.aio.Channel, message: Any, token: str | None = None) -> Any:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    return await rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit(message, metadata=metadata, timeout=TIMEOUT_S)


# --- the generated client ------------------------------------------------------------------------


async def test_the_generated_client_gets_ok_then_over_limit_at_the_configured_rate(
    serve: Start, channel: Callable[[RunningService], grpc.aio.Channel]
) -> None:
    clock = ManualClock()
    running, _ = await serve(clock=clock)
    ch = channel(running)
    ip = {"remote_address": "10.0.0.1"}

    answers = [await ask(ch, request(ip)) for _ in range(4)]

    assert [a.overall_code for a in answers] == [OK, OK, OK, OVER_LIMIT]
    assert [a.statuses[0].limit_remaining for a in answers] == [2, 1, 0, 0]
    first = answers[0].statuses[0]
    assert (first.current_limit.requests_per_unit, first.current_limit.unit) == (
        3,
        rls_pb2.RateLimitResponse.RateLimit.MINUTE,
    )
    assert first.duration_until_reset.ToTimedelta().total_seconds() == 20.0  # one token of three a minute
    assert [headers(a) for a in answers[2:]] == [
        {"x-ratelimit-limit": "3", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "60"}
    ] * 2
    assert (await ask(ch, request({"remote_address": "10.0.0.2"}))).overall_code == OK  # its own bucket

    clock.advance(19.9)
    assert (await ask(ch, request(ip))).overall_code == OVER_LIMIT
    clock.advance(0.1)  # 20 s: one token back
    again = await ask(ch, request(ip))
    assert again.overall_code == OK and headers(again)["x-ratelimit-reset"] == "60"


async def test_hits_addend_spends_that_many_tokens(
    serve: Start, channel: Callable[[RunningService], grpc.aio.Channel]
) -> None:
    running, _ = await serve(clock=ManualClock())
    ch = channel(running)
    ip = {"remote_address": "10.0.0.3"}

    assert (await ask(ch, request(ip, hits=2))).statuses[0].limit_remaining == 1
    assert (await ask(ch, request(ip, hits=2))).overall_code == OVER_LIMIT
    own = request(ip, hits=5)
    own.descriptors[0].hits_addend.CopyFrom(wrappers_pb2.UInt64Value(value=1))  # the descriptor's own wins
    assert (await ask(ch, own)).overall_code == OK


# --- grpcurl ---------------------------------------------------------------------------------------


def grpcurl(target: str, *flags: str, data: Any) -> subprocess.CompletedProcess[str]:
    argv = [str(tool("grpcurl")), "-plaintext", "-max-time", str(GRPCURL_MAX_TIME_S), *flags, "-d", json.dumps(data)]
    argv += [target, f"{SERVICE_NAME}/ShouldRateLimit"]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=GRPCURL_MAX_TIME_S + 10, env=clean_env(), check=False
    )


EDGE_IP = {"domain": "edge", "descriptors": [{"entries": [{"key": "remote_address", "value": "10.9.9.9"}]}]}


async def test_grpcurl_over_the_services_reflection_gets_ok_then_over_limit_with_the_headers(
    serve: Start,
) -> None:
    """The port's reflection resolves RLS's symbols from the default descriptor pool (the
    xds-protos modules are imported), so grpcurl needs no .proto; ``list`` shows RLS once
    SERVICE_NAME is among ``enable_reflection``'s names (the next test)."""
    running, _ = await serve(clock=ManualClock())

    runs = [await asyncio.to_thread(grpcurl, running.target, data=EDGE_IP) for _ in range(4)]

    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    answers = [json.loads(run.stdout) for run in runs]
    assert [a["overall_code"] for a in answers] == ["OK", "OK", "OK", "OVER_LIMIT"]
    assert answers[3]["statuses"] == [
        {
            "code": "OVER_LIMIT",
            "current_limit": {"requests_per_unit": 3, "unit": "MINUTE"},
            "duration_until_reset": "60s",
        }
    ]
    assert answers[3]["response_headers_to_add"] == [
        {"key": "x-ratelimit-limit", "value": "3"},
        {"key": "x-ratelimit-remaining", "value": "0"},
        {"key": "x-ratelimit-reset", "value": "60"},
    ]


async def test_grpcurl_with_a_protoset_needs_no_reflection(serve: Start, tmp_path: Path) -> None:
    running, _ = await serve(clock=ManualClock())
    path = tmp_path / "rls.protoset"
    path.write_bytes(protoset())

    runs = [await asyncio.to_thread(grpcurl, running.target, "-protoset", str(path), data=EDGE_IP) for _ in range(4)]

    assert [json.loads(run.stdout)["overall_code"] for run in runs] == ["OK", "OK", "OK", "OVER_LIMIT"], runs


async def test_grpcurl_over_reflection_once_rls_is_among_the_reflected_services() -> None:
    """What wiring RLS into ``enable_reflection``'s names gives: list, describe and calls
    with no .proto at hand (the xds-protos descriptors are in the default pool)."""
    rls = RateLimitService(parse_rls(RLS), core=build_core(ServiceConfig(pools=(API,)), clock=ManualClock()))
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(rls.handlers())
    enable_reflection((SERVICE_NAME,), server)
    target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        listed = await asyncio.to_thread(
            subprocess.run, [str(tool("grpcurl")), "-plaintext", target, "list"], capture_output=True, text=True
        )
        runs = [await asyncio.to_thread(grpcurl, target, data=EDGE_IP) for _ in range(4)]
    finally:
        await server.stop(0)

    assert SERVICE_NAME in listed.stdout.split(), listed.stderr
    assert [json.loads(run.stdout)["overall_code"] for run in runs] == ["OK", "OK", "OK", "OVER_LIMIT"]


# --- shadow mode, unknown domains, malformed requests --------------------------------------------


async def test_shadow_mode_never_answers_over_limit_but_counts(
    serve: Start, channel: Callable[[RunningService], grpc.aio.Channel]
) -> None:
    running, rls = await serve(clock=ManualClock())
    ch = channel(running)

    answers = [await ask(ch, request({"user": "u1"})) for _ in range(5)]

    assert {a.overall_code for a in answers} == {OK}
    assert {s.code for a in answers for s in a.statuses} == {OK}
    assert [a.statuses[0].limit_remaining for a in answers] == [1, 0, 0, 0, 0]
    assert rls.stats.get("edge.user", "shadow_mode") == 3
    assert rls.stats.get("edge.user", "within_limit") == 2
    assert rls.stats.get("edge.user", "total_hits") == 5


@pytest.mark.parametrize(
    "message",
    [
        request({"remote_address": "1.2.3.4"}, domain="no-such-domain"),
        request({}),  # a descriptor with no entries
        request({"unknown": "x"}),
        request({"remote_address": "1.2.3.4", "deeper": "x"}),  # deeper than the config
        request({"": ""}),
    ],
)
async def test_what_envoyproxy_lets_through_is_ok_with_no_limit(
    message: Any, serve: Start, channel: Callable[[RunningService], grpc.aio.Channel]
) -> None:
    running, _ = await serve(clock=ManualClock())

    answer = await ask(channel(running), message)

    assert answer.overall_code == OK
    assert [(s.code, s.HasField("current_limit"), s.limit_remaining) for s in answer.statuses] == [(OK, False, 0)]
    assert not answer.response_headers_to_add


@pytest.mark.parametrize(
    ("message", "details"),
    [
        (rls_pb2.RateLimitRequest(descriptors=request({"k": "v"}).descriptors), "rate limit domain must not be empty"),
        (rls_pb2.RateLimitRequest(domain="edge"), "rate limit descriptor list must not be empty"),
        (
            rls_pb2.RateLimitRequest(
                domain="edge",
                descriptors=[ratelimit_pb2.RateLimitDescriptor(limit={"requests_per_unit": 5, "unit": 0})],
            ),
            "descriptors[0].limit.unit: must be SECOND, MINUTE, HOUR, DAY, MONTH or YEAR",
        ),
    ],
)
async def test_what_envoyproxy_refuses_is_invalid_argument_never_internal(
    message: Any, details: str, serve: Start, channel: Callable[[RunningService], grpc.aio.Channel]
) -> None:
    running, _ = await serve(clock=ManualClock())

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ask(channel(running), message)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details in (caught.value.details() or "")


async def test_bytes_that_are_no_request_are_invalid_argument(
    serve: Start, channel: Callable[[RunningService], grpc.aio.Channel]
) -> None:
    running, _ = await serve(clock=ManualClock())
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel(running).unary_unary(
        f"/{SERVICE_NAME}/ShouldRateLimit"
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"\xff\xff\xff", timeout=TIMEOUT_S)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- auth and the buckets AcquireSlot spends from -----------------------------------------------


async def test_auth_is_the_decision_services(
    serve: Start, channel: Callable[[RunningService], grpc.aio.Channel]
) -> None:
    running, _ = await serve(clock=ManualClock(), auth=AuthSettings(clients={"envoy": ENVOY_TOKEN}))
    ch = channel(running)
    message = request({"remote_address": "1.1.1.1"})

    for token, code in (
        (None, grpc.StatusCode.UNAUTHENTICATED),
        ("wrong-token-0123456789", grpc.StatusCode.PERMISSION_DENIED),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ask(ch, message, token)
        assert caught.value.code() == code
    assert (await ask(ch, message, ENVOY_TOKEN)).overall_code == OK


async def test_a_pool_descriptor_and_acquire_slot_share_one_bucket(
    serve: Start, channel: Callable[[RunningService], grpc.aio.Channel]
) -> None:
    """Pool api allows 3 an hour per client key: RLS for client_id=acme and AcquireSlot with
    client_key acme, from the same caller, spend from the same 3."""
    running, _ = await serve(clock=ManualClock(), auth=AuthSettings(clients={"app": APP_TOKEN, "envoy": ENVOY_TOKEN}))
    ch = channel(running)
    decision = pb_grpc.DecisionServiceStub(ch)
    app = (("authorization", f"Bearer {APP_TOKEN}"),)
    acme = request({"client_id": "acme"})

    assert (await ask(ch, acme, APP_TOKEN)).statuses[0].limit_remaining == 2
    granted = await decision.AcquireSlot(pb.AcquireSlotRequest(pool="api", client_key="acme"), metadata=app)
    assert granted.granted
    last = await ask(ch, acme, APP_TOKEN)
    assert (last.overall_code, last.statuses[0].current_limit.name) == (OK, "pool api")
    assert last.statuses[0].limit_remaining == 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await decision.AcquireSlot(pb.AcquireSlotRequest(pool="api", client_key="acme"), metadata=app)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await ask(ch, acme, APP_TOKEN)).overall_code == OVER_LIMIT
    # Another caller's buckets are its own, as for AcquireSlot.
    assert (await ask(ch, acme, ENVOY_TOKEN)).overall_code == OK


# --- two replicas on Redis -------------------------------------------------------------------------

_prefixes = itertools.count()


@pytest.fixture
async def replicas(redis_url: str, serve: Start) -> list[Started]:
    state = StateSettings(store="redis", redis=RedisSettings(url=redis_url, key_prefix=f"{{rls{next(_prefixes)}}}:"))
    return [await serve(state=state, expiry_interval_ms=50) for _ in range(2)]


async def test_two_replicas_on_redis_share_the_buckets(
    replicas: list[Started], channel: Callable[[RunningService], grpc.aio.Channel]
) -> None:
    (a, _), (b, _) = replicas
    one, two = channel(a), channel(b)
    tenant = request({"tenant": "t1"})

    codes = [(await ask(ch, tenant)).overall_code for ch in (one, two, one, two, one, two)]

    assert codes == [OK, OK, OK, OK, OVER_LIMIT, OVER_LIMIT]  # 4 an hour over both
    assert (await ask(two, request({"tenant": "t2"}))).overall_code == OK


async def test_on_redis_a_pool_descriptor_shares_acquire_slots_bucket_across_replicas(
    replicas: list[Started], channel: Callable[[RunningService], grpc.aio.Channel]
) -> None:
    (a, _), (b, _) = replicas
    decision_a = pb_grpc.DecisionServiceStub(channel(a))
    acme = request({"client_id": "acme"})

    assert (await ask(channel(b), acme)).statuses[0].limit_remaining == 2
    assert (await decision_a.AcquireSlot(pb.AcquireSlotRequest(pool="api", client_key="acme"))).granted
    assert (await ask(channel(b), acme)).statuses[0].limit_remaining == 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await decision_a.AcquireSlot(pb.AcquireSlotRequest(pool="api", client_key="acme"))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await ask(channel(b), acme)).overall_code == OVER_LIMIT


@pytest.mark.parametrize(
    ("mode", "codes"),
    [
        ("fail_closed", [grpc.StatusCode.UNAVAILABLE] * 3),
        ("fail_open", [OK, OK, OK]),  # no limit applies
        ("local", [OK, OK, OVER_LIMIT]),  # this replica's half of 4 an hour
    ],
)
async def test_with_redis_gone_rate_limits_do_as_rate_limit_on_failure_says(
    mode: str, codes: list[Any], serve: Start, channel: Callable[[RunningService], grpc.aio.Channel], tmp_path: Path
) -> None:
    from ..e2e._harness import Processes

    procs = Processes(tmp_path)
    try:
        redis = procs.redis()
        settings = RedisSettings(url=redis.url, key_prefix="{rls-outage}:", rate_limit_on_failure=mode, replicas=2)
        running, _ = await serve(state=StateSettings(store="redis", redis=settings))
        ch = channel(running)
        assert (await ask(ch, request({"tenant": "t"}))).overall_code == OK  # one of Redis's 4, then it is gone
        redis.kill()

        seen: list[Any] = []
        for _ in range(3):
            try:
                answer = await ask(ch, request({"tenant": "t"}))
                seen.append(answer.overall_code)
                assert mode == "local" or not answer.statuses[0].HasField("current_limit")
            except grpc.aio.AioRpcError as exc:
                seen.append(exc.code())
                assert "rate_limit_on_failure = fail_closed" in (exc.details() or "")
        assert seen == codes
    finally:
        procs.close()
