"""The xDS protocol of one ADS stream (state of the world), and the feed of resources it reads.

``_Feed`` holds every pool's resources of one core, serialized: every
``push_interval_ms`` it compares each pool's view (addresses, weights, states) with the
last and rebuilds only the pools that changed, then wakes every stream.

``_Stream`` keeps, per type URL, what the client subscribes to and what it was sent.
Versions are ``<epoch>-<n>``, counted per stream and type; nonces are counted per
stream. A request whose nonce is not the latest of its type is ignored (it answers a
response a newer one replaced); an ACK is counted; a NACK (``error_detail``) is logged
at WARNING and nothing is re-sent until the state changes, so the client keeps the
version it had. A type's first request with no names subscribes to every Listener or
Cluster (the legacy wildcard), ``*`` does so explicitly; later requests with no names
unsubscribe. Names that match no pool are absent from the answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from loadwarden.policy import InvalidArgument

from ..engine._core import DecisionCore
from ._xds_resources import TYPE_URLS, WILDCARD_TYPES, PoolResources, PoolView, pool_view

log = logging.getLogger("loadwarden.server")

MAX_RESOURCE_NAMES = 10_000  # names in one request, at most
MAX_NAME_LEN = 1_024  # characters of one resource name (or type URL), at most
MAX_BUILD_SHARE = 0.05  # most of the event loop's time the feed may spend comparing pools, as the watch feeds
_DETAIL_LOG_LEN = 2_000  # characters of a NACK's error detail that are logged

Build = Callable[[str, PoolView], PoolResources]


class _Feed:
    """Every pool's resources, serialized, for every stream over one core."""

    def __init__(self, core: DecisionCore, interval_s: float, build: Build, sleep: Callable[[float], Awaitable[Any]]):
        self.core = core
        self.interval_s = interval_s
        self.build = build
        self.sleep = sleep
        self.resources: dict[str, dict[str, bytes]] = {type_url: {} for type_url in TYPE_URLS}
        self.version = 0  # bumps on every refresh that changed a resource
        self.streams = 0
        self.events: set[asyncio.Event] = set()
        self._views: dict[str, PoolView] = {}
        self._task: asyncio.Task[None] | None = None

    def refresh(self) -> bool:
        """Rebuilds the pools whose view changed; True when a resource changed."""
        now = self.core.clock.monotonic()
        views = {pool.name: pool_view(pool, now) for pool in self.core.pools()}
        if views == self._views:
            return False
        changed = False
        for name, view in views.items():
            old = self._views.get(name)
            if old == view:
                continue
            for server_id, why in sorted(set(view.left_out) - set(old.left_out if old else ())):
                log.warning("xDS: server %s/%s is left out of its endpoints: %s", name, server_id, why)
            for type_url, message in zip(TYPE_URLS, self.build(name, view), strict=True):
                data = message.SerializeToString(deterministic=True)
                if self.resources[type_url].get(name) != data:
                    self.resources[type_url][name] = data
                    changed = True
        for name in self._views.keys() - views.keys():
            for by_name in self.resources.values():
                changed |= by_name.pop(name, None) is not None
        self._views = views
        self.version += changed
        return changed

    def start(self) -> None:
        self.refresh()  # the first stream answers from the current state, never an empty one
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loadwarden-xds-feed")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            began = time.monotonic()
            try:
                changed = self.refresh()
            except Exception:  # a bug in building must not end the streams: the last state stays
                log.exception("xDS: building the resources failed; clients keep the last state")
                changed = False
            if changed:
                for event in self.events:
                    event.set()
            await self.sleep(max(self.interval_s, (time.monotonic() - began) / MAX_BUILD_SHARE))


# --- one stream --------------------------------------------------------------------------


class _Watch:
    """What one stream asked for and was sent of one type URL."""

    __slots__ = ("asked", "named", "names", "nonce", "pending", "responses", "sent", "version", "wildcard")

    def __init__(self) -> None:
        self.asked = False  # a request of this type arrived
        self.named = False  # a request of this type named resources, "*" too (no legacy wildcard after it)
        self.names: frozenset[str] = frozenset()
        self.wildcard = False
        self.pending = False  # must answer, changed or not
        self.sent: dict[str, bytes] | None = None
        self.responses = 0
        self.nonce = ""
        self.version = ""


class _Stream:
    """Subscriptions, versions and nonces of one ADS stream."""

    def __init__(self, peer: str, epoch: str, counts: dict[str, int]) -> None:
        self.peer = peer
        self.node = ""  # the client's node id, from its first request
        self.epoch = epoch
        self.counts = counts
        self.watches: dict[str, _Watch] = {}
        self.nonces = 0
        self.error: Exception | None = None
        self.ended = False

    def who(self) -> str:
        return f"{self.node!r} at {self.peer}" if self.node else self.peer

    def take(self, raw: bytes) -> None:
        """Applies one request. Raises InvalidArgument naming the field for a malformed one."""
        try:
            request = discovery_pb2.DiscoveryRequest.FromString(raw)
        except DecodeError:
            raise InvalidArgument("DiscoveryRequest", "cannot be parsed as envoy.service.discovery.v3") from None
        type_url, names = request.type_url, list(request.resource_names)
        if not type_url:
            raise InvalidArgument("type_url", "is required on an aggregated (ADS) stream")
        if len(names) > MAX_RESOURCE_NAMES:
            raise InvalidArgument("resource_names", f"at most {MAX_RESOURCE_NAMES} names, got {len(names)}")
        for index, name in enumerate((type_url, *names)):
            if len(name) > MAX_NAME_LEN:
                field = "type_url" if index == 0 else f"resource_names[{index - 1}]"
                raise InvalidArgument(field, f"is {len(name)} characters long; at most {MAX_NAME_LEN} allowed")
        if request.node.id and not self.node:
            self.node = request.node.id[:128]
        if type_url not in TYPE_URLS:
            log.debug("xDS client %s asks for %s, which loadwarden does not serve", self.who(), type_url)
            return
        watch = self.watches.setdefault(type_url, _Watch())
        nonce = request.response_nonce
        if nonce and nonce != watch.nonce:
            return  # answers a response that a newer one of this type replaced: the protocol ignores it
        if nonce and request.HasField("error_detail"):
            self.counts["nacks"] += 1
            log.warning(
                "xDS client %s rejected %s version %s: %s; it keeps version %r",
                self.who(),
                type_url.rpartition(".")[2],
                watch.version,
                request.error_detail.message[:_DETAIL_LOG_LEN],
                request.version_info,
            )
        elif nonce:
            self.counts["acks"] += 1
        explicit = frozenset(name for name in names if name != "*")
        wildcard = "*" in names or (not names and type_url in WILDCARD_TYPES and not watch.named)
        watch.named |= bool(names)
        if not nonce or (explicit, wildcard) != (watch.names, watch.wildcard):
            watch.pending = True
        watch.asked, watch.names, watch.wildcard = True, explicit, wildcard

    def responses(self, resources: Mapping[str, Mapping[str, bytes]]) -> list[Any]:
        """A DiscoveryResponse for each type whose subscribed resources differ from those sent."""
        out = []
        for type_url, watch in self.watches.items():
            if not watch.asked:
                continue
            available = resources[type_url]
            current = dict(available) if watch.wildcard else {n: available[n] for n in watch.names if n in available}
            if not watch.pending and current == watch.sent:
                continue
            self.nonces += 1
            watch.responses += 1
            watch.pending, watch.sent = False, current
            watch.nonce, watch.version = str(self.nonces), f"{self.epoch}-{watch.responses}"
            out.append(
                discovery_pb2.DiscoveryResponse(
                    version_info=watch.version,
                    type_url=type_url,
                    nonce=watch.nonce,
                    resources=[any_pb2.Any(type_url=type_url, value=current[name]) for name in sorted(current)],
                )
            )
        return out
