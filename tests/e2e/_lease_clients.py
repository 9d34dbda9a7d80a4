"""A client process for the shared-admission history check: many clients, each cycling
acquire -> hold -> release against its replica, every grant and release written down.

    python -m tests.e2e._lease_clients --targets A,B,C --clients 25 --cycles 500 \
        --first 0 --out history.jsonl

Client ``i`` (numbered from ``--first``) talks to replica ``i % len(targets)``. Each
line written is ``{"client", "granted", "released", "lease"}`` with times from
``time.monotonic()``, which on Linux is one clock for every process on the machine.
``granted`` is read after the grant arrived and ``released`` before the release is
sent, so each recorded interval lies inside the true one: more than ``limit``
recorded intervals overlapping means the service over-admitted. The last line is
``{"summary": {...}}`` with the counts of cycles and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from typing import Any

import grpc

from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc


async def client(
    index: int,
    stub: pb_grpc.DecisionServiceAsyncStub,
    pool: str,
    cycles: int,
    out: list[dict[str, Any]],
    errors: list[str],
    hold_s: float = 0.002,
) -> None:
    rng = random.Random(index)
    done = 0
    while done < cycles:
        try:
            answer = await stub.AcquireSlot(
                pb.AcquireSlotRequest(pool=pool, max_wait_ms=20_000, request_id=f"c{index}-{done}"), timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            errors.append(f"acquire: {exc.code().name}: {exc.details()}")
            continue
        if not answer.granted:
            continue  # a queue timeout: ask again
        granted = time.monotonic()
        await asyncio.sleep(rng.uniform(0.0, hold_s))  # the work
        released = time.monotonic()
        out.append({"client": index, "granted": granted, "released": released, "lease": answer.lease.lease_id})
        try:
            await stub.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=answer.lease.lease_id, success=True), timeout=30)
        except grpc.aio.AioRpcError as exc:
            errors.append(f"release: {exc.code().name}: {exc.details()}")
        done += 1


async def main(args: argparse.Namespace) -> int:
    targets = args.targets.split(",")
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    stubs = [pb_grpc.DecisionServiceStub(c) for c in channels]
    out: list[dict[str, Any]] = []
    errors: list[str] = []
    started = time.monotonic()
    await asyncio.gather(
        *(
            client(i, stubs[i % len(stubs)], args.pool, args.cycles, out, errors, args.hold_ms / 1000.0)
            for i in range(args.first, args.first + args.clients)
        )
    )
    for channel in channels:
        await channel.close()
    with open(args.out, "w", encoding="utf-8") as handle:
        for line in out:
            handle.write(json.dumps(line) + "\n")
        summary = {"cycles": len(out), "errors": errors[:20], "error_count": len(errors)}
        summary["seconds"] = round(time.monotonic() - started, 2)
        handle.write(json.dumps({"summary": summary}) + "\n")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", required=True)
    parser.add_argument("--pool", default="p")
    parser.add_argument("--clients", type=int, default=25)
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--hold-ms", type=float, default=2.0, help="each lease is held up to this long, at random")
    sys.exit(asyncio.run(main(parser.parse_args())))
