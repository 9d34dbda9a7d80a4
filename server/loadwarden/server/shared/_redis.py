"""The Redis connection the replicas share: settings, the start-up checks, scripts, events.

``connect`` turns every way a start can fail into a ConfigError naming the key to
fix: a URL that does not parse, a Redis that does not answer, a listener that is
not Redis, credentials it refuses, and keys under the prefix that another version
(or another program) wrote. A URL is shown with its password replaced by ``***``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from loadwarden.policy import Unavailable, shown

from .._errors import ConfigError
from . import _lua

log = logging.getLogger("loadwarden.server")

SCHEMA = "loadwarden.redis/1"
SCHEMES = ("redis", "rediss", "unix")
DEFAULT_PREFIX = "{loadwarden}:"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
# How long a lost subscription waits before it subscribes again, at most, seconds.
RESUBSCRIBE_MAX_S = 2.0


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """``[state]`` with ``store = "redis"``.

    Attributes:
        url: ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS) or
            ``unix:///path/to/redis.sock?db=0``. With ``sentinels`` set, only its
            credentials and database are used.
        key_prefix: Prepended to every key and channel. Several services (or test
            runs) share one Redis under different prefixes. With ``cluster`` it must
            hold a hash tag (``{...}``): each script touches several keys at once, so
            all of a service's keys live in one slot.
        pool_size: Connections to Redis at most.
        connect_timeout_ms: Longest wait for a connection, ms.
        command_timeout_ms: Longest wait for one command's answer, ms.
        sentinels: ``host:port`` of Redis Sentinels; the master is looked up by
            ``sentinel_master``.
        sentinel_master: The monitored master's name, with ``sentinels``.
        cluster: Redis Cluster (``url`` names one node).
        on_failure: What admission does while Redis is unreachable: ``fail_closed``
            (UNAVAILABLE, health NOT_SERVING), ``fail_open`` (grant everything) or
            ``local`` (each replica grants ``limit // replicas``).
        rate_limit_on_failure: The same for rate limits; ``on_failure`` when empty.
        replicas: How many replicas share each limit (for ``local``).
        exchange_interval_ms: How often replicas exchange in-flight counts, ms.
        merge_interval_ms: How often replicas merge what their strategies learned, ms.
    """

    url: str = field(default=DEFAULT_URL, repr=False)
    key_prefix: str = DEFAULT_PREFIX
    pool_size: int = 32
    connect_timeout_ms: int = 1_000
    command_timeout_ms: int = 1_000
    sentinels: tuple[str, ...] = ()
    sentinel_master: str = ""
    cluster: bool = False
    on_failure: str = "fail_closed"
    rate_limit_on_failure: str = ""
    replicas: int = 1
    exchange_interval_ms: int = 250
    merge_interval_ms: int = 5_000

    @property
    def shown_url(self) -> str:
        return redacted(self.url)


def redacted(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "(a URL that does not parse)"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


REDIS_KEYS = {
    "url",
    "key_prefix",
    "pool_size",
    "connect_timeout_ms",
    "command_timeout_ms",
    "sentinels",
    "sentinel_master",
    "cluster",
    "on_failure",
    "rate_limit_on_failure",
    "replicas",
    "exchange_interval_ms",
    "merge_interval_ms",
}
FAIL_OPEN, FAIL_CLOSED, LOCAL = "fail_open", "fail_closed", "local"
FAILURE_MODES = (FAIL_CLOSED, FAIL_OPEN, LOCAL)


def parse_redis(values: Mapping[str, Any]) -> RedisSettings:
    """The Redis settings of ``[state]``, from values whose types and ranges are checked
    (``app._config_file``'s State table): what no single value says is checked here.

    Raises:
        ConfigError: naming ``state.<key>``.
    """
    settings = RedisSettings(**{key: values[key] for key in REDIS_KEYS if key in values})
    _check_url(settings.url, need_host=not settings.sentinels)
    if bool(settings.sentinel_master) != bool(settings.sentinels):
        key = "state.sentinel_master" if settings.sentinels else "state.sentinels"
        raise ConfigError(key, "sentinels and sentinel_master go together: set both or neither")
    if settings.cluster and settings.sentinels:
        raise ConfigError("state.cluster", "a Redis Cluster is not found through sentinels; set one or the other")
    if settings.cluster and not _has_hash_tag(settings.key_prefix):
        raise ConfigError(
            "state.key_prefix",
            f"with cluster = true must hold a hash tag such as {{loadwarden}}: (got {shown(settings.key_prefix)}); "
            "every script touches several keys, which must share one slot",
        )
    return settings


def _check_url(url: str, *, need_host: bool = True) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError("state.url", f"{redacted(url)} does not parse: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise ConfigError(
            "state.url",
            f"{redacted(url)}: the scheme must be one of {', '.join(s + '://' for s in SCHEMES)}",
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError("state.url", f"{redacted(url)}: a unix:// URL needs a socket path")
        return
    if not parts.hostname and need_host:  # with sentinels, they say where the master is
        raise ConfigError("state.url", f"{redacted(url)}: no host")
    del port  # read only to check it parses
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ConfigError("state.url", f"{redacted(url)}: the database must be a number, got {database!r}")


def host_port(text: str) -> bool:
    """Whether ``text`` reads as ``host:port`` with a port in 0-65535."""
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and int(port) <= 65535)


def _has_hash_tag(prefix: str) -> bool:
    start = prefix.find("{")
    return start >= 0 and prefix.find("}", start + 2) > start


class SharedRedis:
    """A connected, checked Redis: the client, the scripts, and the service's event channel.

    Attributes:
        prefix: The key prefix.
        replica: This process's replica id (unique per start).
        secret: The id key every replica signs lease and decision ids with.
    """

    def __init__(self, settings: RedisSettings, client: Any, replica: str, secret: bytes) -> None:
        self.settings = settings
        self.client = client
        self.prefix = settings.key_prefix
        self.replica = replica
        self.secret = secret
        self.events_channel = f"{self.prefix}events"
        self.acquire = client.register_script(_lua.ACQUIRE)
        self.release = client.register_script(_lua.RELEASE)
        self.renew = client.register_script(_lua.RENEW)
        self.lookup = client.register_script(_lua.LOOKUP)
        self.sweep = client.register_script(_lua.SWEEP)
        self.rate = client.register_script(_lua.RATE)
        self.own = client.register_script(_lua.OWN)
        self._handlers: list[Callable[[str], None]] = []
        # Set by close(): the listener stops even if redis-py swallows its cancellation in a read.
        self._closing = False
        self._on_resubscribe: list[Callable[[], Awaitable[None]]] = []
        self._subscribed = asyncio.Event()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def on_event(self, handler: Callable[[str], None]) -> None:
        """Calls ``handler(message)`` for every message on the events channel."""
        self._handlers.append(handler)

    def on_resubscribe(self, handler: Callable[[], Awaitable[None]]) -> None:
        """Awaits ``handler()`` after a lost subscription is back (events may have been missed)."""
        self._on_resubscribe.append(handler)

    async def listen(self) -> None:
        """Delivers events until cancelled; a lost connection is retried with backoff."""
        delay = 0.05
        first = True
        while not self._closing:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.events_channel)
                if not first:
                    log.info("state.url: subscribed to %s again", self.events_channel)
                    for handler in self._on_resubscribe:
                        await handler()
                first = False
                self._subscribed.set()
                delay = 0.05
                while not self._closing:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    data = message["data"]
                    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
                    for deliver in self._handlers:
                        deliver(text)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of the subscription: retry, never die
                log.warning("state.url: event subscription lost (%s); retrying in %.2f s", _problem(exc), delay)
                await asyncio.sleep(delay)
                delay = min(RESUBSCRIBE_MAX_S, delay * 2)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def wait_subscribed(self, timeout_s: float) -> bool:
        """Waits until the events subscription is up (True), at most ``timeout_s`` (False)."""
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def emptied(self) -> bool:
        """Whether Redis lost everything (restarted without persistence): the schema key is gone.

        Raises:
            Unavailable: Redis did not answer.
        """
        try:
            return bool(await self.client.exists(self.key("schema")) == 0)
        except Exception as exc:  # noqa: BLE001 - redis-py's errors and OS errors alike mean "unreachable"
            raise Unavailable(
                f"the shared state store is unreachable: {_problem(exc)}", reason="store_unavailable"
            ) from None

    async def reclaim_schema(self) -> None:
        """Writes the schema and this service's id key back into an emptied Redis (the first
        replica to do so wins; they all hold the same key)."""
        await self.client.set(self.key("schema"), SCHEMA, nx=True)
        await self.client.set(self.key("secret"), self.secret.hex(), nx=True)

    async def drop_idle_connections(self) -> None:
        """Closes the pool's idle connections, so the next commands connect afresh.

        After Redis restarted, every connection opened before is dead, and redis-py
        finds that out only by failing the next command sent on it: without this, one
        probe's answer would end an outage and the next call on an old connection
        would start another. Connections in use fail and reconnect on their own.
        """
        pool = getattr(self.client, "connection_pool", None)  # a Cluster client reconnects per node
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.disconnect(inuse_connections=False)

    def stop_listening(self) -> None:
        """Ends ``listen`` at its next message or second."""
        self._closing = True

    async def close(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            await self.client.aclose()


def _problem(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else f"{text[:300]}..."


def _client(settings: RedisSettings) -> Any:
    """A redis-py asyncio client for ``settings`` (not connected yet)."""
    try:
        import redis.asyncio as aioredis
    except ImportError:
        raise ConfigError("state.store", "the redis store needs redis-py: pip install 'loadwarden[redis]'") from None
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout_ms / 1000.0,
        "socket_timeout": settings.command_timeout_ms / 1000.0,
        "health_check_interval": 10,
    }
    if settings.sentinels:
        from redis.asyncio.sentinel import Sentinel

        parts = urllib.parse.urlsplit(settings.url)
        addresses = [(h, int(p)) for h, _, p in (s.rpartition(":") for s in settings.sentinels)]
        sentinel = Sentinel(addresses, sentinel_kwargs={"socket_timeout": options["socket_timeout"]}, **options)
        db = int(parts.path.strip("/") or 0) if parts.scheme != "unix" else 0
        return sentinel.master_for(
            settings.sentinel_master,
            password=parts.password,
            username=parts.username,
            db=db,
            max_connections=settings.pool_size,
        )
    if settings.cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(settings.url, max_connections=settings.pool_size, **options)
    # A call finding all pool_size connections busy waits for one (up to connect_timeout_ms):
    # redis-py's default pool raises "Too many connections" instead, which would mark a
    # healthy Redis unreachable under a burst of more concurrent calls than pool_size.
    pool = _waiting_pool_class(aioredis).from_url(
        settings.url,
        max_connections=settings.pool_size,
        wait_timeout=settings.connect_timeout_ms / 1000.0,
        **options,
    )
    return aioredis.Redis.from_pool(pool)


def _waiting_pool_class(aioredis: Any) -> Any:
    """redis-py's asyncio ConnectionPool, changed in one way: a call that finds all
    ``max_connections`` in use waits (up to ``wait_timeout`` seconds) for one to be
    released instead of failing with "Too many connections".

    The common case, a free connection, costs what the plain pool costs. redis-py's own
    BlockingConnectionPool takes a condition and a timeout on every command, which cut
    AcquireSlot+ReleaseSlot over Redis from about 0.53x to 0.45x of the memory store
    (bench/shared_store.py, alternating runs).
    """
    from redis.exceptions import MaxConnectionsError

    class WaitingConnectionPool(aioredis.ConnectionPool):
        def __init__(self, *args: Any, wait_timeout: float, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._wait_timeout = wait_timeout
            self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

        async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            loop = asyncio.get_running_loop()
            deadline = None
            while True:
                try:
                    return await super().get_connection(*args, **kwargs)
                except MaxConnectionsError:
                    deadline = loop.time() + self._wait_timeout if deadline is None else deadline
                    left = deadline - loop.time()
                    if left <= 0:
                        raise
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                    try:
                        await asyncio.wait_for(waiter, left)
                    except TimeoutError:
                        raise MaxConnectionsError(
                            f"all {self.max_connections} connections (state.pool_size) stayed busy "
                            f"for {self._wait_timeout:g} s"
                        ) from None
                    finally:
                        with contextlib.suppress(ValueError):
                            self._waiters.remove(waiter)

        async def release(self, connection: Any) -> None:
            await super().release(connection)
            # Every waiter tries again (one whose call was cancelled cannot swallow the wake-up);
            # those that find none taken back wait on. Waiting is rare: the pool is full.
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)

    return WaitingConnectionPool


def sync_client(settings: RedisSettings) -> Any:
    """A blocking redis-py client for ``settings`` (Sentinel and Cluster too), for the code
    that runs in worker threads (the learned-state blob)."""
    import redis

    timeout_s = settings.command_timeout_ms / 1000.0
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout_ms / 1000.0,
        "socket_timeout": timeout_s,
    }
    if settings.sentinels:
        from redis.sentinel import Sentinel

        parts = urllib.parse.urlsplit(settings.url)
        addresses = [(h, int(p)) for h, _, p in (s.rpartition(":") for s in settings.sentinels)]
        sentinel = Sentinel(addresses, sentinel_kwargs={"socket_timeout": timeout_s}, **options)
        db = int(parts.path.strip("/") or 0) if parts.scheme != "unix" else 0
        return sentinel.master_for(settings.sentinel_master, password=parts.password, username=parts.username, db=db)
    if settings.cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(settings.url, **options)
    return redis.Redis.from_url(settings.url, **options)


async def connect(settings: RedisSettings) -> SharedRedis:
    """Connects, checks that it is a Redis that takes our scripts, and claims the key schema.

    Raises:
        ConfigError: naming ``state.url`` (unreachable, not Redis, refused credentials,
            too old for the scripts) or ``state.key_prefix`` (keys of another version).
    """
    client = _client(settings)
    where = settings.shown_url if not settings.sentinels else f"sentinel master {settings.sentinel_master!r}"
    timeout_s = (settings.connect_timeout_ms + 2 * settings.command_timeout_ms) / 1000.0
    try:
        async with asyncio.timeout(timeout_s):
            info = await client.info("server")
            version = str(info.get("redis_version", "0"))
            if int(version.split(".")[0]) < 6:
                raise ConfigError("state.url", f"Redis at {where} is version {version}; loadwarden needs 6.0 or later")
            secret = await _claim_schema(client, settings.key_prefix, where)
    except Exception as exc:
        await _close(client)
        if isinstance(exc, ConfigError):
            raise
        problem = _start_problem(exc, where, timeout_s)
        if problem is None:
            raise
        raise ConfigError("state.url", problem) from None
    replica = secrets.token_hex(4)
    shared = SharedRedis(settings, client, replica, secret)
    log.info(
        "shared state on Redis %s (version %s), key prefix %r, replica %s", where, version, settings.key_prefix, replica
    )
    return shared


def _start_problem(exc: Exception, where: str, timeout_s: float) -> str | None:
    """What a failure at start says about the Redis at ``where``; None for a bug of ours."""
    import redis.exceptions as errors

    if isinstance(exc, errors.AuthenticationError):
        return f"Redis at {where} refused the credentials: {_problem(exc)}"
    if isinstance(exc, errors.ResponseError):
        return f"Redis at {where} refused a start-up command: {_problem(exc)}"
    if isinstance(exc, (TimeoutError, errors.TimeoutError)):
        return (
            f"no Redis answer from {where} within {timeout_s * 1000:.0f} ms "
            "(is it a Redis server? see state.connect_timeout_ms and state.command_timeout_ms)"
        )
    if isinstance(exc, errors.InvalidResponse):
        return f"{where} does not speak the Redis protocol: {_problem(exc)}"
    if isinstance(exc, errors.ConnectionError):
        return f"cannot reach Redis at {where}: {_problem(exc)}"
    if isinstance(exc, (errors.RedisError, OSError, ValueError)):
        return f"cannot use Redis at {where}: {_problem(exc)}"
    return None


async def _claim_schema(client: Any, prefix: str, where: str) -> bytes:
    """Writes (or checks) ``<prefix>schema`` and returns the shared id key.

    Raises:
        ConfigError: naming ``state.key_prefix`` when the prefix holds keys another
            version (or another program) wrote.
    """
    schema_key = f"{prefix}schema"
    written = await client.get(schema_key)
    if written is None:
        stray = await _some_key(client, prefix)
        # Another replica starting at the same moment may have claimed the schema (and
        # written more) since the read above: its keys are loadwarden's, not strays.
        if stray is not None and (written := await client.get(schema_key)) is None:
            raise ConfigError(
                "state.key_prefix",
                f"Redis at {where} holds keys under {prefix!r} (e.g. {stray!r}) that loadwarden did not write "
                f"(no {schema_key!r}); choose another key_prefix or remove them",
            )
        if written is None:
            await client.set(schema_key, SCHEMA, nx=True)
            written = await client.get(schema_key)
    text = written.decode("utf-8", "replace") if isinstance(written, bytes) else str(written)
    if text != SCHEMA:
        raise ConfigError(
            "state.key_prefix",
            f"the keys under {prefix!r} on Redis at {where} are schema {text!r}, written by another "
            f"version of loadwarden; this one reads {SCHEMA!r}: choose another key_prefix, or remove "
            "those keys once no replica of that version runs",
        )
    await client.set(f"{prefix}secret", secrets.token_hex(32), nx=True)
    secret = await client.get(f"{prefix}secret")
    return bytes.fromhex(secret.decode("ascii") if isinstance(secret, bytes) else str(secret))


async def _some_key(client: Any, prefix: str) -> str | None:
    """One key under ``prefix``, if any (a bounded scan: a large keyspace is not walked whole)."""
    pattern = _glob_escape(prefix) + "*"
    if not hasattr(client, "connection_pool"):  # a Cluster client: its scan walks every node
        async for key in client.scan_iter(match=pattern, count=1000):
            return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        return None
    cursor: Any = 0
    for _ in range(100):
        cursor, keys = await client.scan(cursor=cursor, match=pattern, count=1000)
        if keys:
            key = keys[0]
            return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if not cursor:
            return None
    return None


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


async def _close(client: Any) -> None:
    with contextlib.suppress(Exception):
        await client.aclose()


def decode(value: Any) -> str:
    """A Redis reply (bytes) as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
