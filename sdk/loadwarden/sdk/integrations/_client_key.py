"""Who a request is from, for per-client rate limits: its client's IP address, read
through the proxies the app trusts, or the key the app's own function gives.

A pool's `rate_limit` is per `client_key` (see `AcquireSlot`). The middlewares send
the client's IP address by default. Forwarding headers are read only when the app
names the proxies it trusts (`TrustedProxies`): a header any client can set is
otherwise a key any client can choose. Every failure here (a function that raises,
a header that does not parse) falls back to the peer's address and is logged, at
most once a minute per kind; a request never fails for it.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from loadwarden.policy import NAME_PATTERN

RequestT = TypeVar("RequestT")
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_HOPS = 64  # right-most entries of a forwarding header that are read, count
LOG_INTERVAL_S = 60.0  # one log line per kind of problem at most this often, seconds
HASHED_PREFIX = "sha256:"  # a key that is not a valid name is sent as this plus its SHA-256
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")

_log = logging.getLogger("loadwarden.sdk.integrations")


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The proxies in front of the app, and the header in which they name the client.

    Give exactly one of `count` and `networks`. The client is the right-most
    address that is not a trusted proxy's: a client can put anything it likes on
    the left of the header, never on the right of what its first proxy appended.

    Attributes:
        header: Header the proxies append the address they saw to:
            "X-Forwarded-For" (the default), "Forwarded" (RFC 7239, its ``for=``
            values) or another comma-separated one such as "X-Real-IP".
        count: How many proxies stand in front of the app, each appending one
            address: the client is the `count`-th address from the right (the
            left-most one when the header holds fewer). Use it when the proxies'
            addresses are not known (a cloud load balancer) and the app is not
            reachable but through them.
        networks: The proxies' addresses or networks ("10.0.0.0/8", "::1"). The
            header is read only when the peer is one of them; walking it from the
            right, the first address that is not one of them is the client.

    Raises:
        ValueError: Neither or both of `count` and `networks`, a bad count, a bad
            network or header name; the message names it.
    """

    header: str = "X-Forwarded-For"
    count: int = 0
    networks: Sequence[str] = ()  # kept as a tuple: the settings stay hashable

    def __post_init__(self) -> None:
        if not isinstance(self.header, str) or not _HEADER_NAME.fullmatch(self.header):
            raise ValueError(f"header must be an HTTP header name, got {self.header!r}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise ValueError(f"count must be an int >= 0, got {self.count!r}")
        if isinstance(self.networks, str) or not isinstance(self.networks, Sequence):
            raise ValueError(f"networks must be a sequence of addresses or networks, got {self.networks!r}")
        object.__setattr__(self, "networks", tuple(self.networks))  # hashable, and the caller's list may change
        if (self.count > 0) == bool(self.networks):
            raise ValueError("give exactly one of count (proxies in front of the app) and networks (their addresses)")
        for network in self.networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except (TypeError, ValueError):
                raise ValueError(f"networks: {network!r} is not an IP address or network") from None


@functools.lru_cache(maxsize=64)
def _parsed_networks(networks: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    return tuple(ipaddress.ip_network(network, strict=False) for network in networks)


def _address(text: str | None) -> IpAddress | None:
    """An address from a header entry or a peer: "1.2.3.4", "1.2.3.4:80", "[::1]:80",
    "::1", "fe80::1%eth0"; None when it is none of those."""
    if not text:
        return None
    text = text.strip().strip('"')
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port; an IPv6 address has two colons or more
        text = text.partition(":")[0]
    text = text.partition("%")[0]  # a zone id says which interface, not who
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _forwarded_for(element: str) -> str | None:
    """The ``for=`` value of one RFC 7239 element; None when it has none."""
    for pair in _split_outside_quotes(element, ";"):
        name, eq, value = pair.partition("=")
        if eq and name.strip().lower() == "for":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].replace('\\"', '"')
            return value
    return None


def hops(header: str, values: Sequence[str]) -> list[str | None]:
    """The addresses a forwarding header lists, left to right (its last `MAX_HOPS`);
    None for an element of "Forwarded" without ``for=``."""
    joined = ",".join(values)
    if header.lower() == "forwarded":
        entries: list[str | None] = [_forwarded_for(e) for e in _split_outside_quotes(joined, ",")]
    else:
        entries = [e.strip() for e in joined.split(",")]
    return entries[-MAX_HOPS:]


def client_address(
    peer: str | None, header_values: Sequence[str], trusted: TrustedProxies | None
) -> tuple[str, str | None]:
    """The client's address, and what was wrong with the forwarding header (None when nothing).

    Args:
        peer: The address the connection came from; None when there is none (a
            Unix socket, a test).
        header_values: The values of `trusted.header`, one per header line, in order.
        trusted: The proxies in front of the app; None reads no header.

    Returns:
        The address as text ("" when there is none), and a problem description when
        the header was present but could not be used (the peer's address is then
        the answer).
    """
    peer_address = _address(peer)
    peer_text = "" if peer_address is None else str(peer_address)
    if trusted is None or not any(v.strip() for v in header_values):
        return peer_text, None
    listed = hops(trusted.header, header_values)
    if trusted.count:
        entry = listed[max(0, len(listed) - trusted.count)]
        address = _address(entry)
        if address is None:
            return peer_text, f"{trusted.header}: the client's entry {_shown(entry)} is not an IP address"
        return str(address), None
    networks = _parsed_networks(tuple(trusted.networks))
    if peer_address is None or not any(peer_address in n for n in networks):
        return peer_text, None  # not from a trusted proxy: its header says nothing
    for entry in reversed(listed):
        address = _address(entry)
        if address is None:
            return peer_text, f"{trusted.header}: entry {_shown(entry)} is not an IP address"
        if not any(address in n for n in networks):
            return str(address), None
    return str(_address(listed[0])), None  # every hop is a proxy: the left-most is as far as it goes


def _shown(entry: str | None) -> str:
    if entry is None:
        return "(an element without for=)"
    return repr(entry if len(entry) <= 48 else entry[:48] + "...")


def as_key(key: str) -> str:
    """`key` as the service accepts a client key: itself when it is a valid name (1-128
    of [A-Za-z0-9._:@/-]), else ``sha256:`` and its digest (still one key per value)."""
    if NAME_PATTERN.fullmatch(key):
        return key
    return HASHED_PREFIX + hashlib.sha256(key.encode("utf-8", "backslashreplace")).hexdigest()


class ThrottledLog:
    """Logs each kind of problem at most once per `interval_s`, saying how many were not logged."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def log(self, level: int, kind: str, message: str, *, exc_info: bool = False) -> None:
        now = self._clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._interval_s:
                self._quiet[kind] = self._quiet.get(kind, 0) + 1
                return
            self._last[kind] = now
            quiet = self._quiet.pop(kind, 0)
        suffix = f" ({quiet} more like it in the last {self._interval_s:g} s)" if quiet else ""
        _log.log(level, "%s%s", message, suffix, exc_info=exc_info)


class ClientKeys(Generic[RequestT]):
    """Turns a request into its client key: the app's `function`, else the client's address.

    Args:
        function: The app's function of the request returning the key (None or ""
            sends none: the request is anonymous); None uses the client's address.
        trusted: The proxies whose header names the client; None reads no header.
        peer_of: The request's peer address, or None.
        header_of: The request's values of a header (its name as given), one per line.
    """

    def __init__(
        self,
        function: Callable[[RequestT], str | None] | None,
        trusted: TrustedProxies | None,
        peer_of: Callable[[RequestT], str | None],
        header_of: Callable[[RequestT, str], Sequence[str]],
    ) -> None:
        if function is not None and not callable(function):
            raise ValueError(f"client_key must be a function of the request or None, got {function!r}")
        if trusted is not None and not isinstance(trusted, TrustedProxies):
            raise ValueError(f"trusted_proxies must be a TrustedProxies or None, got a {type(trusted).__name__}")
        self._function = function
        self._trusted = trusted
        self._peer_of = peer_of
        self._header_of = header_of
        self.log = ThrottledLog()

    def address(self, request: RequestT) -> str:
        """The client's address as a key ("" when unknown); a bad header is logged and ignored."""
        trusted = self._trusted
        values = self._header_of(request, trusted.header) if trusted is not None else ()
        address, problem = client_address(self._peer_of(request), values, trusted)
        if problem is not None:
            self.log.log(logging.WARNING, "header", f"{problem}; using the peer's address {address!r} as client key")
        return address

    def __call__(self, request: RequestT) -> str:
        if self._function is None:
            return self.address(request)
        try:
            key = self._function(request)
        except Exception:  # the app's bug must not fail its requests: logged, the address used
            self.log.log(
                logging.ERROR,
                "raised",
                f"client_key function {self._function!r} raised; using the client's address as client key",
                exc_info=True,
            )
            return self.address(request)
        if key is None or key == "":
            return ""
        if not isinstance(key, str):
            self.log.log(
                logging.ERROR,
                "type",
                f"client_key function {self._function!r} returned {type(key).__name__}, not a str or None; "
                "using the client's address as client key",
            )
            return self.address(request)
        return as_key(key)
