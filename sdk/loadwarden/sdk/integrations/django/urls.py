"""URLs of the Django integration: ``path("", include("loadwarden.sdk.integrations.django.urls"))``.

- ``admin/load/``: the live dashboard (`views.dashboard`), staff only.
- ``api/load-status/``: its data as JSON (`views.load_status`), staff only.
- ``api/health/``: the health document (`views.health`), open to anyone.

Included under a prefix (``path("ops/", include(...))``), every path moves with it and
the dashboard reads its data from the moved URL.
"""

from __future__ import annotations

from typing import Any

from django.urls import path  # type: ignore[import-untyped]  # Django ships no type hints

from loadwarden.sdk.integrations.django import views

app_name = "loadwarden"
urlpatterns: list[Any] = [
    path("admin/load/", views.dashboard, name="dashboard"),
    path("api/load-status/", views.load_status, name="load-status"),
    path("api/health/", views.health, name="health"),
]
