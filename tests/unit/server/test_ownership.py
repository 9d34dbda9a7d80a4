"""Callers own what they make: leases, decisions, request ids, rate buckets (issue 14).

Pure: the core with a fake clock, no sockets. Another caller's id must look exactly like
an id that was never issued.
"""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from loadwarden.policy._decisions import IdGenerator
from loadwarden.policy._errors import InvalidArgument, NotFound, ResourceExhausted
from loadwarden.policy._ratelimit import RateLimiter
from loadwarden.policy._settings import RateLimit, parse_pool
from loadwarden.server import CoreLimits, DecisionCore, ManualClock, PoolSettings, ServerSpec
from loadwarden.server._errors import ConfigError
from loadwarden.server.engine._admission import Denied, Granted, SlotRequest
from loadwarden.server.engine._core import OutcomeReport
from loadwarden.server.rpc._auth import AuthSettings, Callers

VICTIM, ATTACKER = "victim", "attacker"


def make(clock: ManualClock | None = None, **settings: Any) -> DecisionCore:
    core = DecisionCore(CoreLimits(), clock=clock or ManualClock(), rng=random.Random(2))
    values: dict[str, Any] = {"max_concurrency": 10, **settings}
    core.configure_pool(PoolSettings(name="p", **values), [ServerSpec("s1", "h:1"), ServerSpec("s2", "h:2")])
    return core


def req(owner: str = VICTIM, request_id: str = "", **kw: Any) -> SlotRequest:
    values: dict[str, Any] = dict(
        pool="p",
        request_id=request_id,
        priority=0,
        max_wait_s=0.0,
        lease_ttl_s=None,
        client_key="",
        select_server=False,
        owner=owner,
    )
    values.update(kw)
    return SlotRequest(**values)


async def grant(core: DecisionCore, owner: str = VICTIM, **kw: Any) -> Granted:
    answer = await core.acquire(req(owner, **kw), None)
    assert isinstance(answer, Granted), answer
    return answer


# --- ids -------------------------------------------------------------------------------------


def test_ids_carry_96_unpredictable_bits_bound_to_their_owner() -> None:
    ids = IdGenerator()
    first, second = ids.new(VICTIM), ids.new(VICTIM)
    tag_first, tag_second = first.rpartition("-")[2], second.rpartition("-")[2]
    assert len(tag_first) == 24 and int(tag_first, 16) >= 0  # 96 bits, hex
    assert tag_first != tag_second
    assert ids.issued(first, VICTIM) and ids.issued(second, VICTIM)
    assert not ids.issued(first, ATTACKER)  # the same id is not the attacker's
    # The next counter value with any tag but the right one was never issued.
    head = second.rpartition("-")[0]
    assert not ids.issued(f"{head}-{'0' * 24}", VICTIM)
    counter = int(head.rpartition("-")[2], 16)
    guessed = f"{head.rpartition('-')[0]}-{counter + 1:x}-{tag_second}"
    assert not ids.issued(guessed, VICTIM)
    # A new process (new key and prefix) never recognises an old id.
    assert not IdGenerator().issued(first, VICTIM)


def test_a_fixed_key_makes_ids_reproducible_for_the_simulator() -> None:
    key = b"k" * 32
    assert IdGenerator("sim", key).new() == IdGenerator("sim", key).new()
    with pytest.raises(ValueError, match="key"):
        IdGenerator("sim", b"short")


# --- leases -----------------------------------------------------------------------------------


async def test_another_callers_lease_is_not_found_and_the_cap_holds() -> None:
    core = make(max_concurrency=10)
    held = [(await grant(core)).lease for _ in range(10)]
    for lease in held:
        with pytest.raises(NotFound) as release_err:
            await core.release_slot(lease.id, True, 1.0, ATTACKER)
        with pytest.raises(NotFound) as renew_err:
            await core.renew_lease(lease.id, None, ATTACKER)
        # Exactly what an id that never existed gets: nothing to probe.
        assert str(release_err.value) == str(renew_err.value) == f"lease_id: lease {lease.id!r} does not exist"
    denied = await core.acquire(req(ATTACKER), None)
    assert isinstance(denied, Denied)
    assert core.pool("p").slots.in_use == 10
    assert all([await core.release_slot(lease.id, True, 1.0, VICTIM) for lease in held])


async def test_an_ended_lease_is_already_released_to_its_owner_only() -> None:
    core = make()
    lease = (await grant(core)).lease
    assert await core.release_slot(lease.id, True, 1.0, VICTIM) is True
    assert await core.release_slot(lease.id, True, 1.0, VICTIM) is False  # already released
    with pytest.raises(NotFound, match="does not exist"):
        await core.release_slot(lease.id, True, 1.0, ATTACKER)
    with pytest.raises(NotFound, match="released or reclaimed"):
        await core.renew_lease(lease.id, None, VICTIM)


async def test_request_ids_are_scoped_to_the_caller() -> None:
    core = make()
    first = (await grant(core, VICTIM, request_id="job-1")).lease
    again = (await grant(core, VICTIM, request_id="job-1")).lease
    other = (await grant(core, ATTACKER, request_id="job-1")).lease
    assert again is first  # the victim's retry: the same lease
    assert other is not first and other.owner == ATTACKER  # never the victim's lease


async def test_request_ids_are_forgotten_when_their_lease_ends() -> None:
    clock = ManualClock()
    core = make(clock)
    for i in range(50):
        lease = (await grant(core, request_id=f"r{i}")).lease
        await core.release_slot(lease.id, True, 1.0, VICTIM)
    reclaimed = (await grant(core, request_id="reclaimed")).lease
    clock.advance(reclaimed.ttl_s + 1)
    core.expire()
    assert len(core.admission._requests) == 0


async def test_lease_ttls_are_bounded_by_the_pool() -> None:
    core = make(max_lease_ttl_ms=60_000)
    with pytest.raises(InvalidArgument) as err:
        await core.acquire(req(lease_ttl_s=86_400.0), None)
    assert err.value.field == "lease_ttl_ms" and "60000 ms" in str(err.value)
    lease = (await grant(core, lease_ttl_s=60.0)).lease
    with pytest.raises(InvalidArgument) as renew_err:
        await core.renew_lease(lease.id, 86_400.0, VICTIM)
    assert renew_err.value.field == "ttl_ms"
    assert (await core.renew_lease(lease.id, 30.0, VICTIM)).ttl_s == 30.0


def test_max_lease_ttl_defaults_and_validation() -> None:
    settings, _ = parse_pool("p", "pool.name", {}, "pools.p", 10)
    assert settings.max_lease_ttl_ms == 600_000
    settings, _ = parse_pool("p", "pool.name", {"lease_ttl_ms": 900_000}, "pools.p", 10)
    assert settings.max_lease_ttl_ms == 900_000  # never below the pool's own default TTL
    with pytest.raises(InvalidArgument) as err:
        parse_pool("p", "pool.name", {"lease_ttl_ms": 60_000, "max_lease_ttl_ms": 1_000}, "pools.p", 10)
    assert err.value.field == "pools.p.max_lease_ttl_ms"


# --- decisions --------------------------------------------------------------------------------


def test_another_callers_decision_is_unknown_and_teaches_nothing() -> None:
    core = make()
    choice = core.select("p", owner=VICTIM)
    with pytest.raises(NotFound):
        core.report_outcomes([OutcomeReport(choice.decision_id, False, 1.0)], ATTACKER)
    assert choice.server.in_flight == 1 and choice.server.consecutive_failures == 0
    assert core.report_outcomes([OutcomeReport(choice.decision_id, True, 1.0)], VICTIM) == (1, [], 0)


async def test_a_lease_keeps_its_selection_past_the_decision_ttl() -> None:
    clock = ManualClock()
    core = make(clock, lease_ttl_ms=60_000)
    lease = (await grant(core, select_server=True)).lease
    server = lease.server
    assert server is not None and server.in_flight == 1
    for _ in range(3):  # 90 s of work, three times the 30 s decision TTL, renewed as it goes
        clock.advance(30.0)
        await core.renew_lease(lease.id, None, VICTIM)
        core.expire()
        assert server.in_flight == 1
    assert server.consecutive_failures == 0 and server.outcomes_total == 0
    await core.release_slot(lease.id, True, 90_000.0, VICTIM)
    assert server.in_flight == 0 and server.outcomes_total == 1 and server.consecutive_failures == 0


async def test_a_reclaimed_lease_settles_its_selection_as_expired() -> None:
    clock = ManualClock()
    core = make(clock)
    lease = (await grant(core, select_server=True)).lease
    server = lease.server
    assert server is not None
    clock.advance(lease.ttl_s + 1)
    core.expire()
    assert server.in_flight == 0 and core.pool("p").slots.in_use == 0


# --- pools ------------------------------------------------------------------------------------


async def test_recreating_a_pool_counts_the_leases_still_held() -> None:
    core = make(max_concurrency=10)
    held = [(await grant(core)).lease for _ in range(10)]
    core.delete_pool("p")
    core.configure_pool(PoolSettings(name="p", max_concurrency=10), [ServerSpec("s1", "h:1")])
    assert core.pool("p").slots.in_use == 10
    assert isinstance(await core.acquire(req(ATTACKER), None), Denied)  # the cap did not double
    await core.renew_lease(held[0].id, None, VICTIM)  # the old leases stay valid
    await core.release_slot(held[0].id, True, 1.0, VICTIM)
    assert isinstance(await core.acquire(req(ATTACKER), None), Granted)  # and freeing one frees a slot
    for lease in held[1:]:
        await core.release_slot(lease.id, True, 1.0, VICTIM)
    assert core.pool("p").slots.in_use == 1


async def test_a_deleted_pool_with_no_leases_left_is_forgotten() -> None:
    core = make()
    lease = (await grant(core)).lease
    core.delete_pool("p")
    await core.release_slot(lease.id, True, 1.0, VICTIM)
    assert core.admission._closed == {}
    core.configure_pool(PoolSettings(name="p", max_concurrency=10), None)
    assert core.pool("p").slots.in_use == 0


# --- adaptive limits --------------------------------------------------------------------------


async def highest_limit_under_full_fast_work(rounds: int, **settings: object) -> int:
    """Fills the pool, releases every slot as a fast success, ``rounds`` times: the work every
    adaptive algorithm grows on. Returns the highest limit seen."""
    clock = ManualClock()
    core = make(clock, max_concurrency=10, **settings)
    slots = core.pool("p").slots
    highest = slots.limit.limit
    for _ in range(rounds):
        leases = []
        while slots.has_room():
            leases.append((await grant(core)).lease)
        clock.advance(0.001)
        for lease in leases:
            await core.release_slot(lease.id, True, 1.0, VICTIM)
        highest = max(highest, slots.limit.limit)
    return highest


@pytest.mark.parametrize("algorithm", ["aimd", "gradient2"])
async def test_max_concurrency_is_the_ceiling_of_an_adaptive_limit(algorithm: str) -> None:
    assert await highest_limit_under_full_fast_work(500, limit_algorithm=algorithm) <= 10


async def test_an_explicit_max_limit_lets_the_limit_grow_past_max_concurrency() -> None:
    assert await highest_limit_under_full_fast_work(100, limit_algorithm="aimd", limit_params={"max_limit": 50}) > 10


# --- rate limits ------------------------------------------------------------------------------


def test_rotating_client_keys_gets_no_more_than_the_callers_rate() -> None:
    limiter = RateLimiter(RateLimit(count=60, per_s=60.0, burst=1), max_keys=10_000)
    granted = sum(limiter.try_acquire(f"key-{i}", 0.001 * i, VICTIM) == 0.0 for i in range(200))
    assert granted == 1  # 200 keys in 0.2 s at 60/minute with a burst of 1
    assert limiter.try_acquire("another", 0.2, ATTACKER) == 0.0  # other callers have their own budget


def test_client_keys_subdivide_a_callers_rate() -> None:
    limiter = RateLimiter(
        RateLimit(count=1, per_s=60.0, burst=1),
        max_keys=100,
        identity_limit=RateLimit(count=100, per_s=60.0, burst=100),
    )
    assert limiter.try_acquire("ip-1", 0.0, VICTIM) == 0.0
    assert limiter.try_acquire("ip-1", 0.1, VICTIM) > 0  # that key's own rate
    assert limiter.try_acquire("ip-2", 0.2, VICTIM) == 0.0  # a second key has its own share
    assert limiter.try_acquire("ip-1", 0.3, ATTACKER) == 0.0  # and the same key name under another caller


def test_keys_per_caller_are_capped() -> None:
    limiter = RateLimiter(
        RateLimit(count=1, per_s=1.0, burst=1),
        max_keys=100,
        identity_limit=RateLimit(count=1_000_000, per_s=1.0, burst=1_000_000),
        max_keys_per_identity=5,
    )
    for i in range(50):
        limiter.try_acquire(f"k{i}", 0.0, VICTIM)
    assert limiter.keys_of(VICTIM) == 5 and len(limiter) == 1


def test_the_anonymous_caller_keeps_per_key_buckets() -> None:
    limiter = RateLimiter(RateLimit(count=1, per_s=60.0, burst=1), max_keys=100)
    assert all(limiter.try_acquire(f"ip-{i}", 0.0) == 0.0 for i in range(10))  # as before identities


async def test_rate_refusal_names_the_caller() -> None:
    core = make(rate_limit=RateLimit(count=1, per_s=60.0, burst=1))
    await grant(core, client_key="a")
    with pytest.raises(ResourceExhausted) as err:
        await core.acquire(req(client_key="b"), None)
    assert "caller 'victim'" in str(err.value) and err.value.retry_after_s is not None


def test_identity_rate_limit_needs_a_rate_limit() -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_pool("p", "pool.name", {"identity_rate_limit": "10/minute"}, "pools.p", 10)
    assert err.value.field == "pools.p.identity_rate_limit"
    settings, _ = parse_pool(
        "p",
        "pool.name",
        {"rate_limit": "1/second", "identity_rate_limit": "10/minute", "rate_limit_keys_per_identity": 7},
        "pools.p",
        10,
    )
    assert settings.identity_rate_limit == RateLimit(count=10, per_s=60.0, burst=10)
    assert settings.rate_limit_keys_per_identity == 7


# --- callers ----------------------------------------------------------------------------------


def test_auth_settings_name_every_caller_and_refuse_shared_tokens() -> None:
    settings = AuthSettings(client_token="c" * 20, clients={"billing": "b" * 20, "search": "s" * 20})
    assert settings.tokens() == {"c" * 20: "client", "b" * 20: "billing", "s" * 20: "search"}
    with pytest.raises(ConfigError) as err:
        AuthSettings(clients={"a": "x" * 20, "b": "x" * 20})
    assert err.value.key == "auth.clients.b" and "x" * 20 not in str(err.value)
    with pytest.raises(ConfigError, match=re.escape("auth.clients.client")):
        AuthSettings(client_token="c" * 20, clients={"client": "d" * 20})
    with pytest.raises(ConfigError, match=re.escape("auth.clients.bad name")):
        AuthSettings(clients={"bad name": "e" * 20})
    with pytest.raises(ConfigError, match=re.escape("auth.clients.short")):
        AuthSettings(clients={"short": "tiny"})
    assert "b" * 20 not in repr(settings)


def test_without_credentials_every_caller_is_anonymous() -> None:
    assert Callers().anonymous and Callers({}, certificates=False).anonymous
    assert not Callers({"t" * 20: "app"}).anonymous
    assert not Callers(certificates=True).anonymous


# --- ending an AcquireSlot by its request id -----------------------------------------------------


async def test_an_acquire_whose_answer_was_lost_is_ended_by_its_request_id() -> None:
    core = make(max_concurrency=1)
    lease = (await grant(core, request_id="lost-answer")).lease
    assert not await core.release_request("p", "lost-answer", True, 0.0, ATTACKER)  # not the attacker's
    assert core.pool("p").slots.in_use == 1
    assert await core.release_request("p", "lost-answer", True, 0.0, VICTIM)
    assert core.pool("p").slots.in_use == 0 and lease.id not in core.admission.leases
    assert not await core.release_request("p", "lost-answer", True, 0.0, VICTIM)  # nothing left: already released


async def test_ending_a_waiting_acquire_by_its_request_id_frees_its_place() -> None:
    import asyncio

    core = make(max_concurrency=1)
    holder = (await grant(core)).lease
    waiting = asyncio.ensure_future(core.acquire(req(request_id="gave-up", max_wait_s=30.0), 60.0))
    await asyncio.sleep(0)
    assert core.pool("p").slots.waiting == 1
    assert await core.release_request("p", "gave-up", False, 0.0, VICTIM)
    assert core.pool("p").slots.waiting == 0
    await core.release_slot(holder.id, True, 1.0, VICTIM)  # the freed slot does not go to the abandoned wait
    assert core.pool("p").slots.in_use == 0
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_abandoned_acquires_end_as_never_granted_and_only_the_callers_own() -> None:
    import asyncio

    clock = ManualClock()
    core = make(clock, max_concurrency=3)
    routed = (await grant(core, request_id="a-1", select_server=True)).lease
    plain = (await grant(core, request_id="a-2")).lease
    theirs = (await grant(core, ATTACKER, request_id="a-3")).lease
    waiting = asyncio.ensure_future(core.acquire(req(request_id="a-4", max_wait_s=30.0), 60.0))
    await asyncio.sleep(0)
    assert core.pool("p").slots.waiting == 1
    assert sum(server.in_flight for server in core.pool("p").servers.values()) == 1  # a-1's selection
    clock.advance(5.0)

    ended = await core.abandon_requests("p", ["a-1", "a-2", "a-3", "a-4", "never-sent"], VICTIM)

    slots = core.pool("p").slots
    assert ended == 3  # a-1, a-2 and the wait of a-4; a-3 is the attacker's, never-sent is unknown
    assert routed.id not in core.admission.leases and plain.id not in core.admission.leases
    assert theirs.id in core.admission.leases and slots.in_use == 1 and slots.waiting == 0
    assert slots.hold_ewma_s == 0.0  # never granted, as far as the limit learns: no sample
    assert all(server.in_flight == 0 for server in core.pool("p").servers.values())  # its selection settled
    assert await core.abandon_requests("p", ["a-1", "a-2"], VICTIM) == 0  # nothing left to end
    assert await core.abandon_requests("other", ["a-3"], ATTACKER) == 0  # request ids are per pool
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
