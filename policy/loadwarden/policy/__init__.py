"""The decision kernel: which backend takes a request, may work start, how big the next batch is.
May import the standard library only: no grpc, protobuf, asyncio, psutil, loadwarden.server or .sdk.

Pure and I/O-free, so the service, the SDK and the simulator decide with the same code.
Time and randomness are passed in.
"""

from ._clock import Clock, ManualClock, SystemClock
from ._decisions import IdGenerator, PendingDecision, PendingDecisions
from ._errors import DecisionError, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from ._load import HostSample, LoadReading, LoadWeights, host_score, pool_reading
from ._model import (
    Backend,
    BatchReportIn,
    Health,
    LoadReportIn,
    LoadSample,
    LocalChoice,
    LocalInFlight,
    OutcomeReport,
    ServerSpec,
)
from ._operations import (
    MAX_BATCH_SIZE,
    OPERATION_SOURCES,
    Adjustment,
    BatchAnswer,
    Operation,
    OperationSettings,
    parse_operation,
)
from ._pool import Pool
from ._probes import Answer, Probed, ProbeRecord, ProbeRules
from ._ratelimit import RateLimiter, RateTaken
from ._registry import Registry, parse_params
from ._settings import (
    DEFAULT_LEASE_TTL_MS,
    DEFAULT_MAX_LEASE_TTL_MS,
    OUTLIER_FLAGS,
    OUTLIER_RANGES,
    OutlierSettings,
    PoolSettings,
    RateLimit,
    parse_outlier,
    parse_pool,
    parse_rate_limit,
    parse_server,
    parse_servers,
)
from ._validation import (
    NAME_CHARS,
    NAME_MAX_LEN,
    NAME_PATTERN,
    check_address,
    check_count,
    check_name,
    check_range,
    check_ttl_ms,
    shown,
)

__all__ = [
    "DEFAULT_LEASE_TTL_MS",
    "DEFAULT_MAX_LEASE_TTL_MS",
    "MAX_BATCH_SIZE",
    "NAME_CHARS",
    "NAME_MAX_LEN",
    "NAME_PATTERN",
    "OPERATION_SOURCES",
    "OUTLIER_FLAGS",
    "OUTLIER_RANGES",
    "Adjustment",
    "Answer",
    "Backend",
    "BatchAnswer",
    "BatchReportIn",
    "Clock",
    "DecisionError",
    "Health",
    "HostSample",
    "IdGenerator",
    "InvalidArgument",
    "LoadReading",
    "LoadReportIn",
    "LoadSample",
    "LoadWeights",
    "LocalChoice",
    "LocalInFlight",
    "ManualClock",
    "NotFound",
    "Operation",
    "OperationSettings",
    "OutcomeReport",
    "OutlierSettings",
    "PendingDecision",
    "PendingDecisions",
    "Pool",
    "PoolSettings",
    "ProbeRecord",
    "ProbeRules",
    "Probed",
    "RateLimit",
    "RateLimiter",
    "RateTaken",
    "Registry",
    "ResourceExhausted",
    "ServerSpec",
    "SystemClock",
    "Unavailable",
    "check_address",
    "check_count",
    "check_name",
    "check_range",
    "check_ttl_ms",
    "host_score",
    "parse_operation",
    "parse_outlier",
    "parse_params",
    "parse_pool",
    "parse_rate_limit",
    "parse_server",
    "parse_servers",
    "pool_reading",
    "shown",
]
