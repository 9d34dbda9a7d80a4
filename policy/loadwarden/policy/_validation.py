"""Checks shared by config loading and request translation.

Every check names the field it rejects, so a client (or an operator reading a
config error) sees exactly what to fix.
"""

from __future__ import annotations

import re

from ._errors import InvalidArgument

NAME_MAX_LEN = 128
NAME_CHARS = "[A-Za-z0-9._:@/-]"
ADDRESS_MAX_LEN = 255
# Characters of a rejected value echoed in an error message: a client's value of
# any length never makes an error message (and its gRPC trailer) large.
SHOWN_MAX_LEN = 64
NAME_PATTERN = re.compile(f"{NAME_CHARS}{{1,{NAME_MAX_LEN}}}")
_ADDRESS = re.compile(f"[!-~]{{1,{ADDRESS_MAX_LEN}}}")  # printable ASCII, no spaces


def shown(value: object) -> str:
    """``repr(value)`` for an error message, cut to about SHOWN_MAX_LEN characters.

    ``shown("x" * 1000)`` is ``'xxx...x'... (1000 characters)``.
    """
    if isinstance(value, str) and len(value) > SHOWN_MAX_LEN:
        return f"{value[:SHOWN_MAX_LEN]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= 2 * SHOWN_MAX_LEN else f"{text[: 2 * SHOWN_MAX_LEN]}... ({len(text)} characters)"


def check_name(value: str, field: str) -> str:
    """Returns ``value`` if it is a valid pool/server/operation name, else raises."""
    if NAME_PATTERN.fullmatch(value):
        return value
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > NAME_MAX_LEN:
        raise InvalidArgument(field, f"is {len(value)} characters long; at most {NAME_MAX_LEN} allowed")
    raise InvalidArgument(field, f"must contain only {NAME_CHARS} characters, got {shown(value)}")


def check_address(value: str, field: str) -> str:
    """Returns ``value`` if it is 1-255 printable ASCII characters without spaces."""
    if _ADDRESS.fullmatch(value):
        return value
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > ADDRESS_MAX_LEN:
        raise InvalidArgument(field, f"is {len(value)} characters long; at most {ADDRESS_MAX_LEN} allowed")
    raise InvalidArgument(
        field, f"must be 1-{ADDRESS_MAX_LEN} printable ASCII characters without spaces, got {shown(value)}"
    )


def check_range(value: float, field: str, low: float, high: float) -> float:
    """Returns ``value`` if ``low <= value <= high``; NaN and infinities never pass."""
    if low <= value <= high:  # False for NaN
        return value
    raise InvalidArgument(field, f"must be a finite number in [{low:g}, {high:g}], got {shown(value)}")


def check_count(value: int, field: str, low: int, high: int) -> int:
    """Returns ``value`` if it is an integer (not a bool) in ``[low, high]``."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    raise InvalidArgument(field, f"must be an integer in [{low}, {high}], got {shown(value)}")


def check_ttl_ms(value: int, field: str, maximum: int = 86_400_000) -> int:
    """TTL fields accept 0 ("use the default") or 100 ms to ``maximum`` ms."""
    if value == 0:
        return value
    return check_count(value, field, 100, maximum)
