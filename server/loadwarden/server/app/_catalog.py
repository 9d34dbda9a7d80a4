"""The configuration that outlives a process: pools, servers, drains and operations.

Whatever makes them — the config file at start, or ``AdminService`` on any replica —
the catalog keeps one record per pool and per operation in the state store:

* ``memory``: nothing is kept (the embedded default; today's behaviour).
* ``file``: one JSON document in the state directory, written atomically after each
  change, before the AdminService call answers.
* ``redis``: one hash of records per kind, a version counter, and a ``C`` event on
  the service's channel for each change; every replica applies it at once, and
  checks the version every ``RESYNC_S`` so a lost event cannot leave it wrong for long.

**The config file and the stored records.** A pool (or operation) in the file is
stored with a digest of its definition there. At start a stored record whose digest
matches the file's definition wins (it may hold AdminService changes made since);
a file definition that changed since (another digest) replaces the stored record,
as does one the store has never seen. A pool AdminService deletes stays deleted
across restarts while the file's definition is unchanged (a tombstone keeps its
digest). Records that do not parse (another version, a hand edit) are skipped with
a warning; the replica keeps serving the rest.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from loadwarden.policy import (
    DecisionError,
    InvalidArgument,
    OperationSettings,
    Pool,
    PoolSettings,
    RateLimit,
    ServerSpec,
    Unavailable,
    parse_operation,
    parse_pool,
)

from .._errors import ConfigError
from ..engine._core import DecisionCore
from ..shared import SharedRedis
from ._config import PoolSpec
from ._store import StateStore

log = logging.getLogger("loadwarden.server")

FORMAT = "loadwarden.configuration/1"
CONFIG_KEY = "configuration"
# A replica on Redis compares its version with the store's this often, seconds.
RESYNC_S = 1.0
POOLS, OPERATIONS = "pools", "operations"
_UNITS = {1.0: "second", 60.0: "minute", 3600.0: "hour"}


# --- records -------------------------------------------------------------------------


def _rate(limit: RateLimit | None) -> str:
    return "" if limit is None else f"{limit.count}/{_UNITS[limit.per_s]}"


def settings_record(settings: PoolSettings) -> dict[str, Any]:
    """``settings`` as the config file's keys; ``parse_pool`` reads it back to equal settings."""
    record: dict[str, Any] = {
        "strategy": settings.strategy,
        "strategy_params": dict(settings.strategy_params),
        "load_report_ttl_ms": settings.load_report_ttl_ms,
        "require_load_report": settings.require_load_report,
        "max_concurrency": settings.max_concurrency,
        "max_queue_length": settings.max_queue_length,
        "max_wait_ms": settings.max_wait_ms,
        "lease_ttl_ms": settings.lease_ttl_ms,
        "max_lease_ttl_ms": settings.max_lease_ttl_ms,
        "limit_algorithm": settings.limit_algorithm,
        "limit_params": dict(settings.limit_params),
        "rate_limit_keys": settings.rate_limit_keys,
        "rate_limit_keys_per_identity": settings.rate_limit_keys_per_identity,
        "outlier_detection": {f.name: getattr(settings.outlier, f.name) for f in fields(settings.outlier)},
        "slow_start_ms": settings.slow_start_ms,
    }
    if settings.rate_limit is not None:
        record["rate_limit"], record["rate_burst"] = _rate(settings.rate_limit), settings.rate_limit.burst
    if settings.identity_rate_limit is not None:
        record["identity_rate_limit"] = _rate(settings.identity_rate_limit)
        record["identity_rate_burst"] = settings.identity_rate_limit.burst
    return record


def pool_record(settings: PoolSettings, servers: Sequence[ServerSpec], drained: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "settings": settings_record(settings),
        "servers": [{"id": s.id, "address": s.address, "weight": s.weight} for s in servers],
        "drained": sorted(drained),
    }


def live_pool_record(pool: Pool) -> dict[str, Any]:
    """What ``pool`` is now, as a record."""
    servers = [ServerSpec(s.id, s.address, s.weight) for s in pool.servers.values()]
    return pool_record(pool.settings, servers, [s.id for s in pool.servers.values() if s.draining])


def operation_record(settings: OperationSettings) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in fields(settings) if f.name != "name"}


def digest(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# --- stores --------------------------------------------------------------------------


@dataclass
class Snapshot:
    """Every stored record: ``pools`` and ``operations`` by name; ``version`` counts changes."""

    version: int = 0
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)

    def of(self, kind: str) -> dict[str, dict[str, Any]]:
        return self.pools if kind == POOLS else self.operations


class CatalogStore(Protocol):
    """Where the records are kept."""

    async def load(self) -> Snapshot:
        """Every record; raises Unavailable when the store cannot be read."""
        ...

    async def put(self, kind: str, name: str, entry: dict[str, Any] | None) -> int:
        """Stores (or with None removes) one record; returns the new version. Raises Unavailable."""
        ...


class FileCatalog:
    """One JSON document in the state directory, rewritten atomically on each change."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._snapshot: Snapshot | None = None
        self._lock = asyncio.Lock()

    async def load(self) -> Snapshot:
        if self._snapshot is None:
            self._snapshot = await asyncio.to_thread(self._read)
        return Snapshot(self._snapshot.version, dict(self._snapshot.pools), dict(self._snapshot.operations))

    def _read(self) -> Snapshot:
        try:
            blob = self._store.load(CONFIG_KEY)
            if blob is None:
                return Snapshot()
            data = json.loads(blob.decode("utf-8"))
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} document")
            pools, operations = data.get("pools"), data.get("operations")
            if not isinstance(pools, dict) or not isinstance(operations, dict):
                raise ValueError("missing 'pools' or 'operations'")
            return Snapshot(int(data.get("version", 0)), pools, operations)
        except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
            try:
                aside = self._store.quarantine(CONFIG_KEY)
            except OSError as moved:
                raise ConfigError(
                    "state.path", f"the stored configuration is unusable ({exc}) and cannot be moved aside: {moved}"
                ) from None
            log.warning(
                "the stored configuration is unusable (%s); moved aside to %s; starting from the file", exc, aside
            )
            return Snapshot()

    async def put(self, kind: str, name: str, entry: dict[str, Any] | None) -> int:
        async with self._lock:
            if self._snapshot is None:
                await self.load()
            assert self._snapshot is not None
            records = self._snapshot.of(kind)
            if entry is None:
                records.pop(name, None)
            else:
                records[name] = entry
            self._snapshot.version += 1
            data = {
                "format": FORMAT,
                "version": self._snapshot.version,
                "pools": self._snapshot.pools,
                "operations": self._snapshot.operations,
            }
            blob = json.dumps(data, separators=(",", ":"), allow_nan=False).encode("utf-8")
            try:
                await asyncio.to_thread(self._store.save, CONFIG_KEY, blob)
            except OSError as exc:
                raise Unavailable(f"the configuration could not be saved: {exc}", reason="store_unavailable") from None
            return self._snapshot.version


# --- the catalog ---------------------------------------------------------------------


class Catalog:
    """Keeps the core's configuration in a CatalogStore and the core in step with it.

    It is the AdminService's change recorder (``rpc._servicer.ConfigChanges``): each
    method stores the named pool's or operation's record as it now is in the core.
    """

    def __init__(
        self,
        core: DecisionCore,
        store: CatalogStore | None,
        file_pools: Sequence[PoolSpec] = (),
        file_operations: Sequence[OperationSettings] = (),
    ) -> None:
        self._core = core
        self._store = store
        self._file_pools = {spec.settings.name: pool_record(spec.settings, spec.servers) for spec in file_pools}
        self._file_operations = {s.name: operation_record(s) for s in file_operations}
        self._digests: dict[tuple[str, str], str] = {}  # (kind, name) -> the file definition's digest
        self.version = 0
        self._converging: asyncio.Task[None] | None = None
        self._again = False

    @property
    def durable(self) -> bool:
        return self._store is not None

    async def start(self) -> None:
        """Brings the core and the store into agreement (see the module docstring for who wins).

        Raises:
            ConfigError: the store cannot be read at start.
        """
        if self._store is None:
            return
        try:
            snapshot = await self._store.load()
        except Unavailable as exc:
            raise ConfigError("state.url", str(exc)) from None
        for kind, defined in ((POOLS, self._file_pools), (OPERATIONS, self._file_operations)):
            stored = snapshot.of(kind)
            for name, record in defined.items():
                mark = digest(record)
                self._digests[(kind, name)] = mark
                entry = stored.get(name)
                if entry is not None and entry.get("digest") == mark:
                    continue  # unchanged in the file: the stored record (maybe changed since) wins
                entry = {"record": record, "digest": mark}
                stored[name] = entry
                snapshot.version = await self._put(kind, name, entry)
            for name, entry in stored.items():
                if entry.get("digest"):
                    self._digests[(kind, name)] = str(entry["digest"])
        self._converge_to(snapshot)
        log.info(
            "configuration: %d pools and %d operations in force from the state store (version %d)",
            len(self._core.pools()),
            len(self._core.operations),
            snapshot.version,
        )

    # --- AdminService changes -------------------------------------------------------

    async def pool_changed(self, name: str) -> None:
        await self._record(POOLS, name, live_pool_record(self._core.pool(name)))

    async def pool_deleted(self, name: str) -> None:
        await self._record(POOLS, name, None)

    async def operation_changed(self, name: str) -> None:
        await self._record(OPERATIONS, name, operation_record(self._core.operations[name].settings))

    async def operation_deleted(self, name: str) -> None:
        await self._record(OPERATIONS, name, None)

    async def _record(self, kind: str, name: str, record: dict[str, Any] | None) -> None:
        if self._store is None:
            return
        mark = self._digests.get((kind, name), "")
        if record is None:
            entry: dict[str, Any] | None = {"deleted": True, "digest": mark} if mark else None
        else:
            entry = {"record": record, "digest": mark} if mark else {"record": record}
        try:
            version = await self._put(kind, name, entry)
        except Unavailable as exc:
            raise Unavailable(
                f"the change is in force on this replica but was not stored ({exc}); "
                "it is undone when this replica next agrees with the store — repeat it once the store is back",
                reason=exc.reason,
            ) from None
        if version == self.version + 1:
            self.version = version
        else:  # another replica changed something meanwhile: take it in too
            self.changed_elsewhere()

    async def _put(self, kind: str, name: str, entry: dict[str, Any] | None) -> int:
        assert self._store is not None
        return await self._store.put(kind, name, entry)

    # --- keeping in step --------------------------------------------------------------

    def changed_elsewhere(self) -> None:
        """Another replica stored a change: converge in the background (one run at a time)."""
        if self._converging is not None and not self._converging.done():
            self._again = True
            return
        self._converging = asyncio.get_running_loop().create_task(self._converge(), name="loadwarden-catalog")

    async def _converge(self) -> None:
        while True:
            self._again = False
            try:
                assert self._store is not None
                self._converge_to(await self._store.load())
            except Unavailable as exc:
                log.warning("configuration not brought in step with the store: %s", exc)
                return
            if not self._again:
                return

    async def resync(self, version: int | None) -> None:
        """Converges when the store's ``version`` is not the one this replica last agreed with."""
        if version is not None and version != self.version:
            self.changed_elsewhere()
            if self._converging is not None:
                # wait(), not await: the converge ending in any way returns, while a cancellation
                # of this task still propagates (suppressing CancelledError here hung the shutdown).
                await asyncio.wait({self._converging})

    def _converge_to(self, snapshot: Snapshot) -> None:
        """Makes the core hold exactly the stored pools and operations."""
        core = self._core
        pools = {name: e for name, e in snapshot.pools.items() if not e.get("deleted")}
        operations = {name: e for name, e in snapshot.operations.items() if not e.get("deleted")}
        for pool in core.pools():
            if pool.name not in pools:
                core.delete_pool(pool.name)
        for name, entry in pools.items():
            self._apply_pool(name, entry.get("record"))
        for name in [n for n in core.operations if n not in operations]:
            core.delete_operation(name)
        for name, entry in operations.items():
            self._apply_operation(name, entry.get("record"))
        self.version = snapshot.version

    def _apply_pool(self, name: str, record: Any) -> None:
        core = self._core
        existing = core.find_pool(name)
        if existing is not None and _canonical(live_pool_record(existing)) == _canonical(record):
            return
        try:
            if not isinstance(record, dict):
                raise InvalidArgument("record", "is not a table")
            values = {**record.get("settings", {}), "servers": record.get("servers", [])}
            settings, servers = parse_pool(
                name, "pool", values, f"stored pool {name}", core.limits.max_servers_per_pool
            )
            pool, _ = core.configure_pool(settings, servers or (), where=f"stored pool {name}")
            drained = set(record.get("drained", ()))
            for server in pool.servers.values():
                if server.draining != (server.id in drained):
                    pool.set_draining(server, server.id in drained)
        except (DecisionError, TypeError, ValueError, AttributeError) as exc:
            log.warning("stored pool %s not applied (%s); it keeps its current state here", name, exc)

    def _apply_operation(self, name: str, record: Any) -> None:
        core = self._core
        existing = core.operations.get(name)
        if existing is not None and _canonical(operation_record(existing.settings)) == _canonical(record):
            return
        try:
            if not isinstance(record, dict):
                raise InvalidArgument("record", "is not a table")
            core.configure_operation(parse_operation(name, "operation", record, f"stored operation {name}"))
        except (DecisionError, TypeError, ValueError, AttributeError) as exc:
            log.warning("stored operation %s not applied (%s); it keeps its current state here", name, exc)

    async def close(self) -> None:
        """Stops a converge still running (at shutdown)."""
        if self._converging is not None and not self._converging.done():
            self._converging.cancel()
            await asyncio.wait({self._converging})

    def records(self) -> Snapshot:
        """What this replica holds, as records with their digests (to republish an emptied store)."""
        snapshot = Snapshot(self.version)
        for pool in self._core.pools():
            mark = self._digests.get((POOLS, pool.name))
            entry: dict[str, Any] = {"record": live_pool_record(pool)}
            if mark:
                entry["digest"] = mark
            snapshot.pools[pool.name] = entry
        for name, operation in self._core.operations.items():
            mark = self._digests.get((OPERATIONS, name))
            entry = {"record": operation_record(operation.settings)}
            if mark:
                entry["digest"] = mark
            snapshot.operations[name] = entry
        return snapshot


class RedisCatalog:
    """The records on Redis: ``P config:pools`` and ``P config:operations`` (hashes of JSON),
    ``P config:version``, and a ``C <version> <replica> <kind> <name>`` event per change."""

    def __init__(self, redis: SharedRedis) -> None:
        self._redis = redis
        self._put_script = redis.client.register_script(_PUT)

    def _key(self, kind: str) -> str:
        return self._redis.key(f"config:{kind}")

    async def load(self) -> Snapshot:
        client = self._redis.client
        try:
            async with client.pipeline(transaction=True) as pipe:
                pipe.exists(self._redis.key("schema"))
                pipe.get(self._redis.key("config:version"))
                pipe.hgetall(self._key(POOLS))
                pipe.hgetall(self._key(OPERATIONS))
                schema, version, pools, operations = await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - redis-py's errors and OS errors alike mean "unreachable"
            raise Unavailable(f"the shared state store cannot be read: {exc}", reason="store_unavailable") from None
        if not schema:  # emptied (a restart without persistence): never a reason to delete anything
            raise Unavailable("the shared state store is empty; it is republished first", reason="store_unavailable")
        snapshot = Snapshot(int(version or 0))
        for kind, raw in ((POOLS, pools), (OPERATIONS, operations)):
            records = snapshot.of(kind)
            for name, blob in raw.items():
                try:
                    entry = json.loads(blob)
                except ValueError:
                    log.warning("stored %s record %r is not JSON; skipped", kind, name)
                    continue
                if isinstance(entry, dict):
                    records[name.decode() if isinstance(name, bytes) else str(name)] = entry
        return snapshot

    async def version(self) -> int | None:
        """The store's version; None when it cannot be read."""
        try:
            value = await self._redis.client.get(self._redis.key("config:version"))
        except Exception:  # noqa: BLE001 - unreachable: the next resync tries again
            return None
        return int(value or 0)

    async def put(self, kind: str, name: str, entry: dict[str, Any] | None) -> int:
        blob = "" if entry is None else json.dumps(entry, separators=(",", ":"), allow_nan=False)
        try:
            version = await self._put_script(
                keys=[self._key(kind), self._redis.key("config:version")],
                args=[blob, name, self._redis.events_channel, kind, self._redis.replica],
            )
        except Exception as exc:  # noqa: BLE001 - redis-py's errors and OS errors alike mean "unreachable"
            raise Unavailable(f"the shared state store cannot be written: {exc}", reason="store_unavailable") from None
        return int(version)


# KEYS: the kind's hash, the version counter. ARGV: record ('' removes), name, channel, kind, replica.
_PUT = r"""
if ARGV[1] == '' then redis.call('HDEL', KEYS[1], ARGV[2]) else redis.call('HSET', KEYS[1], ARGV[2], ARGV[1]) end
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], 'C ' .. v .. ' ' .. ARGV[5] .. ' ' .. ARGV[4] .. ' ' .. ARGV[2])
return v
"""
