"""A grpcio client of ``xds:///<target>``, run in its own process by test_xds.py.

grpc's xDS client reads its bootstrap from the environment (``GRPC_XDS_BOOTSTRAP_CONFIG``)
and keeps process-wide state, so it never runs in the test process. It reads one command
a line on stdin and answers each with one JSON line on stdout:

* ``calls N``: N unary calls one after another; answers ``{"ok": n, "errors": {code: n}, "last": "..."}``.
* ``start``: calls in a loop on a thread until ``stop``, which answers as ``calls`` does.
* ``exit``: ends the process.
"""

from __future__ import annotations

import collections
import json
import sys
import threading

import grpc

METHOD = "/loadwarden.test.Echo/Ping"
CALL_TIMEOUT_S = 2.0


class Calls:
    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(f"xds:///{target}")
        self.ping: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(METHOD)
        self.reset()

    def reset(self) -> None:
        self.ok = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.last = ""

    def one(self) -> None:
        try:
            self.ping(b"ping", timeout=CALL_TIMEOUT_S)
            self.ok += 1
        except grpc.RpcError as exc:
            self.errors[exc.code().name] += 1
            self.last = (exc.details() or "")[:500]

    def summary(self) -> str:
        answer = json.dumps({"ok": self.ok, "errors": dict(self.errors), "last": self.last})
        self.reset()
        return answer


def main() -> None:
    calls = Calls(sys.argv[1])
    stop = threading.Event()
    looping: threading.Thread | None = None

    def loop() -> None:
        while not stop.is_set():
            calls.one()

    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "calls":
            for _ in range(int(argument)):
                calls.one()
            print(calls.summary(), flush=True)
        elif command == "start":
            stop.clear()
            looping = threading.Thread(target=loop, daemon=True)
            looping.start()
            print("{}", flush=True)
        elif command == "stop":
            stop.set()
            if looping is not None:
                looping.join()
            print(calls.summary(), flush=True)
        elif command == "exit":
            break
    calls.channel.close()


if __name__ == "__main__":
    main()
