"""The app's view: a chat reply that stands in for the seed's AI call.

The middleware has taken a slot of the ``medibot-web`` pool before it runs and
releases it after the response is sent; the view itself knows nothing of loadwarden.
"""

from __future__ import annotations

import threading
import time

from django.http import HttpRequest, JsonResponse  # type: ignore[import-untyped]  # Django ships no type hints

MAX_WORK_MS = 10_000  # the longest `ms` a request may ask for, milliseconds

_lock = threading.Lock()
_working = 0  # requests inside `chat` right now, count


def chat(request: HttpRequest) -> JsonResponse:
    """``GET /chat/?q=...&ms=200``: works `ms` milliseconds (the AI call), then replies.

    The reply's ``working`` is how many requests were in this view, this one included,
    when it started: never more than ``LOAD_MANAGER_MAX_CONNECTIONS``.
    """
    global _working
    try:
        work_ms = min(MAX_WORK_MS, max(0, int(request.GET.get("ms", "200"))))
    except ValueError:
        return JsonResponse({"error": "ms must be a whole number of milliseconds"}, status=400)
    with _lock:
        _working += 1
        working = _working
    try:
        time.sleep(work_ms / 1000)
    finally:
        with _lock:
            _working -= 1
    question = request.GET.get("q", "hello")
    return JsonResponse({"reply": f"MediBot heard {question!r}", "working": working, "worked_ms": work_ms})
