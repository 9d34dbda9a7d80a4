"""Drop-in admission for web apps: every request holds a loadwarden slot.
May import the rest of loadwarden.sdk, and each framework only in its own module.

Each framework lives in its own module, imported only when used, so importing
`loadwarden.sdk` never imports a web framework:

- `loadwarden.sdk.integrations.asgi.AdmissionMiddleware` (Starlette, FastAPI, any ASGI server)
- `loadwarden.sdk.integrations.wsgi.AdmissionMiddleware` (Flask, any WSGI server)
- `loadwarden.sdk.integrations.django.AdmissionMiddleware` (settings.py), and the
  URL include `loadwarden.sdk.integrations.django.urls` (dashboard, load status, health)

Shared by all: `TrustedProxies` (whose forwarding header names the client, for
per-client rate limits) and the health document (`Health`, `AsyncHealth`,
`HealthCheck`; see `loadwarden.sdk.integrations.health`).
"""

from loadwarden.sdk.integrations._client_key import TrustedProxies
from loadwarden.sdk.integrations._common import Admission, AdmissionChoiceError, AdmissionSettings
from loadwarden.sdk.integrations.health import AsyncHealth, Health, HealthCheck

__all__ = [
    "Admission",
    "AdmissionChoiceError",
    "AdmissionSettings",
    "AsyncHealth",
    "Health",
    "HealthCheck",
    "TrustedProxies",
]
