"""Bearer tokens on the gRPC port: who may call AdminService and DecisionService.

* ``AdminService`` needs the admin token (``[admin] token``, the one the admin HTTP
  port uses) when one is configured. With none configured it is open only while
  the service listens on a loopback address; on any other address it is refused
  (PERMISSION_DENIED), since anyone who can reach the port could reconfigure pools.
* ``DecisionService`` needs the client token (``[auth] client_token``) when one is
  configured, and is open otherwise.
* Health and reflection are always open: they reveal no decision state, and
  load balancers and grpcurl need them without credentials.

Callers send ``authorization: Bearer <token>`` metadata. No usable token is
UNAUTHENTICATED; a wrong one is PERMISSION_DENIED. ``AuthInterceptor`` answers
before the request is even deserialised, and sits after the tracing interceptor,
so refused calls still get a span with their status code. Tokens are compared in
constant time and appear in no log line, span, status message, repr or exception.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from loadwarden.v1 import admin_pb2, decision_pb2

from ._errors import ConfigError

log = logging.getLogger("loadwarden.server")

MIN_TOKEN_LEN = 16
AUTHORIZATION = "authorization"

_ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
_DECISION_SERVICE = decision_pb2.DESCRIPTOR.services_by_name["DecisionService"]
_ADMIN_PREFIX = f"/{_ADMIN_SERVICE.full_name}/"
_DECISION_PREFIX = f"/{_DECISION_SERVICE.full_name}/"
# "/pkg.Service/Method" -> (request streaming, response streaming) of every protected method:
# a refusal is answered by a handler of the method's own kind, without asking the server for it.
_KINDS = {
    f"/{service.full_name}/{method.name}": (method.client_streaming, method.server_streaming)
    for service in (_ADMIN_SERVICE, _DECISION_SERVICE)
    for method in service.methods
}


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """The ``[auth]`` section: the data plane's token.

    Attributes:
        client_token: Bearer token every DecisionService RPC must present; empty (the
            default) leaves the data plane open. At least 16 printable ASCII characters
            without spaces, different from ``admin.token``. Prefer
            ``LOADWARDEN_AUTH__CLIENT_TOKEN`` to writing it in the file. Never shown in
            reprs, logs or errors.
    """

    client_token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        check_token(self.client_token, "auth.client_token")


def check_token(token: object, key: str) -> None:
    """An empty token or one of at least MIN_TOKEN_LEN printable ASCII characters without spaces.

    Raises:
        ConfigError: naming ``key``; the message never echoes the token.
    """
    if not isinstance(token, str):
        raise ConfigError(key, "must be a string, got a non-string value")
    if token and (len(token) < MIN_TOKEN_LEN or not all("!" <= c <= "~" for c in token)):
        raise ConfigError(key, f"must be at least {MIN_TOKEN_LEN} printable ASCII characters "
                               "without spaces, e.g. from secrets.token_urlsafe(32)")


def parse_auth(raw: Mapping[str, Any]) -> AuthSettings:
    """The ``[auth]`` section; unknown keys name themselves."""
    valid = set(AuthSettings.__dataclass_fields__)
    for key in raw:
        if key not in valid:
            raise ConfigError(f"auth.{key}", f"unknown key; valid keys: {', '.join(sorted(valid))}")
    return AuthSettings(**raw)


@dataclass(frozen=True, slots=True)
class _Rule:
    """How one service is guarded: by a token (its UTF-8 bytes), or refused outright (None)."""

    service: str
    expected: bytes | None = field(repr=False)
    refusal: str = ""  # the PERMISSION_DENIED message when expected is None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks ``authorization: Bearer <token>`` metadata before a protected RPC runs.

    Args:
        admin_token: The AdminService token; empty means none is configured.
        client_token: The DecisionService token; empty leaves the data plane open.
        admin_open: With no admin token, whether AdminService is open (a loopback
            listen address) or refused.
    """

    def __init__(self, *, admin_token: str, client_token: str, admin_open: bool) -> None:
        admin_name, decision_name = _ADMIN_SERVICE.full_name, _DECISION_SERVICE.full_name
        self._admin: _Rule | None
        if admin_token:
            self._admin = _Rule(admin_name, admin_token.encode("utf-8"))
        elif admin_open:
            self._admin = None
        else:
            self._admin = _Rule(admin_name, None, f"{admin_name} is refused: the service listens on a "
                                                  "non-loopback address and no admin token is configured "
                                                  "(set admin.token)")
        self._decision = _Rule(decision_name, client_token.encode("utf-8")) if client_token else None
        # (method, code, message) -> refusing handler; bounded by the protected methods x 3 answers.
        self._refusals: dict[tuple[str, grpc.StatusCode, str], grpc.RpcMethodHandler] = {}

    @property
    def active(self) -> bool:
        """Whether any RPC is guarded; an inactive interceptor need not be installed."""
        return self._admin is not None or self._decision is not None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if method.startswith(_DECISION_PREFIX):
            rule = self._decision
        elif method.startswith(_ADMIN_PREFIX):
            rule = self._admin
        else:
            rule = None
        if rule is None or method not in _KINDS:  # open, or not a method of ours: the server answers
            return await continuation(handler_call_details)
        if rule.expected is None:
            return self._refuse(method, grpc.StatusCode.PERMISSION_DENIED, rule.refusal)
        presented = _presented_token(handler_call_details.invocation_metadata)  # type: ignore[attr-defined]
        if presented is None:
            return self._refuse(method, grpc.StatusCode.UNAUTHENTICATED,
                                f"{rule.service} needs a token: send 'authorization: Bearer <token>' metadata")
        if not hmac.compare_digest(presented, rule.expected):
            return self._refuse(method, grpc.StatusCode.PERMISSION_DENIED,
                                f"the token is not valid for {rule.service}")
        return await continuation(handler_call_details)

    def _refuse(self, method: str, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
        key = (method, code, message)
        handler = self._refusals.get(key)
        if handler is None:
            handler = self._refusals[key] = _refusing_handler(method, code, message)
        return handler


def _presented_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> bytes | None:
    """The bearer token of the first ``authorization`` entry; None when there is none to check."""
    for key, value in metadata or ():
        if key != AUTHORIZATION:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        scheme, _, credentials = text.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials:
            return None
        return credentials.encode("utf-8", "surrogateescape")
    return None


def _refusing_handler(method: str, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of ``method``'s kind that ends the call with ``code``; the request is never parsed."""
    request_streaming, response_streaming = _KINDS[method]

    async def refuse(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        log.debug("refused %s from %s: %s", method, context.peer(), code.name)
        await context.abort(code, message)

    async def refuse_stream(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        await refuse(request_or_iterator, context)
        yield  # pragma: no cover - abort raised; this makes the function an async generator

    # No deserializer: a refused request's bytes are never parsed.
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    return grpc.unary_unary_rpc_method_handler(refuse)


def auth_interceptors(
    *, admin_token: str, client_token: str, loopback: bool, listen: str
) -> tuple[grpc.aio.ServerInterceptor, ...]:
    """The auth interceptor for these settings, or none when nothing is guarded (and logs the policy).

    Args:
        admin_token: ``admin.token``; empty when not configured.
        client_token: ``auth.client_token``; empty when not configured.
        loopback: Whether the gRPC listen address is a loopback address.
        listen: The gRPC listen address, for the log line.
    """
    interceptor = AuthInterceptor(admin_token=admin_token, client_token=client_token, admin_open=loopback)
    if admin_token:
        log.info("AdminService requires the admin token")
    elif loopback:
        log.info("AdminService is open without a token: %s is a loopback address and no admin.token "
                 "is configured", listen)
    else:
        log.warning("AdminService is refused on %s: no admin.token is configured for a non-loopback "
                    "address", listen)
    if client_token:
        log.info("DecisionService requires the client token")
    return (interceptor,) if interceptor.active else ()
