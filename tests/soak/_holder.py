"""A client that holds slots until it is killed, run as its own process.

Enters ``client.slot(POOL, lease_ttl_s=TTL)`` COUNT times (the SDK renews each
lease at 75 % of its TTL from a background thread), prints
``holding <count> leases``, then waits until killed. Its leases outlive their TTL
only through those renewals, so once the process dies they lapse.

Usage: python _holder.py TARGET POOL COUNT TTL_S
"""

from __future__ import annotations

import contextlib
import sys
import threading

from loadwarden.sdk import Client

# Never outlives a test that forgot it, seconds.
LIFETIME_S = 120.0


def main(target: str, pool: str, count: int, ttl_s: float) -> None:
    with Client(target, timeout_s=5.0) as client, contextlib.ExitStack() as held:
        leases = [held.enter_context(client.slot(pool, lease_ttl_s=ttl_s)) for _ in range(count)]
        print(f"holding {len(leases)} leases", flush=True)
        threading.Event().wait(LIFETIME_S)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
