"""Mode ``batch``: the ``[batch]`` scenario table, the batch workers and their figures.

In mode ``batch`` the strategies are batch controllers (``threshold``,
``latency_target``): each run registers one operation with ``mode`` = the
strategy and ``load_source = "pool"`` (the scenario's pool, whose backends report
their busy-worker fraction as CPU), while background open-loop traffic ramps
the backends' load. The ``[batch]`` table::

    [batch]
    operation = "import"        # operation name (default "sim-batch")
    workers = 2                 # concurrent batch loops, 1-64 (default 1)
    item_cost = 0.1             # extra service time per item beyond the first,
                                # as a fraction of one request's, >= 0 (default 0.1)
    pause_ms = 0                # pause between a loop's batches, ms (default 0)
    peak_before_s = 5           # with traffic surges: the peak figures cover each surge from
                                # this long before it starts to its end, s (default 5)
    # every other key is an operation setting (see [operations.X] in the service
    # config): min_batch_size, max_batch_size, default_batch_size, cooldown_ms,
    # min_step, low_threshold_percent, high_threshold_percent, target_latency_ms,
    # additive_step, backoff_ratio. [params.<controller>] overrides them per run.

A batch of n items goes to the backends in round robin and takes
``1 + item_cost x (n - 1)`` times a request's service time there, so bigger
batches are cheaper per item but slower, and they load the backends the
interactive traffic shares.

With traffic surges (``traffic.surge_*``) the figures are also taken through the peaks:
over the batches started, and the background requests that arrived, from
``peak_before_s`` before each surge (after the warm-up) to its end (``PeakSummary``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import grpc
from pydantic import ValidationError

from loadwarden.policy import InvalidArgument, OperationSettings, parse_operation, shown
from loadwarden.policy.batching import MODES
from loadwarden.sdk import AsyncClient, LoadwardenError
from loadwarden.server.fields import Checked, Count, Number, described, first_problem, problem, table_of

from ._config import Surges
from ._summary import RequestRecord, percentile

if TYPE_CHECKING:  # only for an annotation: _traffic runs the batch workers defined here
    from ._traffic import Backends

CONTROLLERS = MODES
DEFAULT_OPERATION = "sim-batch"
# Keys of [batch] that drive the workers and the figures; every other key is an operation setting.
_WORKER_KEYS = ("operation", "workers", "item_cost", "pause_ms", "peak_before_s")
DEFAULT_PEAK_BEFORE_S = 5.0
# How the service's reason for a size starts when a forecast load set it (predictive operations).
FORECAST_REASON = "forecast load"
# Operation settings the run sets itself.
_RESERVED = ("mode", "load_source", "pool")
# Operation settings [batch] may set (the service's [operations.X] keys).
_OPERATION_KEYS = tuple(k for k in OperationSettings.__dataclass_fields__ if k not in ("name", *_RESERVED))


class BatchRecord(NamedTuple):
    """One batch.

    Attributes:
        time_s: When the batch was asked for, seconds from the start of the traffic.
        server: Backend that served it.
        size: Items in the batch (the size the service answered).
        latency_ms: How long the backend call took, ms.
        success: False when the backend failed it or it timed out.
        load_score: The load score the size was based on, percent; None when unknown.
        forecast: The service sized it from a forecast load (its reason says "forecast load").
    """

    time_s: float
    server: str
    size: int
    latency_ms: float
    success: bool
    load_score: float | None
    forecast: bool = False


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """The ``[batch]`` table, validated (see the module docstring).

    Attributes:
        operation: Operation name.
        workers: Concurrent batch loops.
        item_cost: Extra service time per item beyond the first, fraction of a request's.
        pause_ms: Pause between a loop's batches, ms.
        peak_before_s: With traffic surges, the peak figures cover each from this many seconds
            before it starts to its end.
        operation_settings: The operation settings of the table, by key.
    """

    operation: str = DEFAULT_OPERATION
    workers: int = 1
    item_cost: float = 0.1
    pause_ms: float = 0.0
    peak_before_s: float = DEFAULT_PEAK_BEFORE_S
    operation_settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def default_batch_size(self) -> int:
        value = self.operation_settings.get("default_batch_size") or self.operation_settings.get("min_batch_size")
        return int(value) if value else 1

    def operation_config(self, controller: str, params: Mapping[str, Any], pool: str) -> dict[str, Any]:
        """The ``[operations.<operation>]`` table of a run with ``controller``."""
        return {**self.operation_settings, **params, "mode": controller, "load_source": "pool", "pool": pool}


def _operation(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise problem(f"must be a non-empty string, got {shown(value)}")
    return value


BATCH_TABLE = table_of(
    "Batch",
    {
        BatchSettings: {
            "operation": Annotated[str, Checked(_operation, type="string", minLength=1)],
            "workers": Annotated[int, Count(1, 64)],
            "item_cost": Annotated[float, Number(wording="bounds")],
            "pause_ms": Annotated[float, Number(wording="bounds")],
            "peak_before_s": Annotated[float, Number(wording="bounds")],
        }
    },
    "Mode batch: the batch operation every run registers and the batch workers, read by `loadwarden evaluate`;"
    " every key but the workers' is an operation setting, as in [operations.X] of loadwarden.toml"
    " (validated with the service's parse_operation; [params.<controller>] overrides them per run).",
    extra={key: (Any, None, described(OperationSettings).get(key, "An operation setting.")) for key in _OPERATION_KEYS},
)
"""The ``[batch]`` table's keys and the workers' types; the operation settings go to the service's parser."""


def parse_batch(
    raw: Mapping[str, Any], *, pool: str, controllers: Sequence[str], params: Mapping[str, Mapping[str, Any]]
) -> BatchSettings:
    """Validates ``[batch]`` and every controller's operation built from it.

    Args:
        raw: The ``[batch]`` table.
        pool: The scenario's pool (the operation's load source).
        controllers: The scenario's strategies: batch controller names.
        params: ``[params.<controller>]`` tables.

    Raises:
        ValueError: ``"batch.<key>: problem"``, ``"params.<controller>.<key>: ..."``
            or ``"strategies[i]: ..."``.
    """
    if not isinstance(raw, Mapping):
        raise ValueError(f"batch: must be a table, got {shown(raw)}")
    for key in _RESERVED:
        if key in raw:
            raise ValueError(f"batch.{key}: set by the run (mode = the strategy, load_source = pool)")
    try:
        table = BATCH_TABLE.model_validate(dict(raw))
    except ValidationError as exc:
        key, wrong = first_problem(exc, BATCH_TABLE)
        raise ValueError(f"batch.{key}: {wrong}") from None
    settings = BatchSettings(
        **{key: getattr(table, key) for key in _WORKER_KEYS},
        operation_settings={k: v for k, v in raw.items() if k not in _WORKER_KEYS},
    )
    try:
        parse_operation(settings.operation, "batch.operation", settings.operation_settings, "batch")
    except InvalidArgument as exc:
        raise ValueError(f"{exc.field}: {exc.problem}") from None
    for i, controller in enumerate(controllers):
        if controller not in CONTROLLERS:
            raise ValueError(
                f"strategies[{i}]: mode batch compares batch controllers ({', '.join(CONTROLLERS)}), got {controller!r}"
            )
        own = params.get(controller, {})
        for key in own:
            if key in _RESERVED or key in _WORKER_KEYS:
                raise ValueError(f"params.{controller}.{key}: not an operation setting a run may change")
        try:
            parse_operation(
                settings.operation,
                "batch.operation",
                settings.operation_config(controller, own, pool),
                f"params.{controller}",
            )
        except InvalidArgument as exc:
            raise ValueError(f"{exc.field}: {exc.problem}") from None
    return settings


async def run_batch_workers(
    settings: BatchSettings,
    client: AsyncClient,
    backends: Backends,
    stop: asyncio.Event,
    *,
    start: float,
    clock: Callable[[], float],
    timeout_s: float,
    on_batch: Callable[[], None] | None = None,
) -> list[BatchRecord]:
    """Runs ``settings.workers`` batch loops until ``stop`` is set; returns their batches in start order.

    Each loop asks ``client.batch_size``, sends that many items to the next backend
    in round robin, and reports the batch with ``client.report_batch``.
    """
    records: list[BatchRecord] = []

    async def worker() -> None:
        while not stop.is_set():
            at = clock() - start
            try:
                size = await client.batch_size(settings.operation, default=settings.default_batch_size)
            except LoadwardenError:
                await asyncio.sleep(0.05)  # the service is briefly unreachable: ask again
                continue
            server, address = backends.round_robin()
            began = clock()
            success = True
            try:
                await backends.call(address, items=size.size, timeout_s=timeout_s)
            except grpc.aio.AioRpcError:
                success = False
            latency_ms = (clock() - began) * 1000.0
            # A failed report costs the size controller one observation; the batch itself is recorded.
            with contextlib.suppress(LoadwardenError):
                await client.report_batch(
                    settings.operation,
                    batch_size=size.size,
                    duration_ms=latency_ms,
                    success=success,
                    decision_id=size.decision_id,
                )
            forecast = size.reason.startswith(FORECAST_REASON)
            records.append(BatchRecord(at, server, size.size, latency_ms, success, size.load_score, forecast))
            if on_batch is not None:
                on_batch()
            if settings.pause_ms:
                await asyncio.sleep(settings.pause_ms / 1000.0)

    await asyncio.gather(*(worker() for _ in range(settings.workers)))
    records.sort(key=lambda r: r.time_s)
    return records


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """Figures over a run's batches (after any warm-up).

    Attributes:
        batches: Batches summarised.
        items: Items in successful batches.
        items_per_s: Items of successful batches per second, first batch start to last end.
        mean_size: Mean batch size.
        success_rate: Successful batches / batches.
        p50_item_ms / p99_item_ms: Percentiles of a batch's latency per item (latency / size), ms.
        p99_batch_ms: 99th percentile of a batch's latency, ms.
        sizes: (time_s, size) of every batch, for a plot of sizes over time.
        forecast_batches: Batches summarised whose size a forecast load set.
    """

    batches: int
    items: int
    items_per_s: float
    mean_size: float
    success_rate: float
    p50_item_ms: float
    p99_item_ms: float
    p99_batch_ms: float
    sizes: tuple[tuple[float, int], ...]
    forecast_batches: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "batches": self.batches,
            "forecast_batches": self.forecast_batches,
            "items": self.items,
            "items_per_s": round(self.items_per_s, 1),
            "mean_size": round(self.mean_size, 2),
            "success_rate": round(self.success_rate, 4),
            "p50_item_ms": round(self.p50_item_ms, 3),
            "p99_item_ms": round(self.p99_item_ms, 3),
            "p99_batch_ms": round(self.p99_batch_ms, 3),
            "sizes": [[round(t, 3), s] for t, s in self.sizes],
        }


def summarize_batches(
    records: Sequence[BatchRecord],
    *,
    warmup_s: float = 0.0,
    windows: Sequence[tuple[float, float]] | None = None,
) -> BatchSummary | None:
    """Summarises the batches that started at or after ``warmup_s``; None when there are none.

    With ``windows`` (``(start, end)`` seconds), only the batches started in one of them, their
    items per second over the windows' total length, and no ``sizes``.
    """
    kept = [r for r in records if r.time_s >= warmup_s]
    if windows is not None:
        kept = [r for r in kept if _within(r.time_s, windows)]
    if not kept:
        return None
    per_item = sorted(r.latency_ms / r.size for r in kept)
    batch_ms = sorted(r.latency_ms for r in kept)
    items = sum(r.size for r in kept if r.success)
    if windows is None:
        span = max(r.time_s + r.latency_ms / 1000.0 for r in kept) - kept[0].time_s
    else:
        span = sum(end - start for start, end in windows)
    return BatchSummary(
        batches=len(kept),
        items=items,
        items_per_s=items / span if span > 0 else 0.0,
        mean_size=sum(r.size for r in kept) / len(kept),
        success_rate=sum(r.success for r in kept) / len(kept),
        p50_item_ms=percentile(per_item, 0.5),
        p99_item_ms=percentile(per_item, 0.99),
        p99_batch_ms=percentile(batch_ms, 0.99),
        sizes=tuple((r.time_s, r.size) for r in records) if windows is None else (),
        forecast_batches=sum(r.forecast for r in kept),
    )


def _within(t_s: float, windows: Sequence[tuple[float, float]]) -> bool:
    return any(start <= t_s < end for start, end in windows)


@dataclass(frozen=True, slots=True)
class PeakSummary:
    """A run's figures through the traffic's surges.

    Attributes:
        windows: ``(start, end)`` of each window, seconds from the start of the traffic: from
            ``peak_before_s`` before a surge (that starts so late after the warm-up) to its end.
        batch: The batches started in the windows (``summarize_batches``); None when none was.
        requests: Background requests that arrived in the windows.
        requests_p99_ms: Their 99th percentile latency, of those that reached a backend (a
            timed-out one at its deadline), ms; None when none did.
    """

    windows: tuple[tuple[float, float], ...]
    batch: BatchSummary | None
    requests: int
    requests_p99_ms: float | None

    def as_dict(self) -> dict[str, object]:
        batch = self.batch.as_dict() if self.batch is not None else None
        if batch is not None:
            del batch["sizes"]
        return {
            "windows": [[round(a, 3), round(b, 3)] for a, b in self.windows],
            "batch": batch,
            "requests": self.requests,
            "requests_p99_ms": None if self.requests_p99_ms is None else round(self.requests_p99_ms, 3),
        }


def peak_windows(
    surges: Surges, until_s: float, *, before_s: float, warmup_s: float
) -> tuple[tuple[float, float], ...]:
    """The windows of ``PeakSummary``: every surge that ends by ``until_s``, from ``before_s``
    before its start (at or after ``warmup_s``) to its end."""
    return tuple(w for w in surges.windows(until_s, before_s=before_s) if w[0] >= warmup_s)


def summarize_peaks(
    batches: Sequence[BatchRecord], requests: Sequence[RequestRecord], windows: Sequence[tuple[float, float]]
) -> PeakSummary:
    """A run's ``PeakSummary`` over ``windows``."""
    arrived = [r for r in requests if _within(r.time_s, windows)]
    latencies = sorted(r.latency_ms for r in arrived if r.server)
    return PeakSummary(
        tuple(windows),
        summarize_batches(batches, windows=windows),
        len(arrived),
        percentile(latencies, 0.99) if latencies else None,
    )


def render_batch_markdown(summaries: Mapping[str, BatchSummary | None]) -> str:
    """A Markdown table of batch figures, one row per controller."""
    lines = [
        "| controller | batches | mean size | items/s | p50 ms/item | p99 ms/item | p99 ms/batch | success |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in summaries.items():
        lines.append(f"| {name} | {_batch_cells(s)} |")
    return "\n".join(lines) + "\n"


def _batch_cells(s: BatchSummary | None) -> str:
    if s is None:
        return "0 | - | - | - | - | - | - | -"
    return (
        f"{s.batches} | {s.mean_size:.1f} | {s.items_per_s:.1f} | {s.p50_item_ms:.2f} | "
        f"{s.p99_item_ms:.2f} | {s.p99_batch_ms:.1f} | {100 * s.success_rate:.1f} %"
    )


def render_peaks_markdown(peaks: Mapping[str, PeakSummary], before_s: float) -> str:
    """A Markdown table of each controller's figures through the surges, after a line saying which windows."""
    windows = next(iter(peaks.values())).windows if peaks else ()
    if windows:
        lengths = {round(b - a, 3) for a, b in windows}
        span = f"{lengths.pop():g} s each" if len(lengths) == 1 else f"{sum(b - a for a, b in windows):g} s in all"
        said = (
            f"{len(windows)} surge{'s' if len(windows) != 1 else ''} after the warm-up, each from "
            f"{before_s:g} s before it starts to its end ({span}, the first from {windows[0][0]:g} s)"
        )
    else:
        said = "no surge ends after the warm-up"
    lines = [
        f"Through the peaks: {said}; items/s over the windows' time, requests p99 of the background "
        "requests that arrived in them:",
        "",
        "| controller | batches | mean size | items/s | p50 ms/item | p99 ms/item | p99 ms/batch | success "
        "| sized by forecast | requests p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, peak in peaks.items():
        p99 = "-" if peak.requests_p99_ms is None else f"{peak.requests_p99_ms:.1f}"
        forecast = "-" if peak.batch is None else f"{peak.batch.forecast_batches}"
        lines.append(f"| {name} | {_batch_cells(peak.batch)} | {forecast} | {p99} |")
    return "\n".join(lines) + "\n"


def write_batch_plot(batches: Mapping[str, Sequence[BatchRecord]], path: Path, *, title: str = "") -> Path:
    """``batch_sizes.png``: batch size and the load score it was based on, over time, per controller.

    Raises:
        ImportError: matplotlib (the ``eval`` extra) is not installed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    sizes, loads = figure.subplots(2, 1, sharex=True)
    for name, records in batches.items():
        times = [r.time_s for r in records]
        line = sizes.plot(times, [r.size for r in records], label=name, drawstyle="steps-post")[0]
        scored = [(r.time_s, r.load_score) for r in records if r.load_score is not None]
        if scored:
            loads.plot([t for t, _ in scored], [s for _, s in scored], color=line.get_color(), label=name)
    sizes.set_ylabel("batch size (items)")
    loads.set_ylabel("load score (%)")
    loads.set_xlabel("time (s)")
    sizes.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.savefig(path)
    return path
