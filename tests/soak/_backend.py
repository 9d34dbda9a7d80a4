"""A real backend for the fault tests, run as its own process.

A grpc.aio server with one unary method (``/loadwarden.soak.Backend/Work``: bytes
in, the same bytes out after 2 ms) whose requests a ``BackendReporter`` tracks
and pushes to the Decision service every ``--interval-s``. Prints
``backend <id> listening on <host:port>`` once it serves, then runs until killed.

Usage: python _backend.py TARGET POOL SERVER_ID [--interval-s 0.2]
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from loadwarden.sdk import AsyncClient, BackendReporter

SERVICE = "loadwarden.soak.Backend"
METHOD = f"/{SERVICE}/Work"
WORK_S = 0.002
# Never outlives a test that forgot it, seconds.
LIFETIME_S = 300.0


async def main(target: str, pool: str, server_id: str, interval_s: float) -> None:
    client = AsyncClient(target, timeout_s=0.5)
    reporter = BackendReporter(client, pool, server_id, interval_s=interval_s)

    async def work(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        async with reporter.track_async():
            await asyncio.sleep(WORK_S)
            return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Work": grpc.unary_unary_rpc_method_handler(work)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    reporter.start()
    print(f"backend {server_id} listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination(LIFETIME_S)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("pool")
    parser.add_argument("server_id")
    parser.add_argument("--interval-s", type=float, default=0.2)
    args = parser.parse_args()
    asyncio.run(main(args.target, args.pool, args.server_id, args.interval_s))
