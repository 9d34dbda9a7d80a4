"""The middleware's pool, created on the service when it is missing (seed 000's
``LOAD_MANAGER_MAX_CONNECTIONS`` sizes it), through `Client.admin`.

A pool that exists is never changed: an operator's settings win. The check runs when
the middleware starts, and again when a request finds the pool missing (the service
was started without it, or it was deleted), at most once per `RECHECK_S` while the
service cannot be asked. Every failure is logged and leaves the requests to the
client's fallback or to the unknown-pool error; none stops the app.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from loadwarden.sdk import Client, LoadwardenError, NotFoundError, PoolConfig
from loadwarden.sdk.integrations._common import AdmissionSettings

RECHECK_S = 5.0  # a failed check is not tried again sooner, seconds
MAX_WAIT_MS = 3_600_000  # the contract's bound of a pool's max_wait_ms

_log = logging.getLogger("loadwarden.sdk.integrations.django")
_lock = threading.Lock()
_confirmed: dict[tuple[str, str], float] = {}  # (target, pool) -> when it was last seen or made (monotonic s)
_tried: dict[tuple[str, str], float] = {}  # (target, pool) -> when a check last failed (monotonic s)


def pool_config(settings: AdmissionSettings) -> PoolConfig:
    """The pool the middleware creates: `local_slot_limit` (``LOAD_MANAGER_MAX_CONNECTIONS``)
    slots, and a queue wait of at least the requests' `wait_s` (``LOAD_MANAGER_TIMEOUT``)."""
    wait_ms = min(MAX_WAIT_MS, math.ceil(settings.wait_s * 1000))
    return PoolConfig(settings.pool, max_concurrency=settings.local_slot_limit, max_wait_ms=wait_ms)


class PoolSetup:
    """Makes sure the settings' pool exists on the service.

    Args:
        settings: The middleware's settings (target, pool, sizes).
        client: The middleware's client, used to look.
        admin_token: The service's admin token for the creation (``LOADWARDEN_ADMIN_TOKEN``);
            None creates it with `client` (enough when the service has no admin token).
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        settings: AdmissionSettings,
        client: Client,
        admin_token: str | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._client = client
        self._admin_token = admin_token
        self._clock = clock
        self._key = (settings.target, settings.pool)

    def ensure(self, *, found_missing: bool = False) -> bool:
        """True when the pool exists now (it was there, or was made); never raises.

        Args:
            found_missing: A request was just answered NOT_FOUND for the pool: look
                again even if it was seen before (requests finding it missing at
                once look one after another; the first makes it).
        """
        with _lock:
            now = self._clock()
            if not found_missing and self._key in _confirmed:
                return True
            tried = _tried.get(self._key)
            if tried is not None and now - tried < RECHECK_S:
                return False  # the service could not be asked a moment ago
            made = self._check()
            if made:
                _confirmed[self._key] = now
                _tried.pop(self._key, None)
            else:
                _confirmed.pop(self._key, None)
                _tried[self._key] = now
            return made

    def _check(self) -> bool:
        settings = self._settings
        try:
            self._client.load_status(settings.pool, timeout_s=settings.timeout_s)
            return True
        except NotFoundError:
            pass
        except LoadwardenError as err:
            _log.warning(
                "loadwarden: cannot tell whether pool %r exists at %s (%s); requests meanwhile follow %s",
                settings.pool,
                settings.target,
                err,
                settings.slot_fallback,
            )
            return False
        config = pool_config(settings)
        admin_client = self._client
        if self._admin_token is not None:
            admin_client = Client(
                settings.target, token=self._admin_token, tls=settings.tls, timeout_s=settings.timeout_s
            )
        try:
            admin_client.admin.configure_pool(config, timeout_s=settings.timeout_s)
        except LoadwardenError as err:
            _log.warning(
                "loadwarden: pool %r does not exist at %s and creating it failed (%s); set LOADWARDEN_ADMIN_TOKEN "
                "when the service has an admin token, or create the pool there (LOADWARDEN_CONFIGURE_POOL = False "
                "stops these attempts)",
                settings.pool,
                settings.target,
                err,
            )
            return False
        finally:
            if admin_client is not self._client:
                admin_client.close()
        _log.info(
            "loadwarden: created pool %r at %s with max_concurrency %d (LOAD_MANAGER_MAX_CONNECTIONS)",
            settings.pool,
            settings.target,
            config.max_concurrency,
        )
        return True
