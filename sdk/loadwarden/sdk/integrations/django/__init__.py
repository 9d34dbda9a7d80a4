"""Django middleware: every request holds a loadwarden slot, configured from settings.py.

Example (settings.py):
    MIDDLEWARE = ["loadwarden.sdk.integrations.django.AdmissionMiddleware", ...]
    LOAD_MANAGER_ENABLED = True          # False: the middleware removes itself
    LOAD_MANAGER_MAX_CONNECTIONS = 100   # the pool's size when the middleware creates it, and
                                         # the local slots per pool while the service is down
    LOAD_MANAGER_TIMEOUT = 30            # longest a request waits for a slot, seconds
    LOADWARDEN_TARGET = "127.0.0.1:50051"
    LOADWARDEN_POOL = "web"
    LOADWARDEN_FALLBACK = "local_limit"  # or "fail_open" / "fail_closed"

Other settings: LOADWARDEN_TLS (a ``loadwarden.sdk.TlsConfig``), LOADWARDEN_TOKEN
(the service's client token), LOADWARDEN_PRIORITY (0-9), LOADWARDEN_CALL_TIMEOUT (seconds),
LOADWARDEN_LEASE_TTL (seconds), LOADWARDEN_CHOOSE (a function of the request, or
its dotted path, returning an `Admission`, a pool name or None), LOADWARDEN_CLIENT_KEY
(a function of the request, or its dotted path, returning the client key for the
pool's per-client rate limit; by default the client's IP address) and
LOADWARDEN_TRUSTED_PROXIES (a `TrustedProxies`: the proxies whose forwarding header
names the client).

At start-up the middleware creates LOADWARDEN_POOL on the service when it is missing,
sized by LOAD_MANAGER_MAX_CONNECTIONS (``LOADWARDEN_CONFIGURE_POOL = False`` turns that
off; LOADWARDEN_ADMIN_TOKEN is the service's admin token for it, when it has one).
``path("", include("loadwarden.sdk.integrations.django.urls"))`` serves the dashboard
at ``/admin/load/``, its data at ``/api/load-status/`` (both for staff) and the health
document at ``/api/health/`` (see `loadwarden.sdk.integrations.django.views`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings as django_settings  # type: ignore[import-untyped]  # Django ships no type hints
from django.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed  # type: ignore[import-untyped]  # Django ships no type hints
from django.http import HttpRequest, HttpResponse, JsonResponse  # type: ignore[import-untyped]  # Django ships no type hints
from django.urls import Resolver404, resolve  # type: ignore[import-untyped]  # Django ships no type hints
from django.utils.module_loading import import_string  # type: ignore[import-untyped]  # Django ships no type hints

from loadwarden.sdk import Client, NotFoundError, ResourceExhaustedError, SlotDenied
from loadwarden.sdk.integrations._client_key import ClientKeys
from loadwarden.sdk.integrations._common import (
    AdmissionSettings,
    Chooser,
    HeldSlot,
    ReleasingIterable,
    denied_document,
    denied_status,
    retry_after_s,
    unknown_pool,
)
from loadwarden.sdk.integrations.django._pool_setup import PoolSetup

# AdmissionSettings field -> the Django setting that sets it (first is used when both are present).
SETTING_NAMES: dict[str, tuple[str, ...]] = {
    "target": ("LOADWARDEN_TARGET",),
    "pool": ("LOADWARDEN_POOL",),
    "priority": ("LOADWARDEN_PRIORITY",),
    "wait_s": ("LOAD_MANAGER_TIMEOUT",),
    "lease_ttl_s": ("LOADWARDEN_LEASE_TTL",),
    "slot_fallback": ("LOADWARDEN_FALLBACK",),
    "local_slot_limit": ("LOAD_MANAGER_MAX_CONNECTIONS",),
    "timeout_s": ("LOADWARDEN_CALL_TIMEOUT",),
    "tls": ("LOADWARDEN_TLS",),
    "token": ("LOADWARDEN_TOKEN",),
    "trusted_proxies": ("LOADWARDEN_TRUSTED_PROXIES",),
}

_clients: dict[AdmissionSettings, Client] = {}  # one client per distinct settings, for the process
_clients_lock = threading.Lock()


def admission_settings() -> AdmissionSettings:
    """The admission settings in Django's settings.

    Raises:
        ImproperlyConfigured: A setting is out of range; the message names it.
    """
    fields: dict[str, Any] = {}
    source: dict[str, str] = {}
    for field, names in SETTING_NAMES.items():
        for name in names:
            if hasattr(django_settings, name):
                fields[field], source[field] = getattr(django_settings, name), name
                break
    try:
        return AdmissionSettings(**fields)
    except ValueError as err:
        field = str(err).split(" ", 1)[0]
        name = source.get(field, "/".join(SETTING_NAMES.get(field, (field,))))
        raise ImproperlyConfigured(f"{name}: {err}") from None


ViewT = TypeVar("ViewT", bound=Callable[..., Any])
EXEMPT_ATTRIBUTE = "loadwarden_exempt"


def admission_exempt(view: ViewT) -> ViewT:
    """Marks a view the middleware lets through unadmitted (health probes, dashboards).

    Example:
        @admission_exempt
        def ping(request): ...
    """
    setattr(view, EXEMPT_ATTRIBUTE, True)
    return view


def _exempt(request: HttpRequest) -> bool:
    try:
        match = resolve(request.path_info, getattr(request, "urlconf", None))
    except Resolver404:
        return False
    return bool(getattr(match.func, EXEMPT_ATTRIBUTE, False))


def shared_client(settings: AdmissionSettings) -> Client:
    """The process's one `Client` for `settings` (the middleware's and the views')."""
    with _clients_lock:
        client = _clients.get(settings)
        if client is None:
            client = _clients[settings] = Client(settings.target, **settings.client_options())
        return client


class AdmissionMiddleware:
    """Admits each request through a slot of a loadwarden pool (sync middleware).

    A response holds its slot until Django has sent it; a streaming response until
    its content is exhausted or closed. The release reports the latency and
    success (status below 500; Django turns a view's exception into a 500). A
    denied request gets 503 (429 when the client is over the pool's rate limit)
    with `Retry-After` and a short JSON body, and the view does not run. Views
    marked `admission_exempt` (the integration's own) pass through. With
    `LOAD_MANAGER_ENABLED = False` the middleware removes itself.

    At start-up it creates its pool on the service when it is missing, sized by
    `LOAD_MANAGER_MAX_CONNECTIONS` (never changing a pool that exists), unless
    `LOADWARDEN_CONFIGURE_POOL = False`; a request that finds the pool missing
    later has it checked again. Failures are logged and never stop the app.

    Raises:
        ImproperlyConfigured: At start-up, a setting is wrong; the message names it.
        MiddlewareNotUsed: `LOAD_MANAGER_ENABLED` is False.
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        if not getattr(django_settings, "LOAD_MANAGER_ENABLED", True):
            raise MiddlewareNotUsed("LOAD_MANAGER_ENABLED is False")
        self.get_response = get_response
        self.settings: AdmissionSettings = admission_settings()
        choose = _function_setting("LOADWARDEN_CHOOSE")
        self._choose = choose
        self._chooser: Chooser[HttpRequest] = Chooser(self.settings, choose)
        self._keys: ClientKeys[HttpRequest] = ClientKeys(
            _function_setting("LOADWARDEN_CLIENT_KEY"), self.settings.trusted_proxies, _peer, _header
        )
        self._client = shared_client(self.settings)
        configure = getattr(django_settings, "LOADWARDEN_CONFIGURE_POOL", True)
        if not isinstance(configure, bool):
            raise ImproperlyConfigured(f"LOADWARDEN_CONFIGURE_POOL must be True or False, got {configure!r}")
        admin_token = getattr(django_settings, "LOADWARDEN_ADMIN_TOKEN", None)
        if admin_token is not None and not isinstance(admin_token, str):
            raise ImproperlyConfigured("LOADWARDEN_ADMIN_TOKEN must be a string")
        self._setup = PoolSetup(self.settings, self._client, admin_token) if configure else None
        if self._setup is not None:
            self._setup.ensure()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if _exempt(request):
            return self.get_response(request)
        admission = self._chooser(request)
        if admission is None:
            return self.get_response(request)
        key = self._keys(request)
        for attempt in (1, 2):
            block = self._client.slot(
                admission.pool,
                priority=admission.priority,
                wait_s=self.settings.wait_s,
                lease_ttl_s=self.settings.lease_ttl_s,
                client_key=key,
            )
            try:
                block.__enter__()
                break
            except (SlotDenied, ResourceExhaustedError) as denied:
                return _denied(denied, admission.pool)
            except NotFoundError:
                setup = self._setup if admission.pool == self.settings.pool else None  # only its own pool
                if attempt == 2 or setup is None or not setup.ensure(found_missing=True):
                    raise unknown_pool(admission, self._choose) from None
        held = HeldSlot(block)
        try:
            response = self.get_response(request)
        except BaseException as exc:
            held.end(True, exc)
            raise
        failed = response.status_code >= 500
        if getattr(response, "streaming", False):
            response.streaming_content = ReleasingIterable(response.streaming_content, held, lambda: failed)
        else:
            held.end(failed)
        return response


def _function_setting(name: str) -> Callable[..., Any] | None:
    """The function a setting names (itself or its dotted path), or None when unset."""
    function = getattr(django_settings, name, None)
    if isinstance(function, str):
        try:
            function = import_string(function)
        except ImportError as err:
            raise ImproperlyConfigured(f"{name}: cannot import {function!r}: {err}") from None
    if function is not None and not callable(function):
        raise ImproperlyConfigured(f"{name} must be a function of the request, got {function!r}")
    return function


def _peer(request: HttpRequest) -> str | None:
    peer = request.META.get("REMOTE_ADDR")
    return peer if isinstance(peer, str) and peer else None


def _header(request: HttpRequest, name: str) -> list[str]:
    value = request.META.get("HTTP_" + name.upper().replace("-", "_"))
    return [value] if isinstance(value, str) else []


def _denied(denied: SlotDenied | ResourceExhaustedError, pool: str) -> JsonResponse:
    retry_after = retry_after_s(denied)
    response = JsonResponse(denied_document(denied, retry_after, pool), status=denied_status(denied))
    response["Retry-After"] = str(retry_after)
    return response
