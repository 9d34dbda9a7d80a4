"""What `Client` and `AsyncClient` share: validated options and the non-RPC surface."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from loadwarden.sdk._batching import LastKnownSizes
from loadwarden.sdk._breaker import BreakerConfig, BreakerRegistry, BreakerState, CircuitBreaker
from loadwarden.sdk._convert import check_outcome, outcome_to_proto
from loadwarden.sdk._errors import LeaseLostError, LoadwardenError, is_transport_failure
from loadwarden.sdk._leases import ABANDON_DEFAULT_TTL_S, log_lost
from loadwarden.sdk._local import LOCAL_ID_PREFIX, RouteTables
from loadwarden.sdk._metrics import observe_breakers, observe_route_tables
from loadwarden.sdk._outcomes import InFlightSource, OutcomeBuffer
from loadwarden.sdk._resilience import BreakerOpenError, KnownServers, LocalSlots
from loadwarden.sdk._retry import Retrier, RetryConfig
from loadwarden.sdk._route import Route
from loadwarden.sdk._targets import ChannelTarget, channel_target
from loadwarden.sdk._types import BatchSize, HeldLease, Lease, LoadStatus, OutcomeStats, Selection, ServerState
from loadwarden.v1 import decision_pb2 as _pb

DEFAULT_TARGET = "127.0.0.1:50051"

# How an AcquireSlot ends when the service may have granted it unseen: its answer did not
# come before the deadline, or the call was cancelled.
ABANDONING_CODES = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})

# Options of the channels the SDK opens. A control-plane client must reach a
# restarted service within 2 s, not after gRPC's default reconnect backoff (which
# grows to 120 s): at most 1 s between reconnect attempts (1.2 s with gRPC's 20 %
# jitter), during which the health probe waits for the channel (`_probe.py`).
# The SDK's retry layer is the only one. Over several replicas these hold per
# replica (each is its own subchannel); `ChannelTarget.channel_options` adds the
# load-balancing policy.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.enable_retries", 0),
)


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """A client's settings, validated once; errors name the constructor parameter.

    Attributes:
        target: Service address, "host:port" (any gRPC target string), or a
            list/tuple of replica addresses; see `loadwarden.sdk._targets`.
        timeout_s: Deadline of every call that names none, seconds, > 0.
        outcome_batch_size: Queued outcomes that are sent at once without waiting, count, >= 1.
        outcome_flush_interval_s: Longest an outcome waits before it is sent, seconds, > 0.
        outcome_buffer_size: Outcomes held at most; beyond it the oldest are dropped,
            count, >= outcome_batch_size.
        max_pending_releases: Failed releases retried in the background at most,
            count, >= 1; a failed release beyond it is left to expire.
        close_timeout_s: Longest `close()` waits for releases in flight and
            retries the pending ones before closing the channel, seconds, > 0.
        load_balancing: "round_robin", "pick_first", or None (round robin for a
            list, gRPC's default for a string).
        channel: What the channel dials, built from `target` and `load_balancing`.
    """

    target: str | Sequence[str]
    timeout_s: float
    outcome_batch_size: int
    outcome_flush_interval_s: float
    outcome_buffer_size: int
    max_pending_releases: int = 1_000
    close_timeout_s: float = 2.0
    load_balancing: str | None = None
    channel: ChannelTarget = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Set once here (the class is frozen); a list is kept as a tuple, so it cannot change under the channel.
        object.__setattr__(self, "channel", channel_target(self.target, self.load_balancing))
        if isinstance(self.target, list):
            object.__setattr__(self, "target", tuple(self.target))
        _check_positive_seconds("timeout_s", self.timeout_s)
        _check_positive_seconds("outcome_flush_interval_s", self.outcome_flush_interval_s)
        _check_positive_count("outcome_batch_size", self.outcome_batch_size)
        _check_positive_count("outcome_buffer_size", self.outcome_buffer_size)
        _check_positive_count("max_pending_releases", self.max_pending_releases)
        _check_positive_seconds("close_timeout_s", self.close_timeout_s)
        if self.outcome_buffer_size < self.outcome_batch_size:
            raise ValueError(
                f"outcome_buffer_size must be >= outcome_batch_size ({self.outcome_batch_size}), "
                f"got {self.outcome_buffer_size}"
            )

    def call_timeout_s(self, timeout_s: float | None) -> float:
        """The deadline of one call, seconds: `timeout_s` when given, else the client's."""
        if timeout_s is None:
            return self.timeout_s
        _check_positive_seconds("timeout_s", timeout_s)
        return timeout_s

    def new_outcome_buffer(self) -> OutcomeBuffer:
        return OutcomeBuffer(
            capacity=self.outcome_buffer_size,
            batch_size=self.outcome_batch_size,
            interval_s=self.outcome_flush_interval_s,
        )


def check_wait_timeout(timeout_s: float | None) -> None:
    """Checks an optional wait bound (None waits until done), seconds."""
    if timeout_s is not None:
        _check_positive_seconds("timeout_s", timeout_s)


def check_on_lost(on_lost: object) -> None:
    """Checks `slot(on_lost=...)` before anything is acquired."""
    if on_lost is not None and not callable(on_lost):
        raise ValueError(f"on_lost must be a callable or None, got {on_lost!r}")


class _OutcomeSender(Protocol):
    """What a client needs of its outcome sender; `flush` and `close` wait in the async one."""

    buffer: OutcomeBuffer
    in_flight: InFlightSource | None

    def add(self, outcome: _pb.Outcome) -> None: ...

    def wake(self) -> None: ...

    def flush(self, timeout_s: float | None) -> bool | Awaitable[bool]: ...

    def close(self, timeout_s: float | None = None) -> Awaitable[None] | None: ...


class _Abandons(Protocol):
    def abandon(self, pool: str, request_id: str, *, until: float) -> bool: ...


UNGUARDED_METHODS = frozenset({"ReportLoad"})


def settle(breaker: CircuitBreaker | None, error: LoadwardenError) -> None:
    """Feeds an attempt's error to its breaker: only transport failures count against it."""
    if breaker is None:
        return
    if is_transport_failure(error):
        breaker.record_failure()
    else:
        breaker.record_success()  # the service answered


def serving_servers(status: LoadStatus, pool: str) -> list[tuple[str, str]]:
    """(id, address) of the pool's servers the service may choose now."""
    return [
        (server.id, server.address)
        for each in status.pools
        if each.name == pool
        for server in each.servers
        if server.state is ServerState.SERVING
    ]


def retryable(exc: BaseException) -> bool:
    """Retry only calls that did not reach the service; an open breaker is not retried."""
    return is_transport_failure(exc) and not isinstance(exc, BreakerOpenError)


def retry_unless_open(breaker: CircuitBreaker | None) -> Callable[[BaseException], bool]:
    """The retry predicate of one call: `retryable`, and no retry once its breaker is OPEN.

    Other calls' failures may open the breaker while this one backs off; its retry
    then does not go out (the breaker's promise: no network while OPEN), and the
    call ends with its last error, which the caller's fallback answers.
    """
    if breaker is None:
        return retryable

    def may_retry(exc: BaseException) -> bool:
        return retryable(exc) and breaker.state is not BreakerState.OPEN

    return may_retry


class ClientCore:
    """The part of the client surface that makes no RPC, identical in sync and async."""

    _breakers: BreakerRegistry | None
    _breaker_config: BreakerConfig | None
    _retrier: Retrier | None
    _known: KnownServers
    _local_slots: LocalSlots
    _server_refresh_s: float

    def _setup_resilience(
        self,
        breaker: BreakerConfig | None,
        retry: RetryConfig | None,
        slot_fallback: str,
        local_slot_limit: int,
        server_refresh_s: float,
    ) -> None:
        if breaker is not None and not isinstance(breaker, BreakerConfig):
            raise ValueError(f"breaker must be a BreakerConfig or None, got {breaker!r}")
        if retry is not None and not isinstance(retry, RetryConfig):
            raise ValueError(f"retry must be a RetryConfig or None, got {retry!r}")
        if not (isinstance(server_refresh_s, (int, float)) and server_refresh_s >= 0):
            raise ValueError(f"server_refresh_s must be >= 0 (0 turns refreshing off), got {server_refresh_s!r}")
        self._breaker_config = breaker
        self._breakers = BreakerRegistry(breaker) if breaker is not None else None
        if self._breakers is not None:
            observe_breakers(self._breakers)
        self._retrier = Retrier(retry) if retry is not None else None
        self._known = KnownServers()
        # The clock is read through the client, so a test's fake clock applies everywhere.
        self._local_slots = LocalSlots(slot_fallback, local_slot_limit, self._known, lambda: self._clock())
        self._server_refresh_s = float(server_refresh_s)

    _clock: Callable[[], float]
    _releases: _Abandons
    _route_watcher: _Watcher

    def _setup_local(
        self,
        decisions: str | Mapping[str, str],
        stale_after_s: float,
        max_table_servers: int,
        outcome_rate: float,
        rng: random.Random,
    ) -> None:
        """Where each pool is decided (`decisions`) and the tables of those decided here."""
        if isinstance(decisions, str):
            default, per_pool = _decision_mode(decisions, "decisions"), {}
        elif isinstance(decisions, Mapping):
            default = "central"
            per_pool = {pool: _decision_mode(mode, f"decisions[{pool!r}]") for pool, mode in decisions.items()}
            if not all(isinstance(pool, str) and pool for pool in per_pool):
                raise ValueError("decisions must map pool names (non-empty strings) to 'local' or 'central'")
        else:
            raise ValueError(f"decisions must be 'local', 'central' or a mapping of pool to either, got {decisions!r}")
        _check_positive_seconds("route_stale_after_s", stale_after_s)
        _check_positive_count("max_table_servers", max_table_servers)
        if (
            isinstance(outcome_rate, bool)
            or not isinstance(outcome_rate, int | float)
            or not 0 < outcome_rate < math.inf
        ):
            raise ValueError(
                f"local_outcome_rate must be a positive number of outcomes per second, got {outcome_rate!r}"
            )
        self._local_default = default == "local"
        self._local_pools = {pool: mode == "local" for pool, mode in per_pool.items()}
        self._tables = RouteTables(
            clock=lambda: self._clock(),
            rng=rng,
            stale_after_s=stale_after_s,
            max_table_servers=max_table_servers,
            outcome_rate=outcome_rate,
        )
        observe_route_tables(self._tables)
        if self._local_default or any(self._local_pools.values()):
            self._outcomes.in_flight = self._tables  # in-flight counts ride the outcome batches

    def _local_choice(self, pool: str, exclude: Iterable[str]) -> Selection | None:
        """A decision from `pool`'s pushed table when the pool is decided here and its table
        has arrived; None sends the call to the service (as before the first table)."""
        if not self._local_pools.get(pool, self._local_default) or not self._route_watcher.watch(pool):
            return None
        tables = self._tables
        choice = tables.decide(pool, exclude if isinstance(exclude, tuple) else tuple(exclude))
        if tables.wake_sender:  # the first count that moved since the last report: have it sent
            tables.wake_sender = False
            self._outcomes.wake()
        if choice is None:
            return None
        decision_id, server, strategy, explored, version, stale = choice
        return Selection(decision_id, server.id, server.address, strategy, explored, False, True, version, stale)

    def route_table_stats(self) -> Mapping[str, float]:
        """Counters of local decisions (`decisions="local"`): pools with a table, decisions
        made and how many of them stale, tables rejected as malformed, changes ignored."""
        return self._tables.stats()

    def _abandon(self, request: _pb.AcquireSlotRequest, lease_ttl_s: float | None, err: BaseException | None) -> None:
        """Has the service end, in the background, an AcquireSlot whose answer never came
        (`err` with a code of ABANDONING_CODES, or None when the caller cancelled it): the
        service may have granted that slot, and nobody would release it before its TTL."""
        if not request.request_id or (err is not None and getattr(err, "code", None) not in ABANDONING_CODES):
            return
        ttl_s = ABANDON_DEFAULT_TTL_S if lease_ttl_s is None else lease_ttl_s
        self._releases.abandon(request.pool, request.request_id, until=self._clock() + ttl_s + self._options.timeout_s)

    def _probe_interval_s(self) -> float | None:
        """Seconds between health probes while a breaker is open; None when not probing."""
        if self._breakers is None or self._breaker_config is None:
            return None
        return self._breaker_config.probe_interval_s

    def _track_grant(self, lease: Lease) -> Lease:
        # The lease counts against the local limit until an upper bound of its expiry.
        self._local_slots.track(lease.lease_id, lease.pool, self._clock() + lease.ttl_s)
        return lease

    def _track_renewal(self, lease_id: str, lease: Lease) -> Lease:
        self._local_slots.extend(lease_id, self._clock() + lease.ttl_s)
        return lease

    def _lost_handler(
        self, lease: HeldLease, on_lost: Callable[[LeaseLostError], None] | None
    ) -> Callable[[LeaseLostError], None]:
        """What a slot's keeper calls once its lease is lost: mark, stop counting, log, tell."""

        def lost(error: LeaseLostError) -> None:
            lease.loss.error = error
            self._local_slots.untrack(lease.lease_id)
            log_lost(error)
            if on_lost is not None:
                on_lost(error)

        return lost

    def _release_until(self, keeper_valid_until: float) -> float:
        # The service has reclaimed a lease by then: its expiry as the keeper knows it,
        # plus the longest a renewal's grant can follow its sending (one call timeout).
        return keeper_valid_until + self._options.timeout_s

    def breaker(self, method: str) -> CircuitBreaker | None:
        """The circuit breaker guarding `method` ("SelectServer", ...) for this client's target.

        One breaker per method for the whole target: over several replicas it judges
        the service as a whole, and a dead replica that retries route around costs
        it nothing.
        """
        if self._breakers is None or method in UNGUARDED_METHODS:
            return None
        return self._breakers.get(method, self._options.channel.target)

    def _guarded(self, method: str) -> bool:
        """Whether `method` goes through the breaker and retries.

        ReportLoad does not: a BackendReporter pushes every interval anyway, and a
        breaker's open wait (up to a minute) would keep a recovered service from
        hearing a backend's load for longer than its load-report TTL.
        """
        return method not in UNGUARDED_METHODS

    def _fail_fast(self, method: str) -> None:
        # While the breaker is open: no retry machinery, no network. Reads the state
        # only, so it never takes one of HALF_OPEN's probe slots.
        breaker = self.breaker(method)
        if breaker is not None and breaker.state is BreakerState.OPEN:
            raise BreakerOpenError(method, breaker.retry_after_s())

    def _admit(self, method: str) -> CircuitBreaker | None:
        """The breaker for one attempt, which it has let through (else BreakerOpenError)."""
        breaker = self.breaker(method)
        if breaker is not None and not breaker.allow():
            raise BreakerOpenError(method, breaker.retry_after_s())
        return breaker

    def _local_selection(self, pool: str, exclude: Iterable[str], err: LoadwardenError) -> Selection | None:
        """Round robin over the servers last seen for `pool`, when the service is unreachable."""
        if not is_transport_failure(err):
            return None
        return self._known.pick(pool, exclude)

    def _local_lease(self, pool: str, select_server: bool, err: LoadwardenError) -> Lease | None:
        """A local slot per the fallback policy (or SlotDenied), when the service is unreachable."""
        if not is_transport_failure(err):
            return None
        return self._local_slots.grant(pool, select_server, err)

    def _refresh_due(self, pool: str, now: float) -> bool:
        if not self._server_refresh_s:
            return False
        last = self._known.refreshed_at(pool)
        if last is None:  # the first selections teach the list; the first refresh is one interval on
            self._known.mark_refreshed(pool, now)
            return False
        if now - last < self._server_refresh_s:
            return False
        self._known.mark_refreshed(pool, now)  # one refresh at a time per pool
        return True

    _options: ClientOptions
    _outcomes: _OutcomeSender
    _batch_sizes: LastKnownSizes

    def _queue_outcome(self, decision_id: str | Selection, success: bool, latency_ms: float, status: str) -> None:
        """`report_outcome` of either flavour: checks the outcome and queues it."""
        if not isinstance(decision_id, str):
            if not isinstance(decision_id, Selection):
                raise TypeError(
                    "decision_id must be Selection.decision_id (a string) or the Selection itself, "
                    f"got {type(decision_id).__name__}"
                )
            if not decision_id.decision_id:  # decided locally without the service: nothing to report
                check_outcome(latency_ms=latency_ms, status=status)
                return
            decision_id = decision_id.decision_id
        outcome = outcome_to_proto(decision_id, success=success, latency_ms=latency_ms, status=status)
        if decision_id.startswith(LOCAL_ID_PREFIX):  # decided here: the outcome says what was chosen
            local = self._tables.finish(decision_id, outcome.success, outcome.latency_ms, outcome.status)
            if local is not None:
                self._outcomes.add(local)
            return
        self._outcomes.add(outcome)

    def outcome_stats(self) -> OutcomeStats:
        """Counters of background outcome reporting since the client started."""
        return self._outcomes.buffer.stats()

    def _local_batch_size(self, operation: str, default: int | None, err: LoadwardenError) -> BatchSize | None:
        """The size to answer without the service after GetBatchSize failed with `err`.

        None (re-raise `err`) unless the service could not be reached: a business
        answer (NOT_FOUND, INVALID_ARGUMENT, ...) is never masked.
        """
        if not is_transport_failure(err):
            return None
        return self._batch_sizes.local_answer(operation, default, err)

    def _finish_route(self, route: Route, exc: BaseException | None) -> None:
        # Never raises: an exception escaping the block must propagate unchanged.
        if route.selection.local:
            success, latency_ms, status = route._result(exc)  # noqa: SLF001 - Route is the SDK's own
            outcome = self._tables.finish(route.selection.decision_id, success, latency_ms, status)
        else:
            outcome = route._outcome(exc)  # noqa: SLF001 - Route is the SDK's own; its outcome is not public API
        if outcome is not None:
            self._outcomes.add(outcome)


class ClientBase(ClientCore):
    """The RPC-free surface of `Client`, where it differs from `AsyncClient`'s."""

    def report_outcome(
        self, decision_id: str | Selection, *, success: bool, latency_ms: float, status: str = ""
    ) -> None:
        """Queues how a request routed by `select` went; sent in the background.

        Never makes an RPC on the caller's path. Outcomes that cannot be sent are
        counted in `outcome_stats`, never raised.

        Args:
            decision_id: The request's `Selection` (one the SDK answered locally with
                `fallback=True` has nothing to report: the outcome is only checked),
                or its `Selection.decision_id`.
            success: True when the request succeeded.
            latency_ms: Request latency as the caller saw it, milliseconds, 0-86,400,000.
            status: Optional detail, e.g. "503"; at most 64 printable ASCII characters.

        Raises:
            TypeError: `decision_id` is neither a string nor a `Selection`.
            ValueError: An argument is out of range (it would make the service
                reject the whole batch it travels in).
        """
        self._queue_outcome(decision_id, success, latency_ms, status)


class Queued:
    """What `AsyncClient.report_outcome` returns: an awaitable that is already done.

    One instance serves every call (`QUEUED`): queueing an outcome allocates no
    future, and awaiting it returns None without yielding to the event loop.
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that ends at once: `await` returns None without suspending

    def __repr__(self) -> str:
        return "<outcome queued>"


QUEUED = Queued()


class AsyncClientBase(ClientCore):
    """The RPC-free surface of `AsyncClient`, where it differs from `Client`'s."""

    def report_outcome(
        self, decision_id: str | Selection, *, success: bool, latency_ms: float, status: str = ""
    ) -> Awaitable[None]:
        """Queues how a request routed by `select` went; sent in the background.

        A plain method that never waits: the outcome is queued when it returns, and
        what it returns is an awaitable that is already done, so both
        `client.report_outcome(...)` and `await client.report_outcome(...)` work
        (awaiting it does not wait for the outcome to be sent: `flush_outcomes`
        does). Call it from the event loop's thread. Never makes an RPC on the
        caller's path. Outcomes that cannot be sent are counted in
        `outcome_stats`, never raised.

        Args:
            decision_id: The request's `Selection` (one the SDK answered locally with
                `fallback=True` has nothing to report: the outcome is only checked),
                or its `Selection.decision_id`.
            success: True when the request succeeded.
            latency_ms: Request latency as the caller saw it, milliseconds, 0-86,400,000.
            status: Optional detail, e.g. "503"; at most 64 printable ASCII characters.

        Returns:
            An awaitable that is already done: one object shared by every call, so
            queueing allocates no future.

        Raises:
            TypeError: `decision_id` is neither a string nor a `Selection`.
            ValueError: An argument is out of range (it would make the service
                reject the whole batch it travels in).
        """
        self._queue_outcome(decision_id, success, latency_ms, status)
        return QUEUED


class _Watcher(Protocol):
    def watch(self, pool: str) -> bool: ...


def _decision_mode(mode: object, name: str) -> str:
    if mode not in ("local", "central"):
        raise ValueError(f"{name} must be 'local' or 'central', got {mode!r}")
    return str(mode)


def _check_positive_seconds(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def _check_positive_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
