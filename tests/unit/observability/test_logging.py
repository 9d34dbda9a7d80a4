from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from loadwarden.observability import configure_logging


def test_configure_logging_sets_level_and_rejects_unknown() -> None:
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        configure_logging("WARNING")
        assert root.level == logging.WARNING
        with pytest.raises(ValueError, match="level must be one of"):
            configure_logging("LOUD")
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


def test_json_logs_carry_the_current_spans_ids(restored_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    tracer = TracerProvider().get_tracer("test")  # not the global provider: only its spans' context matters
    configure_logging("INFO", "json")
    log = logging.getLogger("loadwarden.server")
    log.info("outside any span")
    with tracer.start_as_current_span("SelectServer") as span:
        log.warning("pool %s: %d servers", "api", 3)
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")

    outside, inside, failed = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert set(outside) == {"time", "level", "logger", "message"}
    assert outside["message"] == "outside any span" and outside["level"] == "INFO"
    assert datetime.datetime.fromisoformat(outside["time"]).tzinfo is not None
    context = span.get_span_context()
    assert inside["message"] == "pool api: 3 servers" and inside["logger"] == "loadwarden.server"
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert failed["exception"].startswith("Traceback") and "ValueError: boom" in failed["exception"]


def test_an_unknown_format_is_refused(restored_logging: None) -> None:
    with pytest.raises(ValueError, match="format must be one of text, json, got 'xml'"):
        configure_logging("INFO", "xml")
