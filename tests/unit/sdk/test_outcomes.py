"""The outcome buffer (pure, fake clock) and its thread and task drivers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

import grpc
import pytest

from loadwarden.sdk import NotFoundError, OutcomeStats, UnavailableError
from loadwarden.sdk._async.senders import TaskOutcomeSender
from loadwarden.sdk._outcomes import OutcomeBuffer
from loadwarden.sdk._sync.senders import ThreadOutcomeSender
from loadwarden.v1 import decision_pb2 as _pb


def outcome(n: int) -> _pb.Outcome:
    return _pb.Outcome(decision_id=f"d-{n}", success=True, latency_ms=1.0)


def ids(batch: Iterable[_pb.Outcome]) -> list[str]:
    return [item.decision_id for item in batch]


def answered(batch: list[_pb.Outcome], *unknown: str) -> _pb.ReportOutcomeResponse:
    return _pb.ReportOutcomeResponse(applied=len(batch) - len(unknown), unknown_decision_ids=unknown)


@pytest.fixture
def buffer(fake_clock) -> OutcomeBuffer:
    return OutcomeBuffer(capacity=5, batch_size=3, interval_s=0.005, clock=fake_clock)


def test_nothing_is_due_when_empty(buffer: OutcomeBuffer) -> None:
    assert buffer.seconds_until_due() is None
    assert buffer.take_due() == []


def test_a_lone_outcome_is_due_once_it_has_waited_the_interval(buffer: OutcomeBuffer, fake_clock) -> None:
    assert buffer.add(outcome(1)) is True  # the sender must start its timer

    fake_clock.advance(0.002)
    assert buffer.seconds_until_due() == pytest.approx(0.003)
    assert buffer.take_due() == []

    fake_clock.advance(0.003)
    assert buffer.seconds_until_due() == 0.0
    assert ids(buffer.take_due()) == ["d-1"]


def test_batch_size_outcomes_are_due_at_once(buffer: OutcomeBuffer) -> None:
    wakes = [buffer.add(outcome(n)) for n in range(1, 4)]

    assert wakes == [True, False, True]
    assert buffer.seconds_until_due() == 0.0
    assert ids(buffer.take_due()) == ["d-1", "d-2", "d-3"]
    assert buffer.seconds_until_due() is None


def test_a_batch_holds_at_most_1000_outcomes(fake_clock) -> None:
    buffer = OutcomeBuffer(capacity=2500, batch_size=100, interval_s=1.0, clock=fake_clock)
    for n in range(2500):
        buffer.add(outcome(n))

    first = buffer.take_due()
    buffer.record_response(answered(first))

    assert len(first) == 1000
    assert first[0].decision_id == "d-0"
    assert len(buffer.take_due()) == 1000


def test_a_full_buffer_drops_the_oldest_and_counts_them(buffer: OutcomeBuffer, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="loadwarden.sdk"):
        for n in range(1, 8):
            buffer.add(outcome(n))

    assert buffer.stats().dropped == 2
    assert ids(buffer.take_due()) == ["d-3", "d-4", "d-5", "d-6", "d-7"]
    assert len([record for record in caplog.records if "full" in record.message]) == 1


def test_answers_and_failures_are_counted(buffer: OutcomeBuffer) -> None:
    for n in range(1, 5):
        buffer.add(outcome(n))
    buffer.record_response(answered(buffer.take_due(), "d-2"))
    for n in range(5, 8):
        buffer.add(outcome(n))
    batch = buffer.take_due()
    assert buffer.stats().pending == 3

    buffer.record_error(UnavailableError("down"))

    assert buffer.stats() == OutcomeStats(sent=4, unknown=1, dropped=0, failed_batches=1, pending=0)
    assert ids(batch) == ["d-5", "d-6", "d-7"]


def test_not_found_means_every_decision_was_unknown_not_a_failure(buffer: OutcomeBuffer) -> None:
    for n in range(1, 4):
        buffer.add(outcome(n))
    buffer.take_due()

    buffer.record_error(NotFoundError("no decision pending", code=grpc.StatusCode.NOT_FOUND))

    assert buffer.stats() == OutcomeStats(sent=3, unknown=3, dropped=0, failed_batches=0, pending=0)


def test_one_warning_per_run_of_failures(buffer: OutcomeBuffer, caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="loadwarden.sdk"):
        for _ in range(3):
            buffer.add(outcome(1))
            buffer.request_flush()
            buffer.take_due()
            buffer.record_error(UnavailableError("down"))

    levels = [record.levelno for record in caplog.records]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]


def test_a_flush_makes_everything_due_and_completes_when_the_batch_is_settled(buffer: OutcomeBuffer) -> None:
    buffer.add(outcome(1))
    mark = buffer.request_flush()
    buffer.add(outcome(2))  # after the mark: not waited for

    assert buffer.seconds_until_due() == 0.0
    batch = buffer.take_due()
    assert not buffer.flushed(mark)  # in flight is not settled
    buffer.record_response(answered(batch))
    assert buffer.flushed(mark)


def test_only_one_batch_is_in_flight(buffer: OutcomeBuffer) -> None:
    for n in range(3):
        buffer.add(outcome(n))
    buffer.take_due()
    for n in range(3):
        buffer.add(outcome(n))

    with pytest.raises(RuntimeError):
        buffer.take_due()


def test_closing_makes_everything_due_and_drops_later_outcomes(buffer: OutcomeBuffer) -> None:
    buffer.add(outcome(1))

    mark = buffer.close()
    buffer.add(outcome(2))

    assert ids(buffer.take_due()) == ["d-1"]
    buffer.record_response(answered([outcome(1)]))
    assert buffer.flushed(mark)
    assert buffer.stats() == OutcomeStats(sent=1, unknown=0, dropped=1, failed_batches=0, pending=0)


def test_abandon_drops_the_queue_and_fails_the_batch_in_flight(buffer: OutcomeBuffer) -> None:
    for n in range(3):
        buffer.add(outcome(n))
    buffer.take_due()
    buffer.add(outcome(3))

    buffer.abandon()

    assert buffer.stats() == OutcomeStats(sent=0, unknown=0, dropped=1, failed_batches=1, pending=0)


# Drivers. A long interval means nothing is sent unless flushed or a batch fills up,
# so nothing here depends on time passing.


def slow_buffer() -> OutcomeBuffer:
    return OutcomeBuffer(capacity=100, batch_size=50, interval_s=3600.0)


def test_thread_sender_sends_on_flush_and_stops_on_close() -> None:
    sent: list[list[str]] = []

    def send(request: _pb.ReportOutcomeRequest) -> _pb.ReportOutcomeResponse:
        sent.append(ids(request.outcomes))
        return answered(list(request.outcomes))

    sender = ThreadOutcomeSender(slow_buffer(), send)
    for n in range(3):
        sender.add(outcome(n))

    assert sender.flush(timeout_s=10.0) is True
    assert sent == [["d-0", "d-1", "d-2"]]

    sender.add(outcome(3))
    sender.close()
    assert sent[-1] == ["d-3"]
    assert not any(thread.name == "loadwarden-outcomes" for thread in threading.enumerate())
    assert sender.buffer.stats() == OutcomeStats(sent=4, unknown=0, dropped=0, failed_batches=0, pending=0)


def test_thread_sender_counts_a_failed_send_and_keeps_going() -> None:
    def send(request: _pb.ReportOutcomeRequest) -> _pb.ReportOutcomeResponse:
        raise UnavailableError("down")

    sender = ThreadOutcomeSender(slow_buffer(), send)
    sender.add(outcome(1))

    assert sender.flush(timeout_s=10.0) is True
    sender.add(outcome(2))
    assert sender.flush(timeout_s=10.0) is True
    sender.close()
    assert sender.buffer.stats().failed_batches == 2


def test_thread_sender_flush_with_nothing_queued_starts_no_thread() -> None:
    sender = ThreadOutcomeSender(slow_buffer(), send=lambda request: answered([]))

    assert sender.flush(timeout_s=1.0) is True
    sender.close()
    assert sender._thread is None


async def test_task_sender_sends_on_flush_and_stops_on_close() -> None:
    sent: list[list[str]] = []

    async def send(request: _pb.ReportOutcomeRequest) -> _pb.ReportOutcomeResponse:
        sent.append(ids(request.outcomes))
        return answered(list(request.outcomes))

    sender = TaskOutcomeSender(slow_buffer(), send)
    for n in range(3):
        sender.add(outcome(n))

    assert await sender.flush(timeout_s=10.0) is True
    assert sent == [["d-0", "d-1", "d-2"]]

    sender.add(outcome(3))
    await sender.close()
    assert sent[-1] == ["d-3"]
    assert sender._task is not None and sender._task.done()
    assert sender.buffer.stats() == OutcomeStats(sent=4, unknown=0, dropped=0, failed_batches=0, pending=0)


async def test_task_sender_counts_a_failed_send() -> None:
    async def send(request: _pb.ReportOutcomeRequest) -> _pb.ReportOutcomeResponse:
        raise UnavailableError("down")

    sender = TaskOutcomeSender(slow_buffer(), send)
    sender.add(outcome(1))

    assert await sender.flush(timeout_s=10.0) is True
    await sender.close()
    assert sender.buffer.stats().failed_batches == 1


def test_task_sender_queues_outcomes_added_without_a_running_loop() -> None:
    sender = TaskOutcomeSender(slow_buffer(), send=None)  # type: ignore[arg-type]  # never called: no loop, no send

    sender.add(outcome(1))

    assert sender.buffer.stats().pending == 1
