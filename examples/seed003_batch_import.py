"""Seed 003's data-import job: every batch as big as the service says it may be.

The seed's ``DynamicBatchManager`` sizes each batch from the server load: the
max size below 50 % load, the min size above 80 %, proportionally in between,
with a cooldown against thrashing, the default size when the load is unknown,
and an event for every change. Here the service makes that decision: before
each batch the job asks ``client.batch_size("data-import")`` (GetBatchSize),
imports that many items, and reports how long the batch took
(``client.report_batch``, ReportBatch). At the end it prints the operation's
adjustment events from ``client.load_status()`` (GetLoadStatus). If the service
cannot be reached, the SDK answers the last size it was given, else 25.

Run it against a local service (``./scripts/serve`` in another terminal):

    python examples/seed003_batch_import.py [--target 127.0.0.1:50051] [--items 2000] [--item-ms 2]

Sizing follows the host's load (threshold mode) unless you ask for latency-target
mode, where each batch under the target grows the next one and a batch over it
shrinks the next one (x0.9); the load is then not used:

    python examples/seed003_batch_import.py --mode latency_target --target-ms 150

If the service has no operation ``data-import`` yet, the job registers it through
``AdminService.ConfigureOperation`` (min 5, max 100, default 25, thresholds
50/80 %: the seed's defaults); an existing one is used as configured. The same
operation in a service config file is ``examples/seed003_batch_import.toml``.

Importing is simulated: a batch of n items takes n x ``--item-ms`` milliseconds.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import grpc

from loadwarden.sdk import Client, DeadlineExceededError, UnavailableError
from loadwarden.v1 import admin_pb2, admin_pb2_grpc, common_pb2

OPERATION = "data-import"
MIN_BATCH_SIZE = 5
MAX_BATCH_SIZE = 100
DEFAULT_BATCH_SIZE = 25
LOW_LOAD_PERCENT = 50.0
HIGH_LOAD_PERCENT = 80.0
RPC_TIMEOUT_S = 5.0
MODES = {"threshold": common_pb2.BATCH_MODE_THRESHOLD, "latency_target": common_pb2.BATCH_MODE_LATENCY_TARGET}


@dataclass(frozen=True)
class Batch:
    """One imported batch, as the job saw it."""

    number: int
    size: int
    reason: str
    duration_ms: float


def ensure_operation(client: Client, target: str, mode: str, target_ms: float, step: int, cooldown_ms: int) -> None:
    """Registers ``data-import`` unless the service already has it (then it is used as configured)."""
    existing = next((op for op in client.load_status().operations if op.name == OPERATION), None)
    if existing is not None:
        print(
            f"operation {OPERATION!r} exists: {existing.mode.value}, sizes {existing.min_batch_size}-"
            f"{existing.max_batch_size} (default {existing.default_batch_size}), current size {existing.batch_size}"
        )
        return
    config = common_pb2.OperationConfig(
        name=OPERATION,
        min_batch_size=MIN_BATCH_SIZE,
        max_batch_size=MAX_BATCH_SIZE,
        default_batch_size=DEFAULT_BATCH_SIZE,
        low_threshold_percent=LOW_LOAD_PERCENT,
        high_threshold_percent=HIGH_LOAD_PERCENT,
        cooldown_ms=cooldown_ms,
        mode=MODES[mode],
        target_latency_ms=target_ms if mode == "latency_target" else 0.0,
        additive_step=step,
    )
    with grpc.insecure_channel(target) as channel:  # the SDK covers decisions, not administration
        admin_pb2_grpc.AdminServiceStub(channel).ConfigureOperation(
            admin_pb2.ConfigureOperationRequest(operation=config), timeout=RPC_TIMEOUT_S
        )
    how = (
        f"target {target_ms:g} ms, +{step} per batch under it"
        if mode == "latency_target"
        else (f"thresholds {LOW_LOAD_PERCENT:g}/{HIGH_LOAD_PERCENT:g} % of host load")
    )
    print(
        f"operation {OPERATION!r} registered: {mode}, sizes {MIN_BATCH_SIZE}-{MAX_BATCH_SIZE} "
        f"(default {DEFAULT_BATCH_SIZE}), {how}, cooldown {cooldown_ms} ms"
    )


def import_items(client: Client, items: int, item_s: float) -> list[Batch]:
    """Imports ``items`` simulated items in service-sized batches; reports each batch's duration."""
    batches: list[Batch] = []
    done = 0
    while done < items:
        # Service unreachable: the SDK answers the last size it was given, else DEFAULT_BATCH_SIZE.
        answer = client.batch_size(OPERATION, default=DEFAULT_BATCH_SIZE)
        reason = f"fallback ({answer.source}): {answer.reason}" if answer.fallback else answer.reason
        size = min(answer.size, items - done)
        began = time.perf_counter()
        time.sleep(size * item_s)  # the import itself
        duration_ms = (time.perf_counter() - began) * 1000.0
        batch = Batch(len(batches) + 1, size, reason, duration_ms)
        last = f", the last {size} of {answer.size}" if size < answer.size else ""
        print(f"batch {batch.number:>3}: {batch.size:>3} items in {batch.duration_ms:7.1f} ms  ({batch.reason}{last})")
        try:
            client.report_batch(OPERATION, batch_size=size, duration_ms=duration_ms, decision_id=answer.decision_id)
        except (UnavailableError, DeadlineExceededError) as exc:
            print(f"  (report not delivered: {exc})")
        batches.append(batch)
        done += size
    return batches


def print_adjustments(client: Client) -> None:
    operation = next(op for op in client.load_status().operations if op.name == OPERATION)
    events = operation.recent_adjustments
    print(
        f"adjustment events: {operation.adjustments_total} (latest {len(events)} shown), "
        f"size now {operation.batch_size}"
    )
    for event in events:
        at = event.at.astimezone().strftime("%H:%M:%S.%f")[:-3]
        print(f"  {at}  {event.previous_size:>3} -> {event.new_size:<3}  {event.reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="loadwarden service address")
    parser.add_argument("--items", type=int, default=2000, help="items to import, count")
    parser.add_argument("--item-ms", type=float, default=2.0, help="simulated import time per item, milliseconds")
    parser.add_argument(
        "--mode", choices=sorted(MODES), default="threshold", help="sizing mode when the job registers the operation"
    )
    parser.add_argument(
        "--target-ms", type=float, default=150.0, help="latency_target mode: target batch duration, milliseconds"
    )
    parser.add_argument("--step", type=int, default=5, help="latency_target mode: size added per batch under target")
    parser.add_argument("--cooldown-ms", type=int, default=0, help="shortest time between two size changes, ms")
    args = parser.parse_args()
    if args.items < 1 or args.item_ms < 0:
        parser.error("--items must be >= 1 and --item-ms >= 0")

    with Client(args.target, timeout_s=RPC_TIMEOUT_S) as client:
        ensure_operation(client, args.target, args.mode, args.target_ms, args.step, args.cooldown_ms)
        began = time.perf_counter()
        batches = import_items(client, args.items, args.item_ms / 1000.0)
        elapsed_s = time.perf_counter() - began
        sizes = [b.size for b in batches]
        print(
            f"imported: {sum(sizes)} items in {len(batches)} batches, {elapsed_s:.2f} s; "
            f"batch sizes {min(sizes)}-{max(sizes)}"
        )
        print_adjustments(client)


if __name__ == "__main__":
    main()
