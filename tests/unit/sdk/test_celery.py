"""`AdmittedTask` with an in-process Celery app (``task.apply()``: no broker, no worker) and
a fake client: settings, the countdown, denials retried, the slot always released.

The real worker on the real broker is `tests/integration/test_celery.py`.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from celery import Celery  # type: ignore[import-untyped]  # Celery ships no type hints

from loadwarden.sdk import HeldLease, LeaseLostError, NotFoundError, ResourceExhaustedError, SlotDenied
from loadwarden.sdk.integrations import celery as lw_celery
from loadwarden.sdk.integrations.celery import AdmissionConfigError, AdmittedTask, retry_countdown_s, worker_settings


class Boom(Exception):
    pass


class FakeClient:
    """Answers `slot()` from a script: an exception to raise at entry, else a grant."""

    def __init__(self, *answers: BaseException | None, lose: bool = False) -> None:
        self.answers = list(answers)
        self.lose = lose
        self.asked: list[tuple[str, dict[str, Any]]] = []
        self.exits: list[BaseException | None] = []  # what ended each granted block
        self.closed = False

    @contextlib.contextmanager
    def slot(self, pool: str, **options: Any) -> Iterator[HeldLease]:
        self.asked.append((pool, options))
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer
        lease = HeldLease(f"lease-{len(self.asked)}", pool, 30.0, datetime.now(UTC), None, None, "d", 0.0)
        try:
            yield lease
        except BaseException as exc:
            self.exits.append(exc)
            raise
        self.exits.append(None)
        if self.lose:
            raise LeaseLostError("reclaimed", lease_id=lease.lease_id, pool=pool)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def app() -> Iterator[Any]:
    app = Celery("unit", set_as_current=False)
    app.conf.loadwarden_target = "127.0.0.1:50051"
    yield app
    app.close()


class Clients:
    """What the integration makes its client with: `use` sets the fake it gets next."""

    def __init__(self) -> None:
        self.fake = FakeClient()
        self.made: list[tuple[str, dict[str, Any]]] = []  # (target, options) of each client made

    def use(self, client: FakeClient) -> FakeClient:
        self.fake = client
        return client

    def make(self, target: str, **options: Any) -> Any:
        self.made.append((target, options))
        return self.fake


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> Clients:
    clients = Clients()
    monkeypatch.setattr(lw_celery, "_WORKERS", lw_celery._Workers(make_client=clients.make))
    return clients


def nothing() -> None:
    pass


def denied(retry_after_s: float | None) -> SlotDenied:
    return SlotDenied("full", denial="AT_CAPACITY", retry_after_s=retry_after_s, pool="ml")


# --- the countdown ---------------------------------------------------------------------


def test_the_countdown_is_the_retry_after_stretched_by_at_most_the_jitter() -> None:
    rng = random.Random(3)
    countdowns = [retry_countdown_s(2.5, min_countdown_s=1.0, jitter=0.2, rng=rng) for _ in range(200)]
    assert all(2.5 <= c <= 3.0 for c in countdowns)
    assert max(countdowns) - min(countdowns) > 0.4  # spread, so tasks denied together come back apart


@pytest.mark.parametrize("hint", [None, 0.0, 0.01, float("nan")])
def test_a_short_or_missing_retry_after_waits_the_floor(hint: float | None) -> None:
    assert retry_countdown_s(hint, min_countdown_s=1.0, jitter=0.0, rng=random.Random(1)) == 1.0


# --- settings --------------------------------------------------------------------------


def test_settings_come_from_the_celery_config_before_the_environment() -> None:
    env = {"LOADWARDEN_TARGET": "10.0.0.1:50051", "LOADWARDEN_CLIENT_TOKEN": "t" * 32}
    settings, pool = worker_settings({"loadwarden_target": "127.0.0.1:7", "loadwarden_pool": "ml"}, env)
    assert (settings.target, settings.token, pool) == ("127.0.0.1:7", "t" * 32, "ml")
    settings, pool = worker_settings({}, env)
    assert (settings.target, pool) == ("10.0.0.1:50051", None)


def test_no_target_is_an_error_naming_where_to_set_it() -> None:
    with pytest.raises(AdmissionConfigError, match=r"loadwarden_target.*LOADWARDEN_TARGET"):
        worker_settings({}, {})


def test_a_bad_setting_is_an_error_naming_it() -> None:
    with pytest.raises(AdmissionConfigError, match="slot_fallback must be one of"):
        worker_settings({"loadwarden_target": "127.0.0.1:7", "loadwarden_slot_fallback": "maybe"}, {})


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("loadwarden_priority", 12, "loadwarden_priority must be an int 0-9"),
        ("loadwarden_pool", "", "loadwarden_pool must be a non-empty string"),
        ("loadwarden_wait_s", -1, "loadwarden_wait_s must be a finite number >= 0"),
        ("loadwarden_countdown_jitter", 2, r"loadwarden_countdown_jitter must be a number in \[0, 1\]"),
    ],
)
def test_a_bad_task_option_fails_when_the_app_makes_its_tasks(
    app: Any, option: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=rf"task .*: {message}"):
        app.task(shared=False, base=AdmittedTask, name="t.bad", **{option: value})(nothing)
        app.finalize()  # Celery makes its task classes here (a worker at its start)


# --- runs ------------------------------------------------------------------------------


def test_a_run_holds_a_slot_of_its_pool_and_releases_it(app: Any, clients: Clients) -> None:
    client = clients.use(FakeClient())
    app.conf.loadwarden_token = "secret-token-of-32-characters-ok"

    @app.task(shared=False, base=AdmittedTask, bind=True, name="t.ok", loadwarden_pool="ml", loadwarden_priority=4)
    def ok(self: Any, x: int) -> tuple[int, str]:
        assert self.loadwarden_lease is not None
        return x * 2, self.loadwarden_lease.lease_id

    assert ok.apply((21,)).get() == (42, "lease-1")
    assert ok.loadwarden_lease is None  # outside a run
    assert client.asked == [("ml", {"priority": 4, "wait_s": 0.0, "lease_ttl_s": None, "client_key": ""})]
    assert client.exits == [None]
    ((target, options),) = clients.made
    assert target == "127.0.0.1:50051" and options["token"] == "secret-token-of-32-characters-ok"
    ok.apply((1,)).get()
    assert len(clients.made) == 1  # one client per process


def test_a_run_that_raises_releases_its_slot_as_failed(app: Any, clients: Clients) -> None:
    client = clients.use(FakeClient())

    @app.task(shared=False, base=AdmittedTask, name="t.boom", loadwarden_pool="ml")
    def boom() -> None:
        raise Boom("in the body")

    result = boom.apply()
    assert result.failed() and isinstance(result.result, Boom)
    assert [type(exc) for exc in client.exits] == [Boom]


def test_a_denied_run_is_retried_after_the_retry_after_and_runs_on_its_third_try(app: Any, clients: Clients) -> None:
    client = clients.use(FakeClient(denied(2.0), ResourceExhaustedError("rate", retry_after_s=3.0)))
    countdowns: list[float] = []

    class Recording(AdmittedTask):
        loadwarden_rng = random.Random(5)

        def loadwarden_countdown_s(self, denied: SlotDenied | ResourceExhaustedError) -> float:
            countdowns.append(super().loadwarden_countdown_s(denied))
            return countdowns[-1]

    @app.task(shared=False, base=Recording, bind=True, name="t.later", loadwarden_pool="ml")
    def later(self: Any) -> int:
        return int(self.request.retries)

    assert later.apply().get() == 2
    assert len(client.asked) == 3 and client.exits == [None]
    assert 2.0 <= countdowns[0] <= 2.4 and 3.0 <= countdowns[1] <= 3.6


def test_denials_past_max_retries_fail_the_task_with_the_denial(app: Any, clients: Clients) -> None:
    clients.use(FakeClient(*(denied(0.5) for _ in range(3))))

    @app.task(shared=False, base=AdmittedTask, name="t.never", loadwarden_pool="ml", max_retries=2)
    def never() -> None:
        raise AssertionError("the body never runs")

    result = never.apply()
    assert result.failed() and isinstance(result.result, SlotDenied)


@pytest.mark.parametrize(
    ("conf", "pool", "message"),
    [
        ({"loadwarden_target": None}, "ml", "no Decision service address"),
        ({}, None, "task t.conf names no pool"),
    ],
)
def test_a_bad_config_fails_the_task_at_once_with_a_clear_error(
    app: Any, clients: Clients, conf: dict[str, Any], pool: str | None, message: str
) -> None:
    client = clients.use(FakeClient())
    app.conf.update(conf)

    @app.task(shared=False, base=AdmittedTask, name="t.conf", loadwarden_pool=pool)
    def task() -> None:
        raise AssertionError("the body never runs")

    result = task.apply()
    assert result.failed() and isinstance(result.result, AdmissionConfigError)
    assert message in str(result.result)
    assert client.asked == []


def test_an_unknown_pool_fails_the_task_with_a_clear_error(app: Any, clients: Clients) -> None:
    clients.use(FakeClient(NotFoundError("pool 'nope' is not configured")))

    @app.task(shared=False, base=AdmittedTask, name="t.nope", loadwarden_pool="nope")
    def task() -> None:
        raise AssertionError("the body never runs")

    result = task.apply()
    assert isinstance(result.result, AdmissionConfigError)
    assert "pool 'nope' does not exist at the Decision service 127.0.0.1:50051" in str(result.result)


def test_a_lease_lost_after_the_body_returned_keeps_the_result(app: Any, clients: Clients) -> None:
    clients.use(FakeClient(lose=True))

    @app.task(shared=False, base=AdmittedTask, name="t.lost", loadwarden_pool="ml")
    def task() -> str:
        return "done"

    assert task.apply().get() == "done"


def test_the_client_key_comes_from_the_tasks_arguments(app: Any, clients: Clients) -> None:
    client = clients.use(FakeClient())

    class PerTenant(AdmittedTask):
        def loadwarden_client_key(self, *args: Any, **kwargs: Any) -> str:
            return str(kwargs["tenant"])

    @app.task(shared=False, base=PerTenant, name="t.tenant", loadwarden_pool="ml")
    def task(tenant: str) -> None:
        pass

    task.apply(kwargs={"tenant": "acme"}).get()
    assert client.asked[0][1]["client_key"] == "acme"


# --- one client per process ------------------------------------------------------------


def test_a_forked_child_makes_its_own_client_and_leaves_the_parents_alone(app: Any) -> None:
    made = [FakeClient(), FakeClient()]

    def make(target: str, **_: Any) -> Any:
        return made.pop(0)

    workers = lw_celery._Workers(make_client=make)
    parent = workers.get(app).client
    assert workers.get(app).client is parent

    workers.after_fork()  # what os.register_at_fork runs in a child
    child = workers.get(app).client
    assert child is not parent and not parent.closed  # type: ignore[attr-defined]  # a FakeClient

    workers.close()
    assert child.closed and not parent.closed  # type: ignore[attr-defined]  # a FakeClient
