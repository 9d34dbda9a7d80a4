"""Caps and bounded state, without sockets: cap errors, limit validation, heaps that
cannot grow without bound, clipped error messages, undecodable requests."""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path
from typing import Any

import pytest

from loadwarden.policy._errors import InvalidArgument, ResourceExhausted
from loadwarden.policy._validation import SHOWN_MAX_LEN, check_address, check_name, shown
from loadwarden.server import (
    ConfigError,
    CoreLimits,
    DecisionCore,
    ManualClock,
    OperationSettings,
    PoolSettings,
    ServerSpec,
    load_config,
)
from loadwarden.server.engine._admission import QUEUE_SLACK, Granted, SlotRequest
from loadwarden.server.rpc._servicer import (
    STATUS_MESSAGE_MAX_LEN,
    MalformedRequest,
    _status_message,
    _tolerant_deserializer,
    server_options,
)
from loadwarden.v1 import decision_pb2 as pb


def req(pool: str = "p", wait_s: float = 0.0, ttl_s: float | None = None) -> SlotRequest:
    return SlotRequest(
        pool=pool, request_id="", priority=0, max_wait_s=wait_s, lease_ttl_s=ttl_s, client_key="", select_server=False
    )


def core_with(*pools: PoolSettings, clock: ManualClock | None = None, **limits: Any) -> DecisionCore:
    core = DecisionCore(CoreLimits(**limits), clock=clock or ManualClock(), rng=random.Random(1))
    for settings in pools:
        core.configure_pool(settings, [ServerSpec("s1", "h:1")])
    return core


def test_cap_error_names_the_cap_its_key_and_value() -> None:
    err = ResourceExhausted.cap_reached("max_leases", "limits.max_leases", 3, "3 leases held", retry_after_s=0.5)
    assert str(err) == "max_leases (limits.max_leases = 3) reached: 3 leases held"
    assert (err.cap, err.key, err.retry_after_s) == ("max_leases", "limits.max_leases", 0.5)


def test_core_caps_raise_named_errors() -> None:
    core = core_with(PoolSettings(name="p"), max_pools=1, max_servers_per_pool=1, max_operations=1)
    with pytest.raises(ResourceExhausted, match=r"^max_pools \(limits.max_pools = 1\) reached: ") as err:
        core.configure_pool(PoolSettings(name="q"), None)
    assert err.value.retry_after_s is None  # only an operator can make room
    with pytest.raises(ResourceExhausted, match=r"^max_servers_per_pool \(limits.max_servers_per_pool = 1\)"):
        core.register_server("p", ServerSpec("s2", "h:2"))
    with pytest.raises(InvalidArgument, match=re.escape("limits.max_servers_per_pool")) as invalid:
        core.configure_pool(PoolSettings(name="p"), [ServerSpec("a", "h:1"), ServerSpec("b", "h:2")])
    assert invalid.value.field == "pool.servers"
    core.configure_operation(OperationSettings(name="one"))
    with pytest.raises(ResourceExhausted, match=r"^max_operations \(limits.max_operations = 1\)"):
        core.configure_operation(OperationSettings(name="two"))


async def test_lease_cap_hints_when_the_soonest_lease_expires() -> None:
    clock = ManualClock()
    core = core_with(PoolSettings(name="p"), clock=clock, max_leases=2)
    await core.acquire(req(ttl_s=5.0), None)
    await core.acquire(req(ttl_s=9.0), None)
    clock.advance(1.0)
    with pytest.raises(ResourceExhausted, match=r"^max_leases \(limits.max_leases = 2\) reached") as err:
        await core.acquire(req(), None)
    assert err.value.retry_after_s == pytest.approx(4.0)


async def test_dispatch_stops_at_the_lease_cap_instead_of_raising() -> None:
    core = core_with(PoolSettings(name="q", max_concurrency=1), PoolSettings(name="other"), max_leases=2)
    held = await core.acquire(req("q"), None)
    assert isinstance(held, Granted) and isinstance(await core.acquire(req("other"), None), Granted)
    waiters = [asyncio.create_task(core.acquire(req("q", wait_s=30.0), None)) for _ in range(2)]
    await asyncio.sleep(0)
    # A higher limit dispatches; at the lease cap nobody is granted and nothing raises.
    core.configure_pool(PoolSettings(name="q", max_concurrency=3), None)
    assert core.pool("q").slots.waiting == 2 and not any(w.done() for w in waiters)
    assert await core.release_slot(held.lease.id, True, 1.0)
    done, _ = await asyncio.wait(waiters, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1 and isinstance(done.pop().result(), Granted)
    assert len(core.admission.leases) == 2 and core.pool("q").slots.waiting == 1
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


async def test_wait_queue_does_not_keep_waiters_that_left() -> None:
    """Waiters that leave (cancelled here; timed out alike) while no slot frees up: without
    compaction their heap entries would pile up forever."""
    core = core_with(PoolSettings(name="p", max_concurrency=1, max_queue_length=10))
    assert isinstance(await core.acquire(req(), None), Granted)
    slots = core.pool("p").slots
    for _ in range(1_000):
        waiter = asyncio.create_task(core.acquire(req(wait_s=30.0), None))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert len(slots.queue) <= 2 * slots.waiting + QUEUE_SLACK + 1
    assert slots.waiting == 0


async def test_lease_expiry_heap_stays_bounded_under_renewals() -> None:
    """Each renewal pushes an expiry; the superseded ones of a day-long lease would otherwise
    stay a day. The lease is still reclaimed exactly when its last TTL runs out."""
    clock = ManualClock()
    core = core_with(PoolSettings(name="p", max_lease_ttl_ms=86_400_000), clock=clock)
    answer = await core.acquire(req(ttl_s=86_400.0), None)
    assert isinstance(answer, Granted), answer
    lease = answer.lease
    for _ in range(10_000):
        clock.advance(0.001)
        await core.renew_lease(lease.id, None)
        assert len(core.admission._expiry) <= 2 * len(core.admission.leases) + QUEUE_SLACK
    clock.advance(86_399.9)
    assert core.admission.expire() == 0
    clock.advance(0.2)
    assert core.admission.expire() == 1 and not core.admission.leases


@pytest.mark.parametrize(
    ("limits", "key"),
    [
        ({"max_leases": 0}, "limits.max_leases"),
        ({"max_message_bytes": 1_000}, "limits.max_message_bytes"),
        ({"max_concurrent_rpcs": 0}, "limits.max_concurrent_rpcs"),
        ({"max_watch_streams": True}, "limits.max_watch_streams"),
        ({"decision_ttl_ms": 99}, "limits.decision_ttl_ms"),
    ],
)
def test_limits_out_of_range_name_their_key(limits: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        CoreLimits(**limits)  # type: ignore[arg-type]  # a wrong type on purpose: the check under test
    assert err.value.key == key


def test_new_limit_keys_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "lw.toml"
    path.write_text("[limits]\nmax_message_bytes = 131072\nmax_concurrent_rpcs = 500\n", encoding="utf-8")
    config = load_config(path, {"LOADWARDEN_LIMITS__MAX_CONCURRENT_RPCS": "50"})
    assert config.limits.max_message_bytes == 131_072 and config.limits.max_concurrent_rpcs == 50
    assert server_options(config.limits) == (("grpc.max_receive_message_length", 131_072),)
    with pytest.raises(ConfigError) as err:
        load_config(None, {"LOADWARDEN_LIMITS__MAX_MESSAGE_BYTES": "12"})
    assert err.value.key == "limits.max_message_bytes"
    assert CoreLimits().max_message_bytes == 4 * 1024 * 1024 and CoreLimits().max_concurrent_rpcs == 10_000


def test_echoed_values_are_cut() -> None:
    assert shown("abc") == "'abc'"
    long = shown("x" * 10_000)
    assert long.endswith("... (10000 characters)") and len(long) < SHOWN_MAX_LEN + 40
    with pytest.raises(InvalidArgument) as err:
        check_address("a b" * 100_000, "server.address")
    assert str(err.value) == "server.address: is 300000 characters long; at most 255 allowed"
    with pytest.raises(InvalidArgument) as err:
        check_address("a b", "server.address")
    assert "got 'a b'" in str(err.value)
    with pytest.raises(InvalidArgument, match="at most 128"):
        check_name("n" * 129, "pool")


def test_status_messages_are_clipped() -> None:
    assert _status_message(InvalidArgument("pool", "is required")) == "pool: is required"
    clipped = _status_message(InvalidArgument("x", "y" * 5_000))
    assert len(clipped) == STATUS_MESSAGE_MAX_LEN and clipped.endswith("... (truncated)")
    wide = _status_message(InvalidArgument("x", "\U0001f642" * 2_000))  # 8 KB of UTF-8
    assert wide.isascii() and len(wide) <= STATUS_MESSAGE_MAX_LEN


def test_undecodable_bytes_become_a_marker_not_an_exception() -> None:
    deserialize = _tolerant_deserializer(pb.SelectServerRequest)
    assert deserialize(pb.SelectServerRequest(pool="api").SerializeToString()) == pb.SelectServerRequest(pool="api")
    marker = deserialize(b"\x0a\xff\xff\xff\xff\x0f")
    assert isinstance(marker, MalformedRequest) and marker.message_type == "loadwarden.v1.SelectServerRequest"
    error = marker.error()
    assert error.field == "request" and "loadwarden.v1.SelectServerRequest" in str(error)
