"""Breaker state changes are observable: logged, counted and exposed as a gauge."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from loadwarden.sdk import _metrics
from loadwarden.sdk._breaker import BreakerConfig, BreakerRegistry


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_transitions_are_logged_counted_and_gauged(monkeypatch: pytest.MonkeyPatch, caplog) -> None:  # type: ignore[no-untyped-def]
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    monkeypatch.setattr(_metrics, "_meter", meter)
    monkeypatch.setattr(_metrics, "_transitions", meter.create_counter("loadwarden.sdk.breaker.transitions"))
    monkeypatch.setattr(_metrics, "_gauge_created", False)
    monkeypatch.setattr(_metrics, "_registries", __import__("weakref").WeakSet())
    clock = Clock()
    registry = BreakerRegistry(BreakerConfig(consecutive_failures=2, open_wait_s=1.0), clock=clock)
    _metrics.observe_breakers(registry)
    breaker = registry.get("SelectServer", "h:1")
    with caplog.at_level(logging.INFO, logger="loadwarden.sdk"):
        for _ in range(2):
            assert breaker.allow()
            breaker.record_failure()
    assert "SelectServer@h:1: CLOSED -> OPEN" in caplog.text
    data = reader.get_metrics_data()
    points = {
        metric.name: [(dict(p.attributes), p.value) for p in metric.data.data_points]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert points["loadwarden.sdk.breaker.state"] == [({"breaker": "SelectServer@h:1"}, 2)]
    assert points["loadwarden.sdk.breaker.transitions"] == [({"breaker": "SelectServer@h:1", "state": "OPEN"}, 1)]
