"""The service's live dashboard page, served by an app (the Django views) from the SDK.

The page is the one the service's admin port serves (``dashboard.html`` of
``loadwarden.observability``), read as a file: importing that package would import
the service's dependencies (aiohttp), which the bare SDK install does not have. Its
data URLs and its sign-in are set by attributes on its ``<html>`` element: the app's
load-status URL, no history and no ``/metrics`` (the SDK can feed neither, so those
sections are hidden), and the app's own session instead of the admin token.

`load_status_document` gives the JSON the page reads, in the shape of the admin
port's ``/api/load-status`` (the contract's field names, enum names, RFC 3339 times).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import functools
import hashlib
import html
import importlib.util
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadwarden.sdk import BatchMode, LoadSource, LoadStatus, ServerState

PAGE_PACKAGE = "loadwarden.observability"
PAGE_FILE = "dashboard.html"
# The contract's enum value names are these prefixes plus the SDK enum's member name.
ENUM_PREFIXES: Mapping[type[enum.Enum], str] = {
    ServerState: "SERVER_STATE_",
    BatchMode: "BATCH_MODE_",
    LoadSource: "LOAD_SOURCE_",
}


class DashboardUnavailable(RuntimeError):
    """The dashboard page is not installed beside the SDK."""


@functools.lru_cache(maxsize=1)
def _page_source() -> str:
    # find_spec imports the parent (the `loadwarden` namespace), never the package itself.
    spec = importlib.util.find_spec(PAGE_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / PAGE_FILE
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise DashboardUnavailable(f"{PAGE_FILE} of {PAGE_PACKAGE} is not installed")


def _hashes(text: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.S)
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(block.encode("utf-8")).digest()).decode() + "'" for block in blocks
    )


def dashboard_page(status_url: str) -> tuple[bytes, dict[str, str]]:
    """The page reading `status_url` with the app's session, and its response headers
    (a Content-Security-Policy allowing only its own inline script and style).

    Raises:
        DashboardUnavailable: The page's file is not installed.
    """
    text = _page_source()
    attributes = (
        f' data-status-url="{html.escape(status_url)}" data-history-url="" data-metrics-url="" data-auth="session"'
    )
    page, count = re.subn(r"<html\b([^>]*)>", lambda m: f"<html{m.group(1)}{attributes}>", text, count=1)
    if not count:
        raise DashboardUnavailable(f"{PAGE_FILE} has no <html> element to configure")
    csp = (
        "default-src 'none'; "
        f"script-src {_hashes(page, 'script')}; style-src {_hashes(page, 'style')}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": csp,
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }
    return page.encode("utf-8"), headers


def _json(value: object) -> Any:
    if isinstance(value, enum.Enum):
        prefix = ENUM_PREFIXES.get(type(value), "")
        return prefix + value.name
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
        return {name: _json(v) for name, v in fields if v is not None}
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    return value


def load_status_document(status: LoadStatus) -> dict[str, Any]:
    """`status` as the admin port's ``/api/load-status`` JSON: the contract's field names,
    ``SERVER_STATE_SERVING``-style enum names, RFC 3339 times; unset fields left out."""
    document: dict[str, Any] = _json(status)
    return document
