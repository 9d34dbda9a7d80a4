"""Settings of the seed 000 Django project: the seed's load manager settings and the
loadwarden middleware, sqlite in the file ``SEED000_DJANGO_DB`` names (``demo.py`` makes
it in a temporary folder and deletes it on exit).

``demo.py`` sets the load manager values and the service's address through the
environment from its options; the defaults are the seed's.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Load Manager Configuration (seed 000's settings, read by loadwarden's middleware)
LOAD_MANAGER_MAX_CONNECTIONS = int(os.environ.get("LOAD_MANAGER_MAX_CONNECTIONS", "100"))  # concurrent connections
LOAD_MANAGER_ENABLED = os.environ.get("LOAD_MANAGER_ENABLED", "true") == "true"  # enable/disable load management
LOAD_MANAGER_TIMEOUT = float(os.environ.get("LOAD_MANAGER_TIMEOUT", "30"))  # longest wait for a slot, seconds

# loadwarden's own: where the Decision service is, and the pool the middleware creates there
# at start-up (sized by LOAD_MANAGER_MAX_CONNECTIONS) when it is missing.
LOADWARDEN_TARGET = os.environ.get("LOADWARDEN_TARGET", "127.0.0.1:50051")
LOADWARDEN_POOL = "medibot-web"
LOADWARDEN_FALLBACK = "local_limit"  # while the service is away: LOAD_MANAGER_MAX_CONNECTIONS local slots
LOADWARDEN_HEALTH_CHECKS = {"database": "loadwarden.sdk.integrations.django.views.default_database"}

SECRET_KEY = os.environ.get("SEED000_DJANGO_SECRET_KEY") or secrets.token_urlsafe(50)  # one process's sessions
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]

MIDDLEWARE = [
    # First: a request turned away costs no session lookup. The integration's own views
    # (/admin/load/, /api/load-status/, /api/health/) pass through without a slot.
    "loadwarden.sdk.integrations.django.AdmissionMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "medibot.urls"
LOGIN_URL = "/accounts/login/"  # where /admin/load/ sends anyone who is not staff
LOGIN_REDIRECT_URL = "/admin/load/"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [HERE / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SEED000_DJANGO_DB", str(Path(tempfile.gettempdir()) / "seed000_django.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"
USE_TZ = True
