"""Bearer tokens on the gRPC port: who may call AdminService and DecisionService.

* ``AdminService`` needs the admin token (``[admin] token``, the one the admin HTTP
  port uses) when one is configured. With none configured it is open only while
  the service listens on a loopback address; on any other address it is refused
  (PERMISSION_DENIED), since anyone who can reach the port could reconfigure pools.
* ``DecisionService`` needs a client token (``[auth] client_token`` or one of the
  named ``[auth.clients]``) when any is configured, and is open otherwise. The
  token presented names the caller (``Callers``): what a caller makes (leases,
  decisions, request ids, rate buckets) is its own, and another caller's ids are
  NOT_FOUND to it.
* Health and reflection are always open: they reveal no decision state, and
  load balancers and grpcurl need them without credentials.

Callers send ``authorization: Bearer <token>`` metadata. No usable token is
UNAUTHENTICATED; a wrong one is PERMISSION_DENIED. ``AuthInterceptor`` answers
before the request is even deserialised, and sits after the tracing interceptor,
so refused calls still get a span with their status code. Tokens are looked up by
their SHA-256 digest (no comparison of the secret itself) and appear in no log
line, span, status message, repr or exception.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from loadwarden.policy import NAME_CHARS, NAME_MAX_LEN, NAME_PATTERN
from loadwarden.v1 import admin_pb2, decision_pb2

from .._errors import ConfigError

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


# Named client credentials at most ([auth.clients]); each costs a dict entry.
MAX_CLIENTS = 1_000
# The identity the single ``auth.client_token`` stands for.
DEFAULT_CLIENT = "client"
# Certificate identities are prefixed so they can never equal a token's name.
CERT_PREFIX = "cert:"


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """The ``[auth]`` section: the data plane's credentials and the callers they name.

    Every lease, decision, request id and rate-limit key belongs to the caller that
    made it: the name of the token it presented, else (with ``tls.require_client_cert``)
    its certificate's identity, else the anonymous caller (no credentials configured).

    Attributes:
        client_token: One bearer token for the data plane, standing for the caller
            named ``client``; empty (the default) configures none. At least 16 printable
            ASCII characters without spaces, different from ``admin.token``. Prefer
            ``LOADWARDEN_AUTH__CLIENT_TOKEN`` to writing it in the file.
        clients: Named callers, name -> bearer token (``[auth.clients]``, at most
            MAX_CLIENTS; names follow the pool-name rules; tokens as for
            ``client_token`` and all different). With any token configured, every
            DecisionService RPC must present one of them. Tokens are never shown in
            reprs, logs or errors.
    """

    client_token: str = field(default="", repr=False)
    clients: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_token(self.client_token, "auth.client_token")
        if not isinstance(self.clients, Mapping):
            raise ConfigError("auth.clients", "must be a table of name = token")
        if len(self.clients) > MAX_CLIENTS:
            raise ConfigError("auth.clients", f"has {len(self.clients)} entries; at most {MAX_CLIENTS} allowed")
        seen: dict[str, str] = {}
        if self.client_token:
            seen[self.client_token] = "auth.client_token"
        for name, token in self.clients.items():
            key = f"auth.clients.{name}"
            if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
                raise ConfigError(key, f"a client name must be 1-{NAME_MAX_LEN} characters of {NAME_CHARS}")
            if name == DEFAULT_CLIENT and self.client_token:
                raise ConfigError(key, f"{DEFAULT_CLIENT!r} is the name auth.client_token stands for; pick another")
            check_token(token, key)
            if not token:
                raise ConfigError(key, "must not be empty")
            if token in seen:
                raise ConfigError(key, f"uses the same token as {seen[token]}; every caller needs its own")
            seen[token] = key

    def tokens(self) -> dict[str, str]:
        """Every configured data-plane token -> the caller name it stands for."""
        named = {token: name for name, token in self.clients.items()}
        if self.client_token:
            named[self.client_token] = DEFAULT_CLIENT
        return named


def check_token(token: object, key: str) -> None:
    """An empty token or one of at least MIN_TOKEN_LEN printable ASCII characters without spaces.

    Raises:
        ConfigError: naming ``key``; the message never echoes the token.
    """
    if not isinstance(token, str):
        raise ConfigError(key, "must be a string, got a non-string value")
    if token and (len(token) < MIN_TOKEN_LEN or not all("!" <= c <= "~" for c in token)):
        raise ConfigError(
            key,
            f"must be at least {MIN_TOKEN_LEN} printable ASCII characters "
            "without spaces, e.g. from secrets.token_urlsafe(32)",
        )


def _digest(token: bytes) -> bytes:
    # Tokens are looked up by their SHA-256: the dict compares digests, never the secret itself.
    return hashlib.sha256(token).digest()


class Callers:
    """Names the caller of an RPC: the identity its leases, decisions and rate buckets belong to.

    The name of the data-plane token presented; else, when client certificates are
    required, ``cert:`` + the certificate's first peer identity (its first SAN, or
    its CN without SANs); else ``""``, the anonymous caller (nothing configured).
    The auth interceptor has already refused calls without a valid token, so an
    unknown token here (a race with nothing) also answers anonymous.

    Args:
        tokens: Token -> caller name (``AuthSettings.tokens()``).
        certificates: Whether client certificates are required (``tls.require_client_cert``).
    """

    __slots__ = ("_by_digest", "_certificates", "anonymous")

    def __init__(self, tokens: Mapping[str, str] | None = None, *, certificates: bool = False) -> None:
        self._by_digest = {_digest(token.encode("utf-8")): name for token, name in (tokens or {}).items()}
        self._certificates = certificates
        self.anonymous = not self._by_digest and not certificates  # every caller is ""

    def of(self, context: grpc.aio.ServicerContext) -> str:
        """The caller of the RPC ``context`` belongs to."""
        if self.anonymous:
            return ""
        if self._by_digest:
            presented = _presented_token(context.invocation_metadata())
            if presented is not None:
                name = self._by_digest.get(_digest(presented))
                if name is not None:
                    return name
        if self._certificates:
            first = next(iter(context.peer_identities() or ()), None)
            if first is not None:
                text = first.decode("utf-8", "replace") if isinstance(first, bytes) else str(first)
                return CERT_PREFIX + text
        return ""


@dataclass(frozen=True, slots=True)
class _Rule:
    """How one service is guarded: by tokens (the SHA-256 digests of their UTF-8 bytes), or
    refused outright (None)."""

    service: str
    expected: frozenset[bytes] | None = field(repr=False)
    refusal: str = ""  # the PERMISSION_DENIED message when expected is None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks ``authorization: Bearer <token>`` metadata before a protected RPC runs.

    Args:
        admin_token: The AdminService token; empty means none is configured.
        client_tokens: The DecisionService tokens (any one admits); none leaves the data plane open.
        admin_open: With no admin token, whether AdminService is open (a loopback
            listen address) or refused.
    """

    def __init__(self, *, admin_token: str, client_tokens: Collection[str], admin_open: bool) -> None:
        admin_name, decision_name = _ADMIN_SERVICE.full_name, _DECISION_SERVICE.full_name
        self._admin: _Rule | None
        if admin_token:
            self._admin = _Rule(admin_name, frozenset({_digest(admin_token.encode("utf-8"))}))
        elif admin_open:
            self._admin = None
        else:
            self._admin = _Rule(
                admin_name,
                None,
                f"{admin_name} is refused: the service listens on a "
                "non-loopback address and no admin token is configured "
                "(set admin.token)",
            )
        self._decision = (
            _Rule(decision_name, frozenset(_digest(t.encode("utf-8")) for t in client_tokens))
            if client_tokens
            else None
        )
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
        method = handler_call_details.method
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
        presented = _presented_token(handler_call_details.invocation_metadata)
        if presented is None:
            return self._refuse(
                method,
                grpc.StatusCode.UNAUTHENTICATED,
                f"{rule.service} needs a token: send 'authorization: Bearer <token>' metadata",
            )
        if _digest(presented) not in rule.expected:
            return self._refuse(method, grpc.StatusCode.PERMISSION_DENIED, f"the token is not valid for {rule.service}")
        return await continuation(handler_call_details)

    def _refuse(self, method: str, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
        key = (method, code, message)
        handler = self._refusals.get(key)
        if handler is None:
            handler = self._refusals[key] = _refusing_handler(method, code, message)
        return handler


def _presented_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> bytes | None:
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
    *, admin_token: str, client_tokens: Collection[str], loopback: bool, listen: str
) -> tuple[grpc.aio.ServerInterceptor, ...]:
    """The auth interceptor for these settings, or none when nothing is guarded (and logs the policy).

    Args:
        admin_token: ``admin.token``; empty when not configured.
        client_tokens: ``auth.client_token`` and the ``auth.clients`` tokens; none when not configured.
        loopback: Whether the gRPC listen address is a loopback address.
        listen: The gRPC listen address, for the log line.
    """
    interceptor = AuthInterceptor(admin_token=admin_token, client_tokens=client_tokens, admin_open=loopback)
    if admin_token:
        log.info("AdminService requires the admin token")
    elif loopback:
        log.info(
            "AdminService is open without a token: %s is a loopback address and no admin.token is configured", listen
        )
    else:
        log.warning("AdminService is refused on %s: no admin.token is configured for a non-loopback address", listen)
    if client_tokens:
        log.info("DecisionService requires a client token (%d callers configured)", len(client_tokens))
    return (interceptor,) if interceptor.active else ()
