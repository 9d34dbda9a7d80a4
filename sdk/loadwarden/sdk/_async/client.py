"""The client of the loadwarden Decision service."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2 as _health_pb  # type: ignore[import-untyped]  # no types-grpcio-health-checking
from grpc_health.v1 import health_pb2_grpc as _health_pb_grpc
from opentelemetry import context as otel_context

from loadwarden.sdk._admin_convert import ADMIN_METHODS
from loadwarden.sdk._allotments import AllotmentBook, check_allotments
from loadwarden.sdk._async.admin import AsyncAdmin
from loadwarden.sdk._async.allotments import AsyncAllotmentKeeper
from loadwarden.sdk._async.leases import AsyncLeaseKeeper, AsyncReleaseRetries
from loadwarden.sdk._async.probe import TaskProber
from loadwarden.sdk._async.routes import AsyncRouteWatcher
from loadwarden.sdk._async.senders import AsyncReleaseSender, TaskOutcomeSender
from loadwarden.sdk._async.stream import STREAMED, AsyncDecideStream
from loadwarden.sdk._base import (
    CHANNEL_OPTIONS,
    DEFAULT_TARGET,
    AsyncClientBase,
    ClientOptions,
    check_on_lost,
    check_wait_timeout,
    retry_unless_open,
    serving_servers,
    settle,
)
from loadwarden.sdk._batching import LastKnownSizes
from loadwarden.sdk._breaker import BreakerConfig
from loadwarden.sdk._convert import (
    MAX_STATUS_PAGES,
    abandon_request,
    acquire_slot_request,
    acquired_lease,
    batch_size_from_proto,
    batch_size_request,
    check_default_batch_size,
    load_status_from_proto,
    load_status_request,
    merge_status_pages,
    new_request_id,
    release_slot_request,
    renew_lease_request,
    renewed_lease,
    report_batch_request,
    report_load_request,
    select_request,
    selection_from_proto,
)
from loadwarden.sdk._errors import (
    LeaseLostError,
    LoadwardenError,
    NotFoundError,
    error_from_rpc,
    is_transport_failure,
)
from loadwarden.sdk._leases import BACKGROUND_CALL_MIN_TIMEOUT_S, PendingRelease, held, latency_ms, log_release_failure
from loadwarden.sdk._local import DEFAULT_MAX_TABLE_SERVERS, DEFAULT_OUTCOME_RATE
from loadwarden.sdk._probe import HEALTH_SERVICE
from loadwarden.sdk._resilience import bounded_timeout_s, is_local_lease
from loadwarden.sdk._retry import RetryConfig
from loadwarden.sdk._route import Route
from loadwarden.sdk._synchronization import (
    ASYNC_OPENS_CHANNEL_ON_FIRST_CALL,
    AsyncBackground,
    AsyncCancelled,
    AsyncScheduler,
    TaskScheduler,
)
from loadwarden.sdk._telemetry import (
    AsyncClientInterceptor,
    check_interceptors_async,
    traced_aio_insecure_channel,
    traced_aio_secure_channel,
)
from loadwarden.sdk._tls import TlsConfig, bearer_metadata, channel_security
from loadwarden.sdk._types import BatchReport, BatchSize, HeldLease, Lease, LoadReport, LoadStatus, Selection
from loadwarden.v1 import admin_pb2_grpc as _admin_grpc
from loadwarden.v1 import common_pb2 as _common
from loadwarden.v1 import decision_pb2 as _pb
from loadwarden.v1 import decision_pb2_grpc as _pb_grpc

log = logging.getLogger("loadwarden.sdk")


class AsyncRouteBlock:
    """The block `AsyncClient.route` returns: selects on entry, reports the outcome on exit.

    A class rather than a generator-based context manager: it is on the path of every
    routed request, and this costs a third as much.
    """

    __slots__ = ("_client", "_exclude", "_pool", "_route")

    def __init__(self, client: AsyncClient, pool: str, exclude: Iterable[str]) -> None:
        self._client = client
        self._pool = pool
        self._exclude = exclude
        self._route: Route | None = None

    async def __aenter__(self) -> Route:
        clock = self._client._route_clock  # noqa: SLF001 - the client's own block
        asked_at = clock()
        selection = await self._client.select(self._pool, exclude=self._exclude)
        self._route = Route(selection, clock=clock, asked_at=asked_at)
        return self._route

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        route = self._route
        if route is not None:
            self._route = None
            self._client._finish_route(route, exc)  # noqa: SLF001 - the client's own block


class AsyncClient(AsyncClientBase):
    """Asyncio client of the loadwarden Decision service; use it from one event loop.

    It may be constructed outside a running loop; the channel it opens binds to
    the loop of its first call. Outcomes are reported from a background task
    started on the running loop when the first one is queued. Close the client
    (or use it as an async context manager) so the last outcomes are sent.
    `report_outcome` and `outcome_stats` are plain methods (they never wait);
    call them from the loop's thread.

    Args:
        target: Service address: "host:port" (or any gRPC target string, e.g.
            "dns:///loadwarden.internal:50051"), dialled as given; or a list/tuple of
            replica addresses, IP literals "10.0.0.1:50051" / "[::1]:50051" of one
            family, which become one channel (gRPC's "ipv4:a,b" / "ipv6:a,b"
            target) spread over every ready replica with round robin. Host names
            are refused in a list (they would be resolved only once): for a DNS
            name with several addresses, pass "dns:///name:port" with
            `load_balancing="round_robin"`. Over TLS a list's replicas are checked
            against its first address (or `tls.server_name`). Ignored when
            `channel` is given.
        timeout_s: Deadline of every call that names none, seconds.
        channel: A channel to use instead of opening one to `target`; the caller
            keeps ownership and closes it.
        outcome_batch_size: Queued outcomes that are sent at once without waiting, count.
        outcome_flush_interval_s: Longest an outcome waits before it is sent, seconds.
        outcome_buffer_size: Outcomes held at most; beyond it the oldest are dropped, count.
        breaker: Circuit breaker settings, one breaker per method; None turns breakers off.
        retry: Retry settings (full-jitter backoff within a retry budget, only for
            calls that did not reach the service); None turns retries off.
        slot_fallback: What AcquireSlot answers when the service is unreachable:
            "local_limit" (up to `local_slot_limit` local slots per pool),
            "fail_open" (always a local slot) or "fail_closed" (always SlotDenied).
        local_slot_limit: Local slots per pool under "local_limit", count.
        server_refresh_s: How often the servers known per pool (for local round
            robin when SelectServer cannot be answered) are refreshed from
            GetLoadStatus, in the background, seconds; 0 turns refreshing off.
        tls: Connect over TLS (and mutual TLS with a client certificate); None
            connects in plaintext. Only for the channel the client opens.
        token: The service's client token, sent as ``authorization: Bearer <token>``
            metadata on every call; None sends none.
        max_pending_releases: Failed `slot()` releases retried in the background
            at most, count; beyond it a failed release is left to expire.
        close_timeout_s: Longest `close()` waits for releases in flight and
            retries the pending ones before closing the channel, seconds.
        load_balancing: How the channel spreads calls over the addresses it
            finds: "round_robin" (every ready one in turn; a dead replica is left
            out while it reconnects) or "pick_first" (one connection, the first
            address that answers). None: round robin for a list, gRPC's default
            (pick_first) for a string. One breaker per method guards the target
            as a whole; a call a retry carried to another replica is a success.
        decisions: Where `select` and `route` decide: "central" (a SelectServer call
            each), "local" (in this process, from the routing table the service
            pushes over WatchRoutes, with the pool's own strategy and what the
            service learned; no RPC on the request path, outcomes batched back so
            learning stays central), or a mapping of pool name to either (pools
            not named are central). A local pool is decided centrally until its
            first table arrives, and when the service does not know it.
        route_stale_after_s: Local decisions go on from the last table when its
            stream breaks; this long after the break they say `stale`, seconds.
        max_table_servers: Servers a pushed table may hold; a larger one is
            rejected (the last good table stays), count.
        local_outcome_rate: Outcomes of local decisions sent to the service per
            second, about; above it a uniform sample is sent, each outcome standing
            for 1/p of them, so the service's work stays bounded however busy the
            client is.
        transport: How central decisions travel: "unary" (one call each) or
            "stream" (SelectServer, AcquireSlot, ReleaseSlot and ReportOutcome as
            calls of one long-lived Decide stream per client, coalesced into
            shared messages under load: several times the throughput for a
            fraction of the service's CPU). Answers, errors, breakers, retries and
            fallbacks are the same either way.
        release_in_background: `slot()`'s exit queues its release instead of
            waiting for it: the block's caller goes on at once, a worker sends the
            releases (several at once; sharing messages on the Decide stream), and
            the lease stays the client's until its release is answered. `close()`
            sends what is queued, within `close_timeout_s`.
        slot_allotments: Pools whose `slot()` blocks are served from an allotment
            the client holds (Doorman's capacity leases), with its most slots, e.g.
            {"ml": 8}: a block takes a free allotted slot with no RPC, and asks the
            service as before when none is free. The allotment is resized at each
            renewal to what was used since the last one plus one; `close()` hands
            it back. Blocks with a `client_key` (rate limits) or `select_server`
            always ask the service. An allotted slot ignores `priority` and
            `wait_s` (it is free at once).
        interceptors: Client interceptors for the channel the client opens, of this
            client's flavour of grpc (`grpc.aio.UnaryUnaryClientInterceptor` and the
            like), e.g. for auth headers, logging or metrics of your own. They run in
            the order given (the first is the outermost), inside the SDK's own
            tracing: each sees the call's metadata with the token and the trace
            headers already added, and its time counts in the call's CLIENT span.
            Every attempt of a retried call passes through them; breakers and
            retries sit above the channel, so they never see a call an open breaker
            refused. Not with `channel` (intercept that channel yourself).

    Raises:
        ValueError: An argument is out of range, or a TLS file cannot be read; the
            message names it (never the token).
    """

    def __init__(
        self,
        target: str | Sequence[str] = DEFAULT_TARGET,
        *,
        timeout_s: float = 1.0,
        channel: grpc.aio.Channel | None = None,
        outcome_batch_size: int = 100,
        outcome_flush_interval_s: float = 0.005,
        outcome_buffer_size: int = 10_000,
        breaker: BreakerConfig | None = BreakerConfig(),  # noqa: B008 - frozen, shared safely
        retry: RetryConfig | None = RetryConfig(),  # noqa: B008 - frozen, shared safely
        slot_fallback: str = "local_limit",
        local_slot_limit: int = 10,
        server_refresh_s: float = 30.0,
        tls: TlsConfig | None = None,
        token: str | None = None,
        max_pending_releases: int = 1_000,
        close_timeout_s: float = 2.0,
        load_balancing: str | None = None,
        decisions: str | Mapping[str, str] = "central",
        route_stale_after_s: float = 5.0,
        max_table_servers: int = DEFAULT_MAX_TABLE_SERVERS,
        local_outcome_rate: float = DEFAULT_OUTCOME_RATE,
        transport: str = "unary",
        release_in_background: bool = False,
        slot_allotments: Mapping[str, int] | None = None,
        interceptors: Sequence[AsyncClientInterceptor] = (),
    ) -> None:
        self._options = ClientOptions(
            target=target,
            load_balancing=load_balancing,
            timeout_s=timeout_s,
            outcome_batch_size=outcome_batch_size,
            outcome_flush_interval_s=outcome_flush_interval_s,
            outcome_buffer_size=outcome_buffer_size,
            max_pending_releases=max_pending_releases,
            close_timeout_s=close_timeout_s,
        )
        self._setup_resilience(breaker, retry, slot_fallback, local_slot_limit, server_refresh_s)
        self._refreshes = AsyncBackground()
        self._metadata = bearer_metadata(token)  # built once: every call passes the same tuple
        # Files are read now, so a bad one fails here rather than at the first call.
        self._credentials, self._tls_options = channel_security(tls, channel is not None)
        self._interceptors = check_interceptors_async(interceptors, channel is not None)
        self._owns_channel = channel is None
        self._channel = channel
        self._stub = None if channel is None else _pb_grpc.DecisionServiceStub(channel)
        self._admin_stub = None if channel is None else _admin_grpc.AdminServiceStub(channel)
        self._admin = AsyncAdmin(self._call)
        self._health = None if channel is None else _health_pb_grpc.HealthStub(channel)
        if channel is None and not ASYNC_OPENS_CHANNEL_ON_FIRST_CALL:
            self._open_channel()
        self._outcomes: TaskOutcomeSender = TaskOutcomeSender(self._options.new_outcome_buffer(), self._send_outcomes)
        self._batch_sizes = LastKnownSizes()
        # Injection points for tests: when slot() renewals run, how it times its block and
        # lease expiries (a monotonic clock, seconds), and the jitter of background retries.
        self._renewal_scheduler: AsyncScheduler = TaskScheduler()
        self._clock = time.perf_counter
        self._route_clock = time.perf_counter  # what times route(): its decision and its block, seconds
        self._rng = random.Random()
        self._setup_local(decisions, route_stale_after_s, max_table_servers, local_outcome_rate, self._rng)
        if transport not in ("unary", "stream"):
            raise ValueError(f"transport must be 'unary' or 'stream', got {transport!r}")
        self._decide = AsyncDecideStream(self._open_decide) if transport == "stream" else None
        if not isinstance(release_in_background, bool):
            raise ValueError(f"release_in_background must be True or False, got {release_in_background!r}")
        self._release_sender = AsyncReleaseSender(self._release_queued) if release_in_background else None
        sizes = check_allotments(slot_allotments)
        self._allotment_book = AllotmentBook(sizes, lambda: self._clock()) if sizes else None
        self._allotment_keeper = (
            AsyncAllotmentKeeper(self._allotment_book, self._call, lambda: self._clock())
            if self._allotment_book is not None
            else None
        )
        self._route_watcher: AsyncRouteWatcher = AsyncRouteWatcher(self._tables, self._open_routes, self._rng)
        self._releases: AsyncReleaseRetries = AsyncReleaseRetries(
            self._retry_release,
            TaskScheduler(),
            capacity=self._options.max_pending_releases,
            clock=lambda: self._clock(),
            rng=self._rng,
            on_settled=self._local_slots.untrack,
        )
        interval_s = self._probe_interval_s()
        self._prober = (
            None
            if interval_s is None or self._breakers is None
            else TaskProber(
                self._breakers,
                interval_s,
                self._health_check,
                rng=self._rng,
            )
        )
        if self._prober is not None and self._breakers is not None:
            self._breakers.add_listener(self._prober.on_breaker_event)
        self._closed = False

    @property
    def admin(self) -> AsyncAdmin:
        """AdminService with the SDK's types: pools, servers, drains and batch operations.

        Its calls take this client's path (channel, token, deadline, breakers,
        retries, typed errors); see `AsyncAdmin`.
        """
        return self._admin

    async def select(self, pool: str, *, exclude: Iterable[str] = (), timeout_s: float | None = None) -> Selection:
        """Asks the service which server of `pool` should take a request.

        Args:
            pool: Pool name.
            exclude: Server ids not to pick, e.g. ones that just failed this request; at most 64.
            timeout_s: Deadline of this call, seconds; the client's when None.

        Returns:
            The chosen server; report its outcome with `report_outcome`, or use `route`.

        Raises:
            NotFoundError: The pool does not exist.
            UnavailableError: The pool has no eligible server; or the service is
                unreachable and no server of the pool is known locally.
            LoadwardenError: Any other failure, typed by its status code.

        When the service cannot be reached (or its breaker is open), the answer is
        local round robin over the servers the service last returned for the pool,
        with `fallback=True` and no network round trip.

        A pool decided locally (`decisions`) is answered from its pushed table with
        `local=True`, without an RPC, once the table has arrived.
        """
        local = self._local_choice(pool, exclude)
        if local is not None:
            return local
        try:
            response = await self._call("SelectServer", select_request(pool, exclude), timeout_s)
        except LoadwardenError as err:
            local = self._local_selection(pool, exclude, err)
            if local is None:
                raise
            return local
        selection = selection_from_proto(response)
        self._known.remember(pool, selection.server_id, selection.address)
        if self._refresh_due(pool, time.monotonic()):
            self._refreshes.start(self._refresh_quietly, pool)
        return selection

    async def refresh_servers(self, pool: str, *, timeout_s: float | None = None) -> int:
        """Replaces the servers known for `pool` with those the service may choose now.

        Returns:
            How many servers are known for the pool.
        """
        status = await self.load_status(pool, timeout_s=timeout_s)
        servers = serving_servers(status, pool)
        self._known.replace(pool, servers, time.monotonic())
        return len(servers)

    async def _refresh_quietly(self, pool: str) -> None:
        try:
            await self.refresh_servers(pool)
        except Exception as err:  # noqa: BLE001 - a background refresh never raises
            log.debug("refreshing the servers of pool %s failed: %s", pool, err)

    def route(self, pool: str, *, exclude: Iterable[str] = ()) -> AsyncRouteBlock:
        """Selects a server, times the block and reports its outcome in the background.

        The selection is the only RPC on the caller's path (none when the pool is
        decided locally). The outcome is a success unless an exception escapes the
        block (re-raised unchanged) or `Route.fail` is called. The outcome's latency
        is the block's, timed from when the selection has returned: what the
        backend took, which is what the strategies learn from. How long the
        selection took is `Route.decision_s`; add it for the whole time the
        request spent.

        Example:
            async with client.route("api") as route:
                response = await http.get(f"http://{route.address}/work")
                if response.status_code >= 500:
                    route.fail(str(response.status_code))

        Args:
            pool: Pool name.
            exclude: Server ids not to pick.

        Returns:
            A context manager whose block is the routed request; it yields the
            request's `Route`.
        """
        return AsyncRouteBlock(self, pool, exclude)

    async def acquire_slot(
        self,
        pool: str,
        *,
        priority: int = 0,
        wait_s: float = 0.0,
        lease_ttl_s: float | None = None,
        client_key: str = "",
        select_server: bool = False,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> Lease:
        """Asks for a slot in `pool`'s concurrency limit, waiting in its queue up to `wait_s`.

        Release the lease with `release_slot` (and renew it before it expires), or
        use `slot`, which does both.

        Args:
            pool: Pool name.
            priority: 0-9; higher is served first, FIFO within a priority.
            wait_s: Longest to wait for a slot, seconds, 0-3,600 (the pool may
                allow less); 0 answers at once.
            lease_ttl_s: Lease time to live, seconds, 0.1-86,400; None means the pool's default.
            client_key: Who is asking, for per-client rate limits; empty is anonymous.
            select_server: Also pick a server of the pool (`Lease.server_id`, `Lease.address`).
            request_id: Idempotency key, at most 128 characters of [A-Za-z0-9._:@/-]: a
                retry with the same id joins the first call's wait, or gets its lease,
                never a second slot. A fresh one when None; "" opts out.
            timeout_s: Deadline of the call beyond `wait_s`, seconds; the client's when
                None. The call's deadline is `wait_s + timeout_s`, so the service's wait
                is never cut short.

        Returns:
            The granted lease.

        Raises:
            SlotDenied: The service did not grant the slot (full, waited too long, or
                no eligible server); an answer, not a failure.
            ResourceExhaustedError: The client key's rate is exhausted or the queue is
                full; `retry_after_s` says when to try again.
            NotFoundError: The pool does not exist.
            ValueError: An argument is out of range; the message names it.
            LoadwardenError: Any other failure, typed by its status code.

        When the service cannot be reached (or its breaker is open), the client's
        `slot_fallback` policy answers locally: a lease with `fallback=True` (id
        "local-...", released locally, never renewed) or SlotDenied with
        `denial="LOCAL_LIMIT"` / `"CONTROL_PLANE_UNAVAILABLE"`.
        """
        request = acquire_slot_request(
            pool,
            request_id=new_request_id() if request_id is None else request_id,
            priority=priority,
            wait_s=wait_s,
            lease_ttl_s=lease_ttl_s,
            client_key=client_key,
            select_server=select_server,
        )
        deadline_s = wait_s + self._options.call_timeout_s(timeout_s)
        try:
            response = await self._call("AcquireSlot", request, deadline_s)
        except AsyncCancelled:  # never raised by the sync client: a thread is not cancelled
            self._abandon(request, lease_ttl_s, None)
            raise
        except LoadwardenError as err:
            self._abandon(request, lease_ttl_s, err)
            local = self._local_lease(pool, select_server, err)
            if local is None:
                raise
            return local
        return self._track_grant(acquired_lease(response, pool))

    async def renew_lease(self, lease_id: str, *, ttl_s: float | None = None, timeout_s: float | None = None) -> Lease:
        """Extends a lease's time to live from now.

        Args:
            lease_id: `Lease.lease_id`.
            ttl_s: New time to live, seconds, 0.1-86,400; None keeps the lease's current TTL.
            timeout_s: Deadline of this call, seconds; the client's when None.

        Returns:
            The lease with its new TTL and expiry (without the grant's server and decision).

        Raises:
            NotFoundError: The lease is unknown, released or already expired.
            ValueError: An argument is out of range.
            LoadwardenError: Any other failure, typed by its status code.
        """
        try:
            response = await self._call("RenewLease", renew_lease_request(lease_id, ttl_s), timeout_s)
        except NotFoundError:
            self._local_slots.untrack(lease_id)
            raise
        return self._track_renewal(lease_id, renewed_lease(response))

    async def release_slot(
        self,
        lease_id: str,
        *,
        success: bool = True,
        latency_ms: float = 0.0,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> bool:
        """Ends a lease, reporting how the work went.

        Args:
            lease_id: `Lease.lease_id`.
            success: True when the work succeeded.
            latency_ms: How long the work took, milliseconds, 0-86,400,000.
            request_id: Idempotency key, at most 128 characters; a fresh one when None.
            timeout_s: Deadline of this call, seconds; the client's when None.

        Returns:
            True when this call ended the lease; False when it had already been
            released or reclaimed.

        Raises:
            NotFoundError: The service does not know the lease.
            ValueError: An argument is out of range.
            LoadwardenError: Any other failure, typed by its status code.
        """
        if is_local_lease(lease_id):
            return self._local_slots.release(lease_id)
        request = release_slot_request(
            lease_id,
            request_id=new_request_id() if request_id is None else request_id,
            success=success,
            latency_ms=latency_ms,
        )
        try:
            response: _pb.ReleaseSlotResponse = await self._call("ReleaseSlot", request, timeout_s)
        except NotFoundError:
            self._local_slots.untrack(lease_id)
            raise
        self._local_slots.untrack(lease_id)
        return response.released

    @contextlib.asynccontextmanager
    async def slot(
        self,
        pool: str,
        *,
        priority: int = 0,
        wait_s: float = 0.0,
        lease_ttl_s: float | None = None,
        client_key: str = "",
        select_server: bool = False,
        on_lost: Callable[[LeaseLostError], None] | None = None,
    ) -> AsyncIterator[HeldLease]:
        """Holds a slot in `pool` for the block: acquires, renews, always releases.

        While the block runs, the lease is renewed from a background task at 75 %
        of its TTL. A renewal that gets no answer (the service unreachable) is tried
        again; the lease is lost when a renewal is answered NOT_FOUND (the service
        reclaimed it) or when none succeeded within its TTL. A loss never interrupts
        the block: `lease.lost` turns True, `on_lost` is called (once, on the event
        loop), and the block's exit raises `LeaseLostError` unless the block raised.
        When the block exits, however it exits (cancellation included), a held slot
        is released with the block's latency and success (False when an exception
        escapes it, which is re-raised unchanged). A release that gets no answer is
        retried in the background until answered or the lease's TTL has passed
        (and `close()` waits for it, up to `close_timeout_s`); it is never raised.

        Example:
            async with client.slot("ml", priority=5, wait_s=2.0) as lease:
                await run_inference(lease.address)

        Args:
            pool: Pool name.
            priority: 0-9; higher is served first.
            wait_s: Longest to wait for a slot, seconds.
            lease_ttl_s: Lease time to live, seconds; None means the pool's default.
            client_key: Who is asking, for per-client rate limits.
            select_server: Also pick a server of the pool.
            on_lost: Called with the `LeaseLostError` when the lease is lost while
                the block runs; an exception it raises is logged.

        Yields:
            The granted lease, as granted (renewals do not change it), with `lost`.

        Raises:
            SlotDenied: The slot was not granted; the block does not run.
            ResourceExhaustedError: Rate exhausted or queue full; the block does not run.
            LeaseLostError: At the block's exit, when the lease was lost while the
                block ran and the block did not raise.
        """
        check_on_lost(on_lost)
        book = self._allotment_book
        taken = book.take(pool) if book is not None and not client_key and not select_server else None
        if taken is None and self._allotment_keeper is not None and book is not None and pool in book.pools:
            self._allotment_keeper.wake()  # none free: ask the service now, and for an allotment
        if taken is not None:
            assert book is not None
            local_id, generation, ttl_s = taken
            expires = datetime.now(UTC) + timedelta(seconds=ttl_s)
            lease = held(Lease(local_id, pool, ttl_s, expires, None, None, "", 0.0))
            try:
                yield lease
            finally:
                if not book.give(pool, generation):
                    lost = LeaseLostError(
                        f"the allotment of pool {pool!r} this slot was part of was lost while it was held",
                        lease_id=local_id,
                        pool=pool,
                        why="reclaimed",
                    )
                    self._lost_handler(lease, on_lost)(lost)
            if lease.loss.error is not None:
                raise lease.loss.error
            return
        lease = held(
            await self.acquire_slot(
                pool,
                priority=priority,
                wait_s=wait_s,
                lease_ttl_s=lease_ttl_s,
                client_key=client_key,
                select_server=select_server,
            )
        )
        keeper = AsyncLeaseKeeper(
            lease,
            self.renew_lease,
            self._renewal_scheduler,
            on_lost=self._lost_handler(lease, on_lost),
            clock=self._clock,
            rng=self._rng,
        )
        started = self._clock()
        success = False
        try:
            keeper.start()
            yield lease
            success = True
        finally:
            ended = self._clock()
            keeper.stop()
            if not lease.lost:  # a lost lease is no longer held: nothing to release
                latency, until = latency_ms(started, ended), self._release_until(keeper.valid_until)
                if self._release_sender is not None and not lease.fallback:
                    self._release_sender.add((lease, success, latency, until))
                else:
                    await self._release_held(lease, success=success, latency_ms=latency, until=until)
        if lease.loss.error is not None:
            raise lease.loss.error

    async def flush_outcomes(self, timeout_s: float | None = None) -> bool:
        """Sends every outcome queued so far, and waits until each is sent or given up on.

        Args:
            timeout_s: Longest to wait, seconds; None waits until done (each send
                has its own deadline).

        Returns:
            True when every outcome queued before the call is settled.
        """
        check_wait_timeout(timeout_s)
        return await self._outcomes.flush(timeout_s)

    async def report_load(
        self,
        pool: str,
        server_id: str,
        *,
        cpu_percent: float = 0.0,
        memory_percent: float = 0.0,
        active_requests: int = 0,
        mean_latency_ms: float = 0.0,
        error_rate: float = 0.0,
        timeout_s: float | None = None,
    ) -> int:
        """Pushes one server's load; returns reports applied.

        The figures and their units and defaults are `LoadReport`'s: a figure left
        out is sent as 0.

        Raises:
            InvalidArgumentError: A figure is out of range; the message names it.
            NotFoundError: The pool or the server is unknown.
        """
        report = LoadReport(
            pool=pool,
            server_id=server_id,
            cpu_percent=cpu_percent,
            memory_percent=memory_percent,
            active_requests=active_requests,
            mean_latency_ms=mean_latency_ms,
            error_rate=error_rate,
        )
        return await self.report_loads([report], timeout_s=timeout_s)

    async def report_loads(self, reports: Iterable[LoadReport], *, timeout_s: float | None = None) -> int:
        """Pushes load reports in one call, validated whole by the service.

        Args:
            reports: At most 1,000 reports; none makes no call.
            timeout_s: Deadline of this call, seconds; the client's when None.

        Returns:
            Reports applied, count.

        Raises:
            ValueError: More than 1,000 reports.
            InvalidArgumentError: A report is malformed; nothing was applied.
            NotFoundError: A report names an unknown pool or server; nothing was applied.
        """
        request = report_load_request(reports)
        if not request.reports:
            return 0
        response: _pb.ReportLoadResponse = await self._call("ReportLoad", request, timeout_s)
        return response.applied

    async def batch_size(
        self, operation: str, *, default: int | None = None, timeout_s: float | None = None
    ) -> BatchSize:
        """Asks the service how big the next batch of `operation` should be.

        When the service cannot be reached (UNAVAILABLE without a service reason,
        or the deadline passes), the SDK answers locally with `fallback=True`: the
        last size the service gave this client for `operation`
        (`source="last_known"`), else `default` (`source="default"`). Remembered
        sizes are kept for the 1,000 most recently used operations.

        Example:
            size = await client.batch_size("import", default=100)
            started = time.perf_counter()
            await process(queue.take(size.size))
            await client.report_batch(
                "import",
                batch_size=size.size,
                duration_ms=(time.perf_counter() - started) * 1000,
                decision_id=size.decision_id,
            )

        Args:
            operation: Operation name.
            default: Size to use when the service is unreachable and has never
                answered for `operation`, count, 1-1,000,000; None re-raises instead.
            timeout_s: Deadline of this call, seconds; the client's when None.

        Returns:
            The size to use next.

        Raises:
            NotFoundError: The operation does not exist (never answered locally).
            InvalidArgumentError: The operation name is malformed (never answered locally).
            UnavailableError, DeadlineExceededError: The service is unreachable and
                there is neither a remembered size nor a `default`.
            ValueError: `default` is out of range.
            LoadwardenError: Any other failure, typed by its status code.
        """
        check_default_batch_size(default)
        try:
            response = await self._call("GetBatchSize", batch_size_request(operation), timeout_s)
        except LoadwardenError as err:
            local = self._local_batch_size(operation, default, err)
            if local is None:
                raise
            return local
        answer = batch_size_from_proto(response)
        self._batch_sizes.remember(operation, answer)
        return answer

    async def report_batch(
        self,
        operation: str,
        *,
        batch_size: int,
        duration_ms: float,
        success: bool = True,
        decision_id: str = "",
        timeout_s: float | None = None,
    ) -> int:
        """Reports how one batch went, in one call on the caller's path; returns reports applied.

        Latency-target operations learn from these; see `BatchReport` for the checks.

        Args:
            operation: Operation name.
            batch_size: Items in the batch, count, 1-1,000,000.
            duration_ms: How long the batch took, milliseconds, 0-86,400,000.
            success: True when the batch succeeded.
            decision_id: `BatchSize.decision_id` of the size used; optional.
            timeout_s: Deadline of this call, seconds; the client's when None.

        Raises:
            ValueError: An argument is out of range; the message names it.
            NotFoundError: The operation does not exist.
            InvalidArgumentError: The service refused a field; the message names it.
            LoadwardenError: Any other failure, typed by its status code.
        """
        report = BatchReport(
            operation=operation,
            batch_size=batch_size,
            duration_ms=duration_ms,
            success=success,
            decision_id=decision_id,
        )
        return await self.report_batches([report], timeout_s=timeout_s)

    async def report_batches(self, reports: Iterable[BatchReport], *, timeout_s: float | None = None) -> int:
        """Reports how batches went in one call, validated whole by the service.

        Args:
            reports: At most 1,000 reports; none makes no call.
            timeout_s: Deadline of this call, seconds; the client's when None.

        Returns:
            Reports applied, count.

        Raises:
            ValueError: More than 1,000 reports.
            InvalidArgumentError: A report is malformed ("reports[i].field"); nothing was applied.
            NotFoundError: A report names an unknown operation; nothing was applied.
        """
        request = report_batch_request(reports)
        if not request.reports:
            return 0
        response: _pb.ReportBatchResponse = await self._call("ReportBatch", request, timeout_s)
        return response.applied

    async def load_status(self, pool: str | None = None, *, timeout_s: float | None = None) -> LoadStatus:
        """Returns a snapshot of pools, servers and operations (only `pool`, without operations, when given).

        The service answers in pages of at most 10,000 servers; this reads every page
        (each call with its own `timeout_s`) and returns them as one snapshot.
        """
        pages: list[_common.LoadStatus] = []
        token = ""
        while len(pages) < MAX_STATUS_PAGES:
            response: _pb.GetLoadStatusResponse = await self._call(
                "GetLoadStatus", load_status_request(pool, token), timeout_s
            )
            pages.append(response.status)
            token = response.next_page_token
            if not token:
                break
        return load_status_from_proto(merge_status_pages(pages))

    async def close(self) -> None:
        """Finishes background work, then closes the channel if the client opened it. Idempotent.

        Stops the health probe, waits for releases in flight and tries the pending
        ones once more (within `close_timeout_s` together), and sends the queued outcomes.
        """
        if self._closed:
            return
        await self._route_watcher.stop()
        if self._allotment_keeper is not None:
            await self._allotment_keeper.stop()
        if self._prober is not None:
            await self._prober.stop()
        if self._release_sender is not None:
            await self._release_sender.close(self._options.close_timeout_s)
        await self._releases.drain(self._options.close_timeout_s)
        await self._outcomes.close()
        if self._decide is not None:
            await self._decide.close()
        self._closed = True
        if self._owns_channel and self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _call(self, method: str, request: Message, timeout_s: float | None = None) -> Any:
        """Makes one RPC: every call of this client goes through here.

        The deadline is the call's timeout cut to the caller's `deadline` scope. An
        open breaker fails the call at once; otherwise attempts are retried per
        the retry settings, each bounded by the time left. The breaker judges the
        call, not its attempts: it is told one outcome when the call ends (only a
        transport failure counts against it), so a call that a retry saved (e.g. on
        another replica, after the first one's died) counts as a success.
        """
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._stub is None:
            self._open_channel()
        timeout = bounded_timeout_s(self._options.call_timeout_s(timeout_s))
        rpc = getattr(self._admin_stub if method in ADMIN_METHODS else self._stub, method)
        metadata = self._metadata
        self._fail_fast(method)
        breaker = self._admit(method)
        sent = False  # whether an attempt went out: a call the retrier refused at once has no outcome

        decide = self._decide if method in STREAMED else None

        async def attempt(time_left_s: float) -> Any:
            nonlocal sent
            sent = True
            try:
                if decide is not None:
                    return await decide.call(method, request, time_left_s)
                return await rpc(request, timeout=time_left_s, metadata=metadata)
            except grpc.RpcError as err:
                raise error_from_rpc(err) from err

        try:
            if self._retrier is None or not self._guarded(method):
                response = await attempt(timeout)
            else:
                response = await self._retrier.call_async(
                    attempt, deadline=time.monotonic() + timeout, retryable=retry_unless_open(breaker)
                )
        except LoadwardenError as error:
            if sent:
                settle(breaker, error)
            elif breaker is not None:
                breaker.release()
            raise
        except BaseException:  # cancelled or interrupted: no outcome, give back a half-open probe
            if breaker is not None:
                breaker.release()
            raise
        if breaker is not None:
            breaker.record_success()
        return response

    def _open_channel(self) -> None:
        # At construction, or at the first call where the flavour opens channels then
        # (a grpc.aio channel binds to the event loop running when it opens).
        target = self._options.channel
        if self._credentials is None:
            self._channel = traced_aio_insecure_channel(
                target.target, target.channel_options(CHANNEL_OPTIONS), self._interceptors
            )
        else:
            self._channel = traced_aio_secure_channel(
                target.target,
                self._credentials,
                target.channel_options((*CHANNEL_OPTIONS, *self._tls_options)),
                self._interceptors,
            )
        self._stub = _pb_grpc.DecisionServiceStub(self._channel)
        self._admin_stub = _admin_grpc.AdminServiceStub(self._channel)
        self._health = _health_pb_grpc.HealthStub(self._channel)

    async def _release_held(self, lease: Lease, *, success: bool, latency_ms: float, until: float) -> None:
        # Never raises an Exception: one escaping the block must propagate unchanged.
        if lease.fallback:
            self._local_slots.release(lease.lease_id)
            return
        request_id = new_request_id()  # the same on every retry: the service ends the lease once
        self._releases.begin()
        try:
            await self.release_slot(lease.lease_id, success=success, latency_ms=latency_ms, request_id=request_id)
        except NotFoundError:
            pass  # the service no longer holds it
        except Exception as err:  # noqa: BLE001 - retried or logged; the lease expires on its own
            if not (
                is_transport_failure(err)
                and self._releases.add(
                    lease, request_id=request_id, success=success, latency_ms=latency_ms, until=until
                )
            ):
                log_release_failure(lease, err)
        finally:
            self._releases.end()

    async def _release_queued(self, item: tuple[Lease, bool, float, float]) -> None:
        # The release sender's one job: as `slot()`'s exit would have done it.
        lease, success, latency, until = item
        await self._release_held(lease, success=success, latency_ms=latency, until=until)

    async def _retry_release(self, item: PendingRelease, timeout_s: float | None) -> None:
        # Straight to the stub, past the breaker: a background retry holds no caller up and
        # its own backoff paces it, while an open breaker (a slow service's releases timing
        # out) would otherwise leave every pending release to its lease's TTL.
        if item.abandoned:
            request = abandon_request(item.pool, item.abandoned)
        else:
            request = release_slot_request(
                item.lease_id, request_id=item.request_id, success=item.success, latency_ms=item.latency_ms
            )
        timeout = bounded_timeout_s(
            self._options.call_timeout_s(timeout_s)
            if timeout_s is not None
            else max(self._options.timeout_s, BACKGROUND_CALL_MIN_TIMEOUT_S)
        )
        assert self._stub is not None  # opened before any slot was acquired
        try:
            await self._stub.ReleaseSlot(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from err

    async def _health_check(self, timeout_s: float) -> bool:
        # The probe's one call: not through `_call`, so no breaker, retry or budget.
        if self._health is None:
            return False
        try:
            response = await self._health.Check(
                _health_pb.HealthCheckRequest(service=HEALTH_SERVICE),
                timeout=timeout_s,
                wait_for_ready=True,
                metadata=self._metadata,
            )
        except Exception:  # noqa: BLE001 - any failure means "not serving yet"
            return False
        return bool(response.status == _health_pb.HealthCheckResponse.SERVING)

    def _open_decide(self, requests: Any) -> Any:
        # The Decide stream: straight to the stub; each call on it goes through `_call`.
        assert self._stub is not None  # opened by `_call` before its first streamed call
        return self._stub.Decide(requests, metadata=self._metadata)

    def _open_routes(self, request: _pb.WatchRoutesRequest) -> Any:
        # The route watcher's stream: straight to the stub, past breakers and retries (it reconnects itself).
        if self._stub is None:
            self._open_channel()
        assert self._stub is not None
        return self._stub.WatchRoutes(request, metadata=self._metadata)

    async def _send_outcomes(self, request: _pb.ReportOutcomeRequest) -> _pb.ReportOutcomeResponse:
        # Many requests' outcomes in one call: a trace of its own (the service links it to the
        # decisions' spans), not a child of whatever span was current where the sender started.
        # An empty context, so any tracing on this channel (the SDK's, the standard instrumentation's) agrees.
        detached = otel_context.attach(otel_context.Context())
        try:
            response: _pb.ReportOutcomeResponse = await self._call("ReportOutcome", request)
        finally:
            otel_context.detach(detached)
        return response
