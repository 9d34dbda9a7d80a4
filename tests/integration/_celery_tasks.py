"""The Celery app `test_celery.py` runs in a real worker: ``celery -A tests.integration._celery_tasks worker``.

Configured from the worker's environment: LW_CELERY_REDIS (broker and result
backend), LW_CELERY_QUEUE (its only queue) and LOADWARDEN_TARGET (read by the
integration itself). What the tasks see is pushed, as JSON, to the Redis list
LW_CELERY_EVENTS, with wall-clock times (the test runs on the same host):

- ``start``: a try of a task begins (``task_prerun``, before its slot is asked for);
- ``denied``: the service denied the slot, with its retry-after and the countdown chosen;
- ``ran``: the body runs, holding its lease.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery  # type: ignore[import-untyped]  # Celery ships no type hints
from celery.signals import task_prerun  # type: ignore[import-untyped]  # Celery ships no type hints

from loadwarden.sdk import ResourceExhaustedError, SlotDenied
from loadwarden.sdk.integrations.celery import AdmittedTask

REDIS_URL = os.environ.get("LW_CELERY_REDIS", "redis://127.0.0.1:6379/0")
EVENTS = os.environ.get("LW_CELERY_EVENTS", "lw-celery-events")

app = Celery("lw_celery_test", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_default_queue=os.environ.get("LW_CELERY_QUEUE", "lw-celery"),
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
)
_events = redis.Redis.from_url(REDIS_URL)


def record(event: str, **fields: Any) -> None:
    _events.rpush(EVENTS, json.dumps({"event": event, "t": time.time(), **fields}))


def _on_prerun(task: Any = None, **_: Any) -> None:
    record("start", task=task.name, retries=task.request.retries)


task_prerun.connect(_on_prerun, weak=False)


class RecordingTask(AdmittedTask):
    """Records each denial at the moment it is answered, before the retry is scheduled."""

    def loadwarden_countdown_s(self, denied: SlotDenied | ResourceExhaustedError) -> float:
        countdown_s = super().loadwarden_countdown_s(denied)
        record(
            "denied",
            task=self.name,
            retries=self.request.retries,
            retry_after_s=denied.retry_after_s,
            countdown_s=countdown_s,
            why=str(denied),
        )
        return countdown_s


def _ran(task: Any) -> dict[str, Any]:
    lease = task.loadwarden_lease
    in_use = task.loadwarden_client().load_status("jobs").pools[0].active_leases
    fields = {"task": task.name, "retries": task.request.retries, "lease": lease.lease_id, "in_use": in_use}
    record("ran", fallback=lease.fallback, **fields)
    return fields


@app.task(name="lw.after_denials", base=RecordingTask, bind=True, loadwarden_pool="jobs", max_retries=3)
def after_denials(self: Any) -> dict[str, Any]:
    return _ran(self)


@app.task(name="lw.boom", base=RecordingTask, bind=True, loadwarden_pool="jobs")
def boom(self: Any) -> None:
    _ran(self)
    raise RuntimeError("boom in the task body")


@app.task(name="lw.nowhere", base=RecordingTask, bind=True, loadwarden_pool="nope")
def nowhere(self: Any) -> None:
    record("ran", task=self.name)
