"""Drop-in admission for web apps: every request holds a loadwarden slot.
May import the rest of loadwarden.sdk, and each framework only in its own module.

Each framework lives in its own module, imported only when used, so importing
`loadwarden.sdk` never imports a web framework:

- `loadwarden.sdk.integrations.asgi.AdmissionMiddleware` (Starlette, FastAPI, any ASGI server)
- `loadwarden.sdk.integrations.wsgi.AdmissionMiddleware` (Flask, any WSGI server)
- `loadwarden.sdk.integrations.django.AdmissionMiddleware` (settings.py)
"""

from loadwarden.sdk.integrations._client_key import TrustedProxies
from loadwarden.sdk.integrations._common import Admission, AdmissionChoiceError, AdmissionSettings

__all__ = ["Admission", "AdmissionChoiceError", "AdmissionSettings", "TrustedProxies"]
