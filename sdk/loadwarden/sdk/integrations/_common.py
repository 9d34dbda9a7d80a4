"""What the web integrations share: settings, the request's admission, the 503 answer."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from loadwarden.sdk import ResourceExhaustedError, SlotDenied, TlsConfig
from loadwarden.sdk.integrations._client_key import TrustedProxies

SLOT_FALLBACKS = ("local_limit", "fail_open", "fail_closed")  # the SDK's `slot_fallback` values
MAX_PRIORITY = 9
DEFAULT_RETRY_AFTER_S = 1  # Retry-After when the denial carries no hint, seconds

RequestT = TypeVar("RequestT")


@dataclass(frozen=True, slots=True)
class Admission:
    """The slot a request asks for.

    Attributes:
        pool: Pool name.
        priority: 0-9; higher is served first.
    """

    pool: str
    priority: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.pool, str) or not self.pool:
            raise ValueError(f"pool must be a non-empty string, got {self.pool!r}")
        if (
            isinstance(self.priority, bool)
            or not isinstance(self.priority, int)
            or not 0 <= self.priority <= MAX_PRIORITY
        ):
            raise ValueError(f"priority must be an int 0-{MAX_PRIORITY}, got {self.priority!r}")


class AdmissionChoiceError(ValueError):
    """The user's `choose` function returned something that is not an admission."""


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    """How a middleware admits requests; validated at construction.

    Attributes:
        target: Decision service address, "host:port".
        pool: Pool of every request when no `choose` function is given.
        priority: Priority of every request when no `choose` function is given, 0-9.
        wait_s: Longest a request waits for a slot, seconds, >= 0.
        lease_ttl_s: Lease time to live, seconds (renewed while the request runs);
            None means the pool's default.
        slot_fallback: Answer while the service is unreachable: "local_limit",
            "fail_open" or "fail_closed".
        local_slot_limit: Local slots per pool under "local_limit", count, >= 1.
        timeout_s: Deadline of each call to the service beyond the wait, seconds, > 0.
        tls: TLS (or mutual TLS) settings of the channel; None is plaintext.
        token: The service's client token (``[auth] client_token``); None sends none.
            Never shown in a repr.
        trusted_proxies: The proxies in front of the app, whose forwarding header
            names the client for per-client rate limits; None reads no header (the
            client key is the peer's address).
    """

    target: str = "127.0.0.1:50051"
    pool: str = "default"
    priority: int = 0
    wait_s: float = 0.0
    lease_ttl_s: float | None = None
    slot_fallback: str = "local_limit"
    local_slot_limit: int = 10
    timeout_s: float = 1.0
    tls: TlsConfig | None = None
    token: str | None = field(default=None, repr=False)
    trusted_proxies: TrustedProxies | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) or not self.target:
            raise ValueError(f"target must be a non-empty 'host:port', got {self.target!r}")
        Admission(self.pool, self.priority)  # names pool / priority when wrong
        _check_number("wait_s", self.wait_s, minimum=0.0)
        if self.lease_ttl_s is not None:
            _check_number("lease_ttl_s", self.lease_ttl_s, minimum=0.1)
        if self.slot_fallback not in SLOT_FALLBACKS:
            raise ValueError(f"slot_fallback must be one of {', '.join(SLOT_FALLBACKS)}, got {self.slot_fallback!r}")
        if (
            isinstance(self.local_slot_limit, bool)
            or not isinstance(self.local_slot_limit, int)
            or self.local_slot_limit < 1
        ):
            raise ValueError(f"local_slot_limit must be an int >= 1, got {self.local_slot_limit!r}")
        _check_number("timeout_s", self.timeout_s, minimum=0.0, exclusive=True)
        if self.tls is not None and not isinstance(self.tls, TlsConfig):
            raise ValueError(f"tls must be a loadwarden.sdk.TlsConfig, got a {type(self.tls).__name__}")
        if self.token is not None and not isinstance(self.token, str):
            raise ValueError("token must be a string")
        if self.trusted_proxies is not None and not isinstance(self.trusted_proxies, TrustedProxies):
            raise ValueError(
                "trusted_proxies must be a loadwarden.sdk.integrations.TrustedProxies, "
                f"got a {type(self.trusted_proxies).__name__}"
            )

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of `Client` / `AsyncClient` for these settings."""
        return {
            "timeout_s": self.timeout_s,
            "slot_fallback": self.slot_fallback,
            "local_slot_limit": self.local_slot_limit,
            "tls": self.tls,
            "token": self.token,
        }


def _check_number(name: str, value: object, *, minimum: float, exclusive: bool = False) -> None:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and not (value <= minimum if exclusive else value < minimum)
    )
    if not ok:
        bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


class Chooser(Generic[RequestT]):
    """Turns a request into its `Admission`, or None (the request is not admitted
    through loadwarden and passes straight through)."""

    def __init__(
        self, settings: AdmissionSettings, choose: Callable[[RequestT], Admission | str | None] | None
    ) -> None:
        self._default = Admission(settings.pool, settings.priority)
        self._choose = choose

    def __call__(self, request: RequestT) -> Admission | None:
        if self._choose is None:
            return self._default
        chosen = self._choose(request)
        if chosen is None or isinstance(chosen, Admission):
            return chosen
        if isinstance(chosen, str):
            try:
                return Admission(chosen, self._default.priority)
            except ValueError as err:
                raise AdmissionChoiceError(
                    f"choose function {self._choose!r} returned an invalid pool: {err}"
                ) from None
        raise AdmissionChoiceError(
            f"choose function {self._choose!r} must return an Admission, a pool name or None, got {chosen!r}"
        )


def unknown_pool(admission: Admission, choose: object) -> AdmissionChoiceError:
    return AdmissionChoiceError(
        f"pool {admission.pool!r} (chosen by {choose!r}) does not exist at the Decision service"
    )


def retry_after_s(denied: SlotDenied | ResourceExhaustedError) -> int:
    """The Retry-After header value: the service's hint rounded up, seconds, >= 1."""
    hint = denied.retry_after_s
    if hint is None or not math.isfinite(hint) or hint <= 0:
        return DEFAULT_RETRY_AFTER_S
    return max(1, math.ceil(hint))


def rate_limited(denied: SlotDenied | ResourceExhaustedError) -> bool:
    """Whether the refusal is the pool's per-client rate limit (the service names the
    field it refused, ``client_key:``), not a full queue."""
    return isinstance(denied, ResourceExhaustedError) and denied.details.startswith("client_key:")


def denied_status(denied: SlotDenied | ResourceExhaustedError) -> int:
    """429 for a client over its rate limit, 503 for an overloaded pool."""
    return 429 if rate_limited(denied) else 503


def denied_document(denied: SlotDenied | ResourceExhaustedError, retry_after: int, pool: str = "") -> dict[str, Any]:
    """The short JSON document of a 429 or 503 answer; `pool` is the one asked for."""
    if rate_limited(denied):
        error, reason = "rate_limited", "RATE_LIMITED"
    else:
        error, reason = "overloaded", denied.denial if isinstance(denied, SlotDenied) else "RESOURCE_EXHAUSTED"
    if isinstance(denied, SlotDenied) and denied.pool:
        pool = denied.pool
    return {"error": error, "reason": reason, "pool": pool, "retry_after_s": retry_after}


def denied_body(denied: SlotDenied | ResourceExhaustedError, retry_after: int, pool: str = "") -> bytes:
    """`denied_document` as JSON bytes."""
    return json.dumps(denied_document(denied, retry_after, pool)).encode()


class ServerError(Exception):
    """Thrown into a `slot` block so its release reports success=False (status >= 500);
    never escapes a middleware."""


class HeldSlot:
    """A sync `Client.slot` block entered for one request; it ends exactly once,
    whichever of the response's end, close or error comes first."""

    def __init__(self, block: Any) -> None:
        self._block = block
        self._lock = threading.Lock()
        self._ended = False

    def end(self, failed: bool, exc: BaseException | None = None) -> None:
        """Releases the slot with success = not `failed`; `exc` is the error that ended the request."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        if exc is not None:
            self._block.__exit__(type(exc), exc, exc.__traceback__)  # releases with success=False
        elif failed:
            marker = ServerError()
            self._block.__exit__(ServerError, marker, None)
        else:
            self._block.__exit__(None, None, None)


class ReleasingIterable:
    """A response body that holds its slot until it is exhausted or closed (PEP 3333's
    `close`), so a streaming response holds its slot while it streams."""

    def __init__(self, body: Iterable[bytes], held: HeldSlot, failed: Callable[[], bool]) -> None:
        self._body = body
        self._iter: Iterator[bytes] | None = None
        self._held = held
        self._failed = failed
        self._error = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iter is None:
            self._iter = iter(self._body)
        try:
            return next(self._iter)
        except StopIteration:
            self._held.end(self._failed() or self._error)
            raise
        except BaseException:
            self._error = True
            raise

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            # Closed before the end (client gone, or an error while streaming): still released.
            self._held.end(self._failed() or self._error)
