"""URLs of the Django integration: ``path("", include("loadwarden.sdk.integrations.django.urls"))``.

- ``api/health/``: the health document (`views.health`), open to anyone.
"""

from __future__ import annotations

from django.urls import path  # type: ignore[import-untyped]  # Django ships no type hints

from loadwarden.sdk.integrations.django import views

app_name = "loadwarden"
urlpatterns = [
    path("api/health/", views.health, name="health"),
]
