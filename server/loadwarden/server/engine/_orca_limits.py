"""A pool's ORCA ingestion settings and the bounds of the load report fields ORCA brings
(named metrics, rates, application utilisation), importable without xds-protos: the config
is read, and ReportLoad checks them, with or without the mesh extra."""

from __future__ import annotations

import re
from dataclasses import dataclass

from loadwarden.policy import NAME_CHARS, InvalidArgument, check_count, shown

MAX_NAMED_METRICS = 32
NAMED_METRIC_MAX_LEN = 64
NAMED_METRIC_PATTERN = re.compile(f"{NAME_CHARS}{{1,{NAMED_METRIC_MAX_LEN}}}")
MAX_APPLICATION_UTILIZATION = 100.0  # a fraction of capacity: 100 times over it
MAX_RATE = 1e9  # requests or errors per second


@dataclass(frozen=True, slots=True)
class OrcaSettings:
    """A pool's ORCA ingestion (``[pools.<name>.orca]``).

    Attributes:
        enabled: Streams are opened to the pool's configured servers; False turns ingestion off.
        report_interval_ms: Interval asked of each backend (ORCA's ``report_interval``),
            milliseconds, 100-3,600,000. The backend sends no more often than its own minimum
            (gRPC's ORCA services default to 30 s; loadwarden's BackendReporter to 1 s), so keep
            the pool's ``load_report_ttl_ms`` above both, or every server turns STALE between
            reports.
        initial_backoff_ms: Wait before retrying a stream that failed, milliseconds; doubled
            after each failure in a row up to ``max_backoff_ms``, reset by a report. A wait is
            drawn at random between half and all of it (jitter).
        max_backoff_ms: Longest wait before a retry, milliseconds, >= ``initial_backoff_ms``.
        max_streams: Servers of the pool streamed at once, at most; servers beyond it (by id)
            are not ingested, and a warning says so.
    """

    enabled: bool = True
    report_interval_ms: int = 1_000
    initial_backoff_ms: int = 1_000
    max_backoff_ms: int = 10_000
    max_streams: int = 1_000

    def __post_init__(self) -> None:
        """Raises InvalidArgument naming the attribute (``field``) and what is wrong (``problem``)."""
        if not isinstance(self.enabled, bool):
            raise InvalidArgument("enabled", f"must be true or false, got {shown(self.enabled)}")
        for name, low, high in (
            ("report_interval_ms", 100, 3_600_000),
            ("initial_backoff_ms", 10, 3_600_000),
            ("max_backoff_ms", 10, 3_600_000),
            ("max_streams", 1, 100_000),
        ):
            check_count(getattr(self, name), name, low, high)
        if self.max_backoff_ms < self.initial_backoff_ms:
            raise InvalidArgument(
                "max_backoff_ms",
                f"must be at least initial_backoff_ms ({self.initial_backoff_ms}), got {self.max_backoff_ms}",
            )
