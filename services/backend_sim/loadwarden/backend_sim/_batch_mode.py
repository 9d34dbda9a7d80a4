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
    # every other key is an operation setting (see [operations.X] in the service
    # config): min_batch_size, max_batch_size, default_batch_size, cooldown_ms,
    # min_step, low_threshold_percent, high_threshold_percent, target_latency_ms,
    # additive_step, backoff_ratio. [params.<controller>] overrides them per run.

A batch of n items goes to the backends in round robin and takes
``1 + item_cost x (n - 1)`` times a request's service time there, so bigger
batches are cheaper per item but slower, and they load the backends the
interactive traffic shares.
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

from ._summary import percentile

if TYPE_CHECKING:  # only for an annotation: _traffic runs the batch workers defined here
    from ._traffic import Backends

CONTROLLERS = MODES
DEFAULT_OPERATION = "sim-batch"
# Keys of [batch] that drive the workers; every other key is an operation setting.
_WORKER_KEYS = ("operation", "workers", "item_cost", "pause_ms")
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
    """

    time_s: float
    server: str
    size: int
    latency_ms: float
    success: bool
    load_score: float | None


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """The ``[batch]`` table, validated (see the module docstring).

    Attributes:
        operation: Operation name.
        workers: Concurrent batch loops.
        item_cost: Extra service time per item beyond the first, fraction of a request's.
        pause_ms: Pause between a loop's batches, ms.
        operation_settings: The operation settings of the table, by key.
    """

    operation: str = DEFAULT_OPERATION
    workers: int = 1
    item_cost: float = 0.1
    pause_ms: float = 0.0
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
            records.append(BatchRecord(at, server, size.size, latency_ms, success, size.load_score))
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

    def as_dict(self) -> dict[str, object]:
        return {
            "batches": self.batches,
            "items": self.items,
            "items_per_s": round(self.items_per_s, 1),
            "mean_size": round(self.mean_size, 2),
            "success_rate": round(self.success_rate, 4),
            "p50_item_ms": round(self.p50_item_ms, 3),
            "p99_item_ms": round(self.p99_item_ms, 3),
            "p99_batch_ms": round(self.p99_batch_ms, 3),
            "sizes": [[round(t, 3), s] for t, s in self.sizes],
        }


def summarize_batches(records: Sequence[BatchRecord], *, warmup_s: float = 0.0) -> BatchSummary | None:
    """Summarises the batches that started at or after ``warmup_s``; None when there are none."""
    kept = [r for r in records if r.time_s >= warmup_s]
    if not kept:
        return None
    per_item = sorted(r.latency_ms / r.size for r in kept)
    batch_ms = sorted(r.latency_ms for r in kept)
    items = sum(r.size for r in kept if r.success)
    span = max(r.time_s + r.latency_ms / 1000.0 for r in kept) - kept[0].time_s
    return BatchSummary(
        batches=len(kept),
        items=items,
        items_per_s=items / span if span > 0 else 0.0,
        mean_size=sum(r.size for r in kept) / len(kept),
        success_rate=sum(r.success for r in kept) / len(kept),
        p50_item_ms=percentile(per_item, 0.5),
        p99_item_ms=percentile(per_item, 0.99),
        p99_batch_ms=percentile(batch_ms, 0.99),
        sizes=tuple((r.time_s, r.size) for r in records),
    )


def render_batch_markdown(summaries: Mapping[str, BatchSummary | None]) -> str:
    """A Markdown table of batch figures, one row per controller."""
    lines = [
        "| controller | batches | mean size | items/s | p50 ms/item | p99 ms/item | p99 ms/batch | success |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in summaries.items():
        if s is None:
            lines.append(f"| {name} | 0 | - | - | - | - | - | - |")
            continue
        lines.append(
            f"| {name} | {s.batches} | {s.mean_size:.1f} | {s.items_per_s:.1f} | {s.p50_item_ms:.2f} | "
            f"{s.p99_item_ms:.2f} | {s.p99_batch_ms:.1f} | {100 * s.success_rate:.1f} % |"
        )
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
