"""Views of the Django integration, served by ``include("loadwarden.sdk.integrations.django.urls")``.

- `dashboard`: seed 000's ``/admin/load/``, the service's live dashboard page, for staff
  (``is_staff``); anyone else is sent to Django's login (``LOGIN_URL``).
- `load_status`: seed 000's ``/api/load-status/``, the service's load status as the
  JSON the page reads, for staff; 403 with a JSON body for anyone else.
- `health`: seed 004's ``/api/health``, open to anyone (load balancers probe it); the
  checks come from ``LOADWARDEN_HEALTH_CHECKS``.

Every call to the service goes through the middleware's own client (the settings'
target, token and TLS), so the dashboard and the health document see its breakers.

Every view here is `admission_exempt`: the middleware never makes it wait for, or
deny it, a slot, so a probe still answers while the app is overloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from django.conf import settings as django_settings  # type: ignore[import-untyped]  # Django ships no type hints
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]  # Django ships no type hints
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse  # type: ignore[import-untyped]  # Django ships no type hints
from django.urls import reverse  # type: ignore[import-untyped]  # Django ships no type hints
from django.utils.module_loading import import_string  # type: ignore[import-untyped]  # Django ships no type hints

from loadwarden.sdk import BreakerOpenError, LoadwardenError
from loadwarden.sdk._errors import is_transport_failure
from loadwarden.sdk.integrations._dashboard import DashboardUnavailable, dashboard_page, load_status_document
from loadwarden.sdk.integrations.django import admission_exempt, admission_settings, shared_client
from loadwarden.sdk.integrations.health import HEALTH_HEADERS, Health, HealthCheck, health_body, http_status

SAFE_METHODS = ("GET", "HEAD")
NO_STORE = {"Cache-Control": "no-store"}


def _is_staff(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)  # None without django.contrib.auth's AuthenticationMiddleware
    return bool(user is not None and user.is_active and user.is_staff)


@admission_exempt
def dashboard(request: HttpRequest) -> HttpResponse:
    """Seed 000's dashboard at ``/admin/load/``: staff only, else Django's login redirect."""
    if request.method not in SAFE_METHODS:
        return HttpResponseNotAllowed(SAFE_METHODS)
    if getattr(request, "user", None) is None:
        return HttpResponse(
            "The load dashboard needs django.contrib.auth's AuthenticationMiddleware in MIDDLEWARE.",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    if not _is_staff(request):
        from django.contrib.auth.views import redirect_to_login  # type: ignore[import-untyped]  # Django ships no type hints

        return redirect_to_login(request.get_full_path())
    try:
        body, headers = dashboard_page(reverse(f"{request.resolver_match.namespace or 'loadwarden'}:load-status"))
    except DashboardUnavailable as err:
        return HttpResponse(str(err), status=404, content_type="text/plain; charset=utf-8")
    return HttpResponse(body, headers=headers)


@admission_exempt
def load_status(request: HttpRequest) -> JsonResponse:
    """Seed 000's ``/api/load-status/``: every pool, server and batch operation the service
    knows, as the admin port's JSON; staff only (403 otherwise), 503 while it is unreachable."""
    if request.method not in SAFE_METHODS:
        return HttpResponseNotAllowed(SAFE_METHODS)
    if not _is_staff(request):
        return JsonResponse(
            {"error": "permission_denied", "message": "the load status is for staff members; sign in as one"},
            status=403,
            headers=NO_STORE,
        )
    settings = admission_settings()
    try:
        status = shared_client(settings).load_status(timeout_s=settings.timeout_s)
    except LoadwardenError as err:
        unreachable = isinstance(err, BreakerOpenError) or is_transport_failure(err)
        message = f"the Decision service is unreachable ({err.code.name})" if unreachable else str(err)
        return JsonResponse(
            {"error": "unavailable" if unreachable else "service_error", "message": message},
            status=503 if unreachable else 502,
            headers=NO_STORE,
        )
    return JsonResponse(load_status_document(status), headers=NO_STORE)


def database_check(alias: str = "default") -> Callable[[], str]:
    """A health check of the Django database `alias`: a ``SELECT 1`` on its connection,
    "connected" when it answers (seed 004's ``"database": "connected"``).

    Example (settings.py):
        LOADWARDEN_HEALTH_CHECKS = {"database": "loadwarden.sdk.integrations.django.views.default_database"}
    """

    def check() -> str:
        from django.db import connections  # type: ignore[import-untyped]  # Django ships no type hints

        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return "connected"

    check.__name__ = check.__qualname__ = f"database_check({alias!r})"
    return check


default_database: Callable[[], str] = database_check()


def health_checks() -> dict[str, HealthCheck]:
    """``LOADWARDEN_HEALTH_CHECKS``: name -> a check, its dotted path, a `HealthCheck`, or
    ``{"check": check or path, "critical": bool}``.

    Raises:
        ImproperlyConfigured: An entry is none of those; the message names it.
    """
    configured = getattr(django_settings, "LOADWARDEN_HEALTH_CHECKS", None) or {}
    if not isinstance(configured, Mapping):
        raise ImproperlyConfigured(f"LOADWARDEN_HEALTH_CHECKS must map names to checks, got {configured!r}")
    checks: dict[str, HealthCheck] = {}
    for name, entry in configured.items():
        where = f"LOADWARDEN_HEALTH_CHECKS[{name!r}]"
        critical = True
        if isinstance(entry, HealthCheck):
            checks[name] = entry
            continue
        if isinstance(entry, Mapping):
            critical = entry.get("critical", True)
            if not isinstance(critical, bool):
                raise ImproperlyConfigured(f"{where}: critical must be True or False, got {critical!r}")
            entry = entry.get("check")
        if isinstance(entry, str):
            try:
                entry = import_string(entry)
            except ImportError as err:
                raise ImproperlyConfigured(f"{where}: cannot import {entry!r}: {err}") from None
        if not callable(entry):
            raise ImproperlyConfigured(f"{where} must be a check (a function), its dotted path, or a mapping")
        checks[name] = HealthCheck(entry, critical)
    return checks


@admission_exempt
def health(request: HttpRequest) -> HttpResponse:
    """The health document of the app's control plane, breakers, fallback and checks;
    503 when a critical one fails."""
    if request.method not in SAFE_METHODS:
        return HttpResponseNotAllowed(SAFE_METHODS)
    settings = admission_settings()
    document_of = Health(
        shared_client(settings),
        pool=settings.pool,
        timeout_s=settings.timeout_s,
        slot_fallback=settings.slot_fallback,
    )
    document_of.add_checks(health_checks())
    document = document_of.document()
    return HttpResponse(health_body(document), status=http_status(document), headers=dict(HEALTH_HEADERS))
