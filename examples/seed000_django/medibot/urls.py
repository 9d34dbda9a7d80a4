"""URLs: loadwarden's include before ``admin/`` (whose catch-all would answer ``admin/load/``)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin  # type: ignore[import-untyped]  # Django ships no type hints
from django.contrib.auth import views as auth_views  # type: ignore[import-untyped]  # Django ships no type hints
from django.urls import include, path  # type: ignore[import-untyped]  # Django ships no type hints

from . import views

urlpatterns: list[Any] = [
    # /admin/load/ (staff), /api/load-status/ (staff), /api/health/ (anyone): never held to a slot.
    path("", include("loadwarden.sdk.integrations.django.urls")),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("chat/", views.chat, name="chat"),  # the app's own work: every request holds a slot
]
