"""Views of the Django integration, served by ``include("loadwarden.sdk.integrations.django.urls")``.

- `health`: seed 004's ``/api/health``, open to anyone (load balancers probe it); the
  checks come from ``LOADWARDEN_HEALTH_CHECKS``.

Every view here is `admission_exempt`: the middleware never makes it wait for, or
deny it, a slot, so a probe still answers while the app is overloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from django.conf import settings as django_settings  # type: ignore[import-untyped]  # Django ships no type hints
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]  # Django ships no type hints
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed  # type: ignore[import-untyped]  # Django ships no type hints
from django.utils.module_loading import import_string  # type: ignore[import-untyped]  # Django ships no type hints

from loadwarden.sdk.integrations.django import admission_exempt, admission_settings, shared_client
from loadwarden.sdk.integrations.health import HEALTH_HEADERS, Health, HealthCheck, health_body, http_status

SAFE_METHODS = ("GET", "HEAD")


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


default_database = database_check()


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
