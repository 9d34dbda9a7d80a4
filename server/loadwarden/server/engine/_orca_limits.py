"""Bounds of the load report fields ORCA brings (named metrics, rates, application
utilisation), importable without xds-protos: ReportLoad checks them too."""

from __future__ import annotations

import re

from loadwarden.policy import NAME_CHARS

MAX_NAMED_METRICS = 32
NAMED_METRIC_MAX_LEN = 64
NAMED_METRIC_PATTERN = re.compile(f"{NAME_CHARS}{{1,{NAMED_METRIC_MAX_LEN}}}")
MAX_APPLICATION_UTILIZATION = 100.0  # a fraction of capacity: 100 times over it
MAX_RATE = 1e9  # requests or errors per second
