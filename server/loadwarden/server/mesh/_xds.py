"""The ADS server (``envoy.service.discovery.v3.AggregatedDiscoveryService``, state of the
world) over a DecisionCore: its settings, its auth, its streams' caps and lifecycle. The
protocol of a stream is ``_xds_stream``; the resources are ``_xds_resources``.

On the service's gRPC port (``handlers()``) it shares the port's TLS and limits; on a port
of its own (``serve()``) it takes the credentials it is given. One feed per core serves
every stream and polls only while a stream is open. A malformed request ends its stream
with INVALID_ARGUMENT; past a stream cap a stream is refused with RESOURCE_EXHAUSTED.

Auth, as the DecisionService: with client tokens configured each stream must present
``authorization: Bearer <token>``, UNAUTHENTICATED without, PERMISSION_DENIED for an
unknown one. grpcio (C core 1.85) sends one from its bootstrap's ``call_creds``
(``jwt_token_file``, gRFC A97) when ``GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true``,
only over TLS (``channel_creds`` ``tls``; over plaintext the stream fails "does not have a
sufficient security level"), and only a JWT-shaped token (``new_xds_token``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc
from envoy.service.discovery.v3 import (  # type: ignore[import-untyped]  # xds-protos: no stubs
    ads_pb2,  # noqa: F401 - registers ads.proto, so reflection can describe the service
    discovery_pb2,
)

from loadwarden.policy import InvalidArgument, ResourceExhausted

from ..engine._core import DecisionCore
from ..rpc.reflection import enable_reflection
from ._settings import XdsSettings
from ._xds_resources import pool_resources
from ._xds_stream import Build, _Feed, _Stream

log = logging.getLogger("loadwarden.server")

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_METHOD = "StreamAggregatedResources"
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # largest DiscoveryRequest the own port accepts


# --- auth ------------------------------------------------------------------------------


class Refused(Exception):
    """A stream's credentials are missing (UNAUTHENTICATED) or wrong (PERMISSION_DENIED)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()  # tokens are looked up by digest, never compared as secrets


def _digests(tokens: Mapping[str, str]) -> dict[bytes, str]:
    return {_digest(token.encode("utf-8")): name for token, name in tokens.items()}


def _caller(metadata: Iterable[tuple[str, str | bytes]] | None, by_digest: Mapping[bytes, str]) -> str:
    if not by_digest:
        return ""
    for key, value in metadata or ():
        if key != "authorization":
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            name = by_digest.get(_digest(token.strip().encode("utf-8", "surrogateescape")))
            if name is None:
                raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"the token is not valid for {ADS_SERVICE}")
            return name
        break
    raise Refused(
        grpc.StatusCode.UNAUTHENTICATED,
        f"{ADS_SERVICE} needs a token: send 'authorization: Bearer <token>' (bootstrap call_creds jwt_token_file)",
    )


def check_bearer(metadata: Iterable[tuple[str, str | bytes]] | None, tokens: Mapping[str, str]) -> str:
    """The caller that ``metadata``'s bearer token names, as the DecisionService checks it.

    Args:
        metadata: The call's invocation metadata.
        tokens: Token -> caller name (``AuthSettings.tokens()``); empty leaves ADS open.

    Returns:
        The caller's name; ``""`` (anonymous) when no tokens are configured.

    Raises:
        Refused: UNAUTHENTICATED without a bearer token, PERMISSION_DENIED for an unknown one.
    """
    return _caller(metadata, _digests(tokens))


def new_xds_token(expires_at_s: int = 4_102_444_800) -> str:
    """A fresh client token shaped as a JWT, for ``[auth.clients]`` and a ``jwt_token_file``.

    grpcio's ``jwt_token_file`` call credentials send only a token they can read an ``exp``
    from (else the xDS stream fails UNAUTHENTICATED "error parsing JWT token"). This one is
    ``header.payload.secret``: an unsigned header, a payload holding ``exp`` only (epoch
    seconds, 2100-01-01 by default; the client re-reads the file 30 s before it) and 32
    random bytes. loadwarden compares the whole token as a secret and checks neither.
    """

    def part(value: dict[str, Any]) -> str:
        raw = json.dumps(value, separators=(",", ":")).encode("ascii")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'exp': expires_at_s})}.{secrets.token_urlsafe(32)}"


# --- the server ----------------------------------------------------------------------------


class AdsServer:
    """ADS over a DecisionCore, on the service's port (``handlers()``) or its own (``serve()``).

    Args:
        settings: The ``[xds]`` section.
        tokens: Client token -> caller name (``AuthSettings.tokens()``); empty leaves ADS open.
        core: The core to serve; or ``attach`` it once the service has built it (until then
            streams are refused with UNAVAILABLE).
        build: Builds a pool's resources from its view (tests wrap it).
        sleep: Awaited between comparisons with the seconds to wait.
    """

    def __init__(
        self,
        settings: XdsSettings,
        *,
        tokens: Mapping[str, str] | None = None,
        core: DecisionCore | None = None,
        build: Build = pool_resources,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self._by_digest = _digests(tokens or {})
        self._core = core
        self._build = build
        self._sleep = sleep
        self._epoch = secrets.token_hex(4)  # this process's versions never equal another's
        self._feeds: dict[int, _Feed] = {}
        self._by_caller: dict[str, int] = {}
        self._server: grpc.aio.Server | None = None
        self.counts = {"streams": 0, "acks": 0, "nacks": 0}  # open streams; ACKs and NACKs received

    def attach(self, core: DecisionCore) -> None:
        """Serves ``core`` from now on (streams opened before keep theirs until they end)."""
        self._core = core

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        """The generic handlers to add to a ``grpc.aio.Server`` (``start_service(extra_handlers=...)``)."""
        handler: grpc.RpcMethodHandler[bytes, Any] = grpc.stream_stream_rpc_method_handler(
            self._stream,  # no request deserializer: a malformed request is answered INVALID_ARGUMENT
            response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
        )
        return (grpc.method_handlers_generic_handler(ADS_SERVICE, {_METHOD: handler}),)

    async def serve(self, credentials: grpc.ServerCredentials | None = None) -> int:
        """Starts ADS (and reflection) on ``settings.listen``, with TLS when ``credentials`` are
        given; returns the bound port. Raises OSError when it cannot be bound."""
        if not self.settings.listen:
            raise ValueError("xds.listen is empty: add handlers() to the service's gRPC server instead")
        if self._by_digest and credentials is None:
            log.warning(
                "xds.listen %s is plaintext while client tokens are configured: gRPC clients send call "
                "credentials only over TLS, so their streams are refused (UNAUTHENTICATED)",
                self.settings.listen,
            )
        server = grpc.aio.server(
            options=(("grpc.max_receive_message_length", MAX_REQUEST_BYTES),),
            maximum_concurrent_rpcs=self.settings.max_streams + 64,  # room for reflection and refusals
        )
        server.add_generic_rpc_handlers(self.handlers())
        enable_reflection((ADS_SERVICE,), server)
        listen = self.settings.listen
        try:
            port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
        except RuntimeError as exc:
            raise OSError(f"xds.listen: cannot listen on {listen}: {exc}") from None
        await server.start()
        self._server = server
        log.info("xDS (ADS) serving on %s (port %d)%s", listen, port, " with TLS" if credentials else "")
        return port

    async def stop(self, grace_s: float | None = None) -> None:
        """Stops the own port (``serve``), letting streams end for ``grace_s`` seconds, and the feeds."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        for feed in self._feeds.values():
            feed.stop()
        self._feeds.clear()

    def _admit(self, caller: str) -> None:
        held = self._by_caller.get(caller, 0)
        if self.counts["streams"] >= self.settings.max_streams:
            cap, key, value, who = "max_streams", "xds.max_streams", self.settings.max_streams, "the service"
        elif caller and held >= self.settings.max_streams_per_caller:
            cap, key, who = "max_streams_per_caller", "xds.max_streams_per_caller", f"caller {caller!r}"
            value = self.settings.max_streams_per_caller
        else:
            self.counts["streams"] += 1
            self._by_caller[caller] = held + 1
            return
        raise ResourceExhausted.cap_reached(cap, key, value, f"{who} holds {value} ADS streams", 1.0)

    def _leave(self, caller: str) -> None:
        self.counts["streams"] -= 1
        self._by_caller[caller] -= 1
        if not self._by_caller[caller]:
            del self._by_caller[caller]

    async def _stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            caller = _caller(context.invocation_metadata(), self._by_digest)
        except Refused as refused:
            await context.abort(refused.code, refused.message)
        core = self._core
        if core is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the decision core is not started yet; retry")
        try:
            self._admit(caller)
        except ResourceExhausted as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        feed = self._feeds.get(id(core))
        if feed is None:
            feed = _Feed(core, self.settings.push_interval_ms / 1000.0, self._build, self._sleep)
            feed.start()
            self._feeds[id(core)] = feed
        feed.streams += 1
        stream = _Stream(context.peer(), self._epoch, self.counts)
        wake = asyncio.Event()
        feed.events.add(wake)
        reader = asyncio.get_running_loop().create_task(self._read(requests, stream, wake))
        try:
            while True:
                wake.clear()  # before reading the state, so a change after this is not lost
                if isinstance(stream.error, InvalidArgument):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(stream.error))
                if stream.error is not None:
                    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {_METHOD}; see service logs")
                for response in stream.responses(feed.resources):
                    yield response
                if stream.ended:
                    return  # the client closed its side
                await wake.wait()
        finally:
            reader.cancel()
            feed.events.discard(wake)
            self._leave(caller)
            feed.streams -= 1
            if feed.streams == 0 and self._feeds.get(id(core)) is feed:
                feed.stop()  # nobody listens: no polling until the next stream
                del self._feeds[id(core)]

    @staticmethod
    async def _read(requests: AsyncIterator[bytes], stream: _Stream, wake: asyncio.Event) -> None:
        try:
            async for raw in requests:
                stream.take(raw)
                wake.set()
        except Exception as exc:  # the stream ends with it: INVALID_ARGUMENT, or INTERNAL for a bug
            if not isinstance(exc, InvalidArgument):
                log.exception("unexpected error in %s/%s", ADS_SERVICE, _METHOD)
            stream.error = exc
        finally:
            stream.ended = True
            wake.set()
