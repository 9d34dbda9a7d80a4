"""Celery: a task holds a loadwarden slot while it runs, and a denied task retries later.

Example:
    from celery import shared_task
    from loadwarden.sdk.integrations.celery import AdmittedTask

    # Celery config (or CELERY_LOADWARDEN_TARGET under Django's "CELERY" namespace,
    # or LOADWARDEN_TARGET in the worker's environment):
    #   loadwarden_target = "127.0.0.1:50051"

    @shared_task(base=AdmittedTask, bind=True, loadwarden_pool="ml", loadwarden_priority=5, max_retries=10)
    def classify_text(self, text):
        return model.classify(text)

Each run takes a slot of its pool before the body starts and releases it when the
body returns or raises (also when the body calls ``self.retry``), reporting its
latency and success. When the service denies the slot (the pool is full, the
queue is full, the rate is exhausted) the body does not run: the task is retried
(``self.retry``) with the service's retry-after as its countdown. Denials count
against the task's ``max_retries`` (Celery's default is 3); once it is spent the
task fails with the `SlotDenied` (or `ResourceExhaustedError`). While the
Decision service is unreachable the SDK's ``slot_fallback`` answers: with
"local_limit" (the default) up to ``loadwarden_local_slot_limit`` runs per worker
process go ahead on local slots and the next are retried like denials.

Worker settings (Celery config keys; the first two also from the environment):

- ``loadwarden_target`` (``LOADWARDEN_TARGET``): the Decision service, "host:port". Required.
- ``loadwarden_token`` (``LOADWARDEN_CLIENT_TOKEN``): the service's client token.
- ``loadwarden_tls``: a ``loadwarden.sdk.TlsConfig``; None (the default) is plaintext.
- ``loadwarden_timeout_s``, ``loadwarden_slot_fallback``, ``loadwarden_local_slot_limit``:
  the `Client` arguments of those names.
- ``loadwarden_client_options``: a dict of further `Client` keyword arguments.
- ``loadwarden_pool``, ``loadwarden_priority``, ``loadwarden_wait_s``,
  ``loadwarden_lease_ttl_s``: defaults of the task options of those names.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from celery import Task  # type: ignore[import-untyped]  # Celery ships no type hints
from celery.signals import worker_process_shutdown, worker_shutdown  # type: ignore[import-untyped]  # Celery ships no type hints

from loadwarden.sdk import (
    Client,
    HeldLease,
    LeaseLostError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SlotDenied,
    UnauthenticatedError,
)
from loadwarden.sdk.integrations._common import Admission, AdmissionSettings

__all__ = ["AdmissionConfigError", "AdmittedTask", "retry_countdown_s", "worker_settings"]

log: logging.Logger = logging.getLogger("loadwarden.sdk.celery")

# AdmissionSettings field -> the environment variable read when the Celery config leaves it unset.
ENVIRONMENT: dict[str, str] = {"target": "LOADWARDEN_TARGET", "token": "LOADWARDEN_CLIENT_TOKEN"}
# AdmissionSettings fields read from the Celery config as ``loadwarden_<field>``.
CONFIG_FIELDS = (
    "target",
    "token",
    "tls",
    "timeout_s",
    "slot_fallback",
    "local_slot_limit",
    "pool",
    "priority",
    "wait_s",
    "lease_ttl_s",
)
CLIENT_OPTIONS_KEY = "loadwarden_client_options"

DEFAULT_MIN_COUNTDOWN_S = 1.0  # a retry goes through the broker: sooner than this is a busy loop, seconds
DEFAULT_COUNTDOWN_JITTER = 0.2  # a countdown is stretched by up to this fraction, never shortened

# The lease the current run holds; a ContextVar, so each thread of a threads pool sees its own.
_LEASE: contextvars.ContextVar[HeldLease | None] = contextvars.ContextVar("loadwarden_celery_lease", default=None)
# The jitter of tasks that set no loadwarden_rng; reseeded in each forked child, or the
# children of one prefork worker would all draw the same stretches.
_JITTER = random.Random()
os.register_at_fork(after_in_child=_JITTER.seed)


class AdmissionConfigError(ValueError):
    """The task's admission cannot be set up: no target, a bad setting, a pool the
    Decision service does not know, or credentials it refuses. The task fails with
    it (in its result); it is never retried."""


def retry_countdown_s(
    retry_after_s: float | None, *, min_countdown_s: float, jitter: float, rng: random.Random
) -> float:
    """How long a denied task waits before its next try, seconds.

    The service's hint (or `min_countdown_s` when it sent none), never less than
    `min_countdown_s`, stretched by a uniform fraction of up to `jitter` so the
    tasks denied together do not come back together. Never earlier than the hint.

    Args:
        retry_after_s: The denial's retry-after, seconds; None when it carried none.
        min_countdown_s: The floor, seconds, >= 0.
        jitter: Largest stretch, a fraction, 0-1.
        rng: Source of the stretch.
    """
    hint = retry_after_s if retry_after_s is not None and math.isfinite(retry_after_s) else 0.0
    base = max(min_countdown_s, hint)
    return base * (1.0 + jitter * rng.random())


@dataclass(frozen=True, slots=True)
class _Worker:
    """What one worker process admits its tasks with."""

    client: Client
    settings: AdmissionSettings
    default_pool: str | None  # ``loadwarden_pool`` of the config; None when unset


def worker_settings(conf: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[AdmissionSettings, str | None]:
    """The admission settings in a Celery config (``loadwarden_*`` keys) and the environment.

    Returns:
        The settings, and the config's default pool (None when it sets none).

    Raises:
        AdmissionConfigError: No target is set, or a setting is out of range; the message names it.
    """
    fields: dict[str, Any] = {}
    for name in CONFIG_FIELDS:
        value = conf.get(f"loadwarden_{name}")
        if value is None and name in ENVIRONMENT:
            value = environ.get(ENVIRONMENT[name]) or None
        if value is not None:
            fields[name] = value
    if "target" not in fields:
        raise AdmissionConfigError(
            "no Decision service address: set loadwarden_target in the Celery config "
            "(CELERY_LOADWARDEN_TARGET in Django settings read with namespace='CELERY') "
            "or LOADWARDEN_TARGET in the worker's environment"
        )
    try:
        settings = AdmissionSettings(**fields)
    except ValueError as err:
        raise AdmissionConfigError(f"Celery config loadwarden_*: {err}") from None
    return settings, fields.get("pool")


class _Workers:
    """The `Client` of this process for each Celery app, made at the first run.

    A prefork worker forks its children after importing the tasks; a gRPC channel
    must not cross a fork, so a child never uses a client made before it forked:
    after a fork the registry starts empty (with a fresh lock), and the parent's
    clients are kept untouched (closing a channel made before the fork is unsafe).
    """

    def __init__(self, make_client: Callable[..., Client] = Client) -> None:
        self._make_client = make_client
        self._lock = threading.Lock()
        self._workers: dict[int, tuple[object, _Worker]] = {}  # id(app) -> (app, its worker)
        self._forked_away: list[_Worker] = []  # the parent's, never touched in a child

    def get(self, app: Any) -> _Worker:
        """This process's worker for `app`, made from its config at the first call.

        Raises:
            AdmissionConfigError: The config is incomplete or wrong; nothing is kept,
                so the next run tries again.
        """
        with self._lock:
            entry = self._workers.get(id(app))
            if entry is not None and entry[0] is app:
                return entry[1]
            settings, default_pool = worker_settings(app.conf, os.environ)
            extra = app.conf.get(CLIENT_OPTIONS_KEY) or {}
            if not isinstance(extra, Mapping):
                raise AdmissionConfigError(f"{CLIENT_OPTIONS_KEY} must be a dict of Client arguments, got {extra!r}")
            try:
                client = self._make_client(settings.target, **(settings.client_options() | dict(extra)))
            except (TypeError, ValueError) as err:
                raise AdmissionConfigError(f"Celery config loadwarden_*: {err}") from None
            worker = _Worker(client, settings, default_pool)
            self._workers[id(app)] = (app, worker)
            log.info("loadwarden: worker process %d admits tasks through %s", os.getpid(), settings.target)
            return worker

    def after_fork(self) -> None:
        """In a forked child: start empty, with a lock no other thread can be holding."""
        self._lock = threading.Lock()
        self._forked_away += [worker for _, worker in self._workers.values()]
        self._workers = {}

    def close(self) -> None:
        """Closes this process's clients, sending their pending releases first."""
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for _, worker in workers:
            worker.client.close()


_WORKERS = _Workers()
os.register_at_fork(after_in_child=_WORKERS.after_fork)


def _close_clients(**_: Any) -> None:
    _WORKERS.close()


# A prefork child ends with worker_process_shutdown; a solo or threads worker with worker_shutdown.
worker_process_shutdown.connect(_close_clients, weak=False)
worker_shutdown.connect(_close_clients, weak=False)


class AdmittedTask(Task):  # type: ignore[misc]  # celery.Task is untyped (Any)
    """A Celery task base whose every run holds a slot of a loadwarden pool.

    Use it as ``@app.task(base=AdmittedTask, loadwarden_pool="ml")`` (or with
    ``shared_task``, or subclass it and set the attributes). The options below are
    class attributes; a None one takes the worker's ``loadwarden_<name>`` Celery
    setting (see the module's docstring). They are checked when the app makes its
    tasks (a worker does at its start, and refuses to start on a bad one).

    Attributes:
        loadwarden_pool: Pool every run of the task takes a slot of.
        loadwarden_priority: 0-9; higher is served first.
        loadwarden_wait_s: Longest a run waits in the pool's queue before it is
            denied (and retried), seconds; 0 (the default) answers at once, which
            frees the worker process for other tasks while this one waits its countdown.
        loadwarden_lease_ttl_s: Lease time to live, seconds (renewed while the run
            lasts); None is the pool's default. A worker killed mid-run leaks its slot
            for at most this long.
        loadwarden_min_countdown_s: Shortest countdown of a retry after a denial, seconds.
        loadwarden_countdown_jitter: A retry's countdown is stretched by up to this
            fraction (0-1), never shortened below the service's retry-after.
        loadwarden_rng: Source of that jitter; None is one of the process's own,
            reseeded after a fork.

    A run called in process (``task(...)`` rather than through a worker) takes its
    slot too; when denied, it raises the `SlotDenied`. Supported pools: prefork
    (the default), solo and threads.
    """

    loadwarden_pool: ClassVar[str | None] = None
    loadwarden_priority: ClassVar[int | None] = None
    loadwarden_wait_s: ClassVar[float | None] = None
    loadwarden_lease_ttl_s: ClassVar[float | None] = None
    loadwarden_min_countdown_s: ClassVar[float] = DEFAULT_MIN_COUNTDOWN_S
    loadwarden_countdown_jitter: ClassVar[float] = DEFAULT_COUNTDOWN_JITTER
    loadwarden_rng: ClassVar[random.Random | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_task_options(cls)

    @property
    def loadwarden_lease(self) -> HeldLease | None:
        """The lease the current run holds (in this thread); None outside a run."""
        return _LEASE.get()

    def loadwarden_client(self) -> Client:
        """This worker process's `Client`, made from the app's config at the first run.

        Raises:
            AdmissionConfigError: The config sets no target, or a bad value.
        """
        return _WORKERS.get(self.app).client

    def loadwarden_client_key(self, *args: Any, **kwargs: Any) -> str:
        """Who the run is for, for per-client rate limits (a pool's ``rate_limit`` is
        per key); called with the task's arguments. "" (anonymous) unless a subclass
        overrides it, e.g. ``return kwargs["tenant"]``."""
        return ""

    def loadwarden_countdown_s(self, denied: SlotDenied | ResourceExhaustedError) -> float:
        """The countdown of the retry after `denied`, seconds: `retry_countdown_s` with
        the task's floor and jitter. Override for another backoff (e.g. by
        ``self.request.retries``); keep it at least ``denied.retry_after_s``."""
        return retry_countdown_s(
            denied.retry_after_s,
            min_countdown_s=self.loadwarden_min_countdown_s,
            jitter=self.loadwarden_countdown_jitter,
            rng=_JITTER if self.loadwarden_rng is None else self.loadwarden_rng,
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        worker = _WORKERS.get(self.app)
        admission, wait_s, lease_ttl_s = self._admission(worker)
        client_key = self.loadwarden_client_key(*args, **kwargs)
        if not isinstance(client_key, str):
            raise AdmissionConfigError(f"{self.name}.loadwarden_client_key must return a str, got {client_key!r}")
        block = worker.client.slot(
            admission.pool,
            priority=admission.priority,
            wait_s=wait_s,
            lease_ttl_s=lease_ttl_s,
            client_key=client_key,
        )
        try:
            lease = block.__enter__()
        except (SlotDenied, ResourceExhaustedError) as denied:
            countdown_s = self.loadwarden_countdown_s(denied)
            log.debug("task %s[%s]: %s; retrying in %.2f s", self.name, self.request.id, denied, countdown_s)
            raise self.retry(exc=denied, countdown=countdown_s) from denied  # retry() raises its Retry itself
        except NotFoundError as err:
            raise AdmissionConfigError(
                f"task {self.name}: pool {admission.pool!r} does not exist at the Decision service "
                f"{worker.settings.target} ({err.details})"
            ) from None
        except (UnauthenticatedError, PermissionDeniedError) as err:
            raise AdmissionConfigError(
                f"task {self.name}: the Decision service {worker.settings.target} refused the worker's "
                f"credentials (loadwarden_token / LOADWARDEN_CLIENT_TOKEN): {err}"
            ) from None
        held = _LEASE.set(lease)
        try:
            result = super().__call__(*args, **kwargs)
        except BaseException as exc:
            _LEASE.reset(held)
            block.__exit__(type(exc), exc, exc.__traceback__)  # released with success=False; exc goes on
            raise
        _LEASE.reset(held)
        try:
            block.__exit__(None, None, None)
        except LeaseLostError as lost:
            # The work is done and cannot be undone: failing the task now would only
            # have it run twice. The lost slot was the service's to reclaim.
            log.warning("task %s[%s] finished after losing its slot: %s", self.name, self.request.id, lost)
        return result

    def _admission(self, worker: _Worker) -> tuple[Admission, float, float | None]:
        pool = self.loadwarden_pool if self.loadwarden_pool is not None else worker.default_pool
        if pool is None:
            raise AdmissionConfigError(
                f"task {self.name} names no pool: declare it with loadwarden_pool=... "
                "or set loadwarden_pool in the Celery config"
            )
        settings = worker.settings
        priority = settings.priority if self.loadwarden_priority is None else self.loadwarden_priority
        wait_s = settings.wait_s if self.loadwarden_wait_s is None else self.loadwarden_wait_s
        lease_ttl_s = settings.lease_ttl_s if self.loadwarden_lease_ttl_s is None else self.loadwarden_lease_ttl_s
        return Admission(pool, priority), wait_s, lease_ttl_s


def _check_task_options(cls: type[AdmittedTask]) -> None:
    """Checks a task's options when it is declared; the message names the option."""
    name = getattr(cls, "name", None) or cls.__name__
    try:
        if cls.loadwarden_pool is not None:
            Admission(cls.loadwarden_pool)
        if cls.loadwarden_priority is not None:
            Admission("default", cls.loadwarden_priority)
        AdmissionSettings(
            wait_s=0.0 if cls.loadwarden_wait_s is None else cls.loadwarden_wait_s,
            lease_ttl_s=cls.loadwarden_lease_ttl_s,
        )
    except ValueError as err:
        raise ValueError(f"task {name}: loadwarden_{err}") from None
    for option, value, low, high in (
        ("loadwarden_min_countdown_s", cls.loadwarden_min_countdown_s, 0.0, math.inf),
        ("loadwarden_countdown_jitter", cls.loadwarden_countdown_jitter, 0.0, 1.0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"task {name}: {option} must be a number in [{low:g}, {high:g}], got {value!r}")
    if cls.loadwarden_rng is not None and not isinstance(cls.loadwarden_rng, random.Random):
        raise ValueError(f"task {name}: loadwarden_rng must be a random.Random, got {cls.loadwarden_rng!r}")
