"""Fuzzing every RPC of a real ``loadwarden serve`` with Hypothesis.

One service process per module, with pools, servers and operations so valid
paths run too, and small caps so the fuzzer hits them. Each Hypothesis example is
a batch of BATCH calls sent at once; after every batch the service must still be
healthy (Health SERVING, a valid SelectServer on a pool the fuzzer never names
succeeds, the process is alive). Every answer must be OK or a documented
client-error code — never UNKNOWN or INTERNAL (see ``_fuzz_client.judge``).

The mesh is on: ADS (``[xds]``) and Envoy's rate-limit service (``[rls]``) on the
service's port; after every batch the mesh answers a probe caller too (RLS the
``canary`` domain, ADS the canary pool's resources), so ADS builds the pools the
other tests fuzzed.

Requests sent: LOADWARDEN_FUZZ_EXAMPLES in all (default 20,000), split between
the four tests below by SHARES. Runs are reproducible (``derandomize=True``);
LOADWARDEN_FUZZ_SEED=<int> explores a different (equally reproducible) stream.
Long mode: ``LOADWARDEN_FUZZ_EXAMPLES=200000 pytest tests/e2e/test_fuzz.py``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from ._fuzz_client import FuzzClient, InFlight
from ._fuzz_strategies import (
    ADMIN_CALLS,
    DECISION_CALLS,
    MESH_CALLS,
    SHOULD_RATE_LIMIT,
    STREAM_RESOURCES,
    VALID_ADMIN_CALLS,
    Call,
    blend,
    mesh_raw_calls,
    raw_calls,
)
from ._harness import Processes, Service

pytestmark = pytest.mark.e2e

TOTAL_REQUESTS = int(os.environ.get("LOADWARDEN_FUZZ_EXAMPLES", "20000"))
SEED = os.environ.get("LOADWARDEN_FUZZ_SEED", "")
BATCH = 50
SHARES = {"decision": 0.56, "admin": 0.23, "raw": 0.13, "mesh": 0.08}
# A generous per-test budget that grows with the long mode (the CI run takes far less).
TIMEOUT_S = max(300, TOTAL_REQUESTS // 50)

# Two callers (and the admin): ids issued to one are fuzzed by the other too.
TOKENS = ("fuzz-alpha-token-0123456789", "fuzz-beta-token-01234567890")
ADMIN_TOKEN = "fuzz-admin-token-0123456789"
PROBE_TOKEN = "fuzz-probe-token-0123456789"  # the health checks' mesh caller, never fuzzed
# Low enough that a batch's ADS streams meet it now and then, and that a stream the service
# failed to let go of shows at the end (test_fuzz_mesh_services opens one more than this).
XDS_STREAMS_PER_CALLER = 6
CONFIG = f"""\
[service]
shutdown_grace_ms = 1000
auto_register_operations = true

[admin]
token = "{ADMIN_TOKEN}"

[auth.clients]
alpha = "{TOKENS[0]}"
beta = "{TOKENS[1]}"
probe = "{PROBE_TOKEN}"

[limits]
decision_ttl_ms = 5000
max_pending_decisions = 2000
max_pools = 40
max_servers_per_pool = 16
max_leases = 300
max_request_ids = 2000
max_operations = 30
max_watch_streams = 8
max_message_bytes = 1048576

[monitor]
interval_ms = 200

[planning]
enabled = true
interval_s = 1
horizon_s = 3600

[pools.api]
strategy = "round_robin"
servers = [
  {{ id = "api-1", address = "127.0.0.1:9001" }},
  {{ id = "api-2", address = "127.0.0.1:9002" }},
  {{ id = "api-3", address = "127.0.0.1:9003" }},
]

[pools.ml]
strategy = "least_connections"
max_concurrency = 4
max_queue_length = 8
max_wait_ms = 100
lease_ttl_ms = 2000
rate_limit = "200/second"
rate_limit_keys = 50
servers = [{{ id = "ml-1", address = "127.0.0.1:9101" }}]

[pools.canary]
servers = [
  {{ id = "c1", address = "127.0.0.1:9201" }},
  {{ id = "c2", address = "127.0.0.1:9202" }},
]

[operations.import]
min_batch_size = 1
max_batch_size = 100

[operations.latency]
mode = "latency_target"
target_latency_ms = 100
max_batch_size = 500

[operations.poolop]
load_source = "pool"
pool = "api"

[xds]
enabled = true
push_interval_ms = 50
max_streams_per_caller = {XDS_STREAMS_PER_CALLER}

# Two domains, nested descriptors, a shadow-mode rule and a pool's own buckets (ml: 200/second,
# AcquireSlot's); the fuzzer's well-formed requests draw from few values, so buckets run out.
[rls]
enabled = true
max_keys = 500

[[rls.domains]]
domain = "edge"

[[rls.domains.descriptors]]
key = "remote_address"
rate_limit = {{ unit = "minute", requests_per_unit = 20 }}

[[rls.domains.descriptors]]
key = "user"
shadow_mode = true
rate_limit = {{ unit = "minute", requests_per_unit = 5 }}

[[rls.domains.descriptors]]
key = "client_id"
pool = "ml"

[[rls.domains.descriptors]]
key = "generic_key"
value = "free"
rate_limit = {{ unlimited = true }}

[[rls.domains.descriptors]]
key = "path"
value = "/api/*"
detailed_metric = true
rate_limit = {{ unit = "second", requests_per_unit = 50 }}

[[rls.domains.descriptors.descriptors]]
key = "method"
value = "POST"
rate_limit = {{ unit = "minute", requests_per_unit = 10 }}

[[rls.domains]]
domain = "api"

[[rls.domains.descriptors]]
key = "tenant"

[[rls.domains.descriptors.descriptors]]
key = "plan"
value = "free"
rate_limit = {{ unit = "hour", requests_per_unit = 30, name = "free" }}

[[rls.domains.descriptors.descriptors]]
key = "plan"
rate_limit = {{ unit = "day", requests_per_unit = 1000 }}

[[rls.domains.descriptors]]
key = "user"
rate_limit = {{ unit = "minute", requests_per_unit = 15, replaces = [{{ name = "free" }}] }}

[[rls.domains]]
domain = "canary"  # the health checks' probe

[[rls.domains.descriptors]]
key = "probe"
rate_limit = {{ unlimited = true }}
"""


@pytest.fixture(scope="module")
def fuzz_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    procs = Processes(Path(tmp_path_factory.mktemp("fuzz")))
    try:
        yield procs.serve(CONFIG, extra_args=["--log-level", "ERROR"])
    finally:
        procs.close()


@pytest.fixture
def client(fuzz_service: Service) -> Iterator[FuzzClient]:
    fuzz = FuzzClient(fuzz_service.target, TOKENS, ADMIN_TOKEN, mesh_probe_token=PROBE_TOKEN)
    try:
        yield fuzz
    finally:
        fuzz.close()


def _examples(share: str) -> int:
    return math.ceil(TOTAL_REQUESTS * SHARES[share] / BATCH)


def _fuzz(client: FuzzClient, service: Service, calls: st.SearchStrategy[Call], examples: int) -> None:
    """Sends ``examples`` batches drawn from ``calls``; fails on the first batch with a bad answer.

    Batches are pipelined: an example sends its batch and judges the previous one
    (while the service answers, Hypothesis draws). A failure message therefore
    quotes the offending call itself; the example Hypothesis reports is the next one.
    """
    previous: list[InFlight] = []

    def judge_previous() -> None:
        if previous:
            client.finish(previous.pop())
        assert not client.tally.problems, "\n".join(client.tally.problems[:10])
        assert service.proc.poll() is None, f"the service exited\n{service.process.describe()}"
        client.check_healthy()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=not SEED,
        report_multiple_bugs=False,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(calls, min_size=BATCH, max_size=BATCH))
    def run(batch: list[Call]) -> None:
        judge_previous()
        previous.append(client.start(batch))

    if SEED:
        run = seed(int(SEED))(run)

    run()
    judge_previous()
    print(f"\n{client.tally.sent} requests; answers by method and code:")
    for (method, code), count in sorted(client.tally.codes.items()):
        print(f"  {method:40} {code:20} {count:6}")
    for (method, what), count in sorted(client.tally.answers.items()):
        print(f"  {method:40} {what:20} {count:6}")
    assert client.tally.sent >= examples * BATCH
    stderr = service.process.stderr.text
    assert "unexpected error" not in stderr and "Traceback" not in stderr, stderr[-5000:]


def _assert_coverage(client: FuzzClient, methods: set[str]) -> None:
    """Every method was answered OK at least once and rejected at least once: valid and
    invalid paths both ran."""
    answered = {m for m, _ in client.tally.codes}
    ok = client.tally.methods_with("OK")
    rejected = {m for m, code in client.tally.codes if code != "OK"}
    assert methods <= answered, f"never sent: {methods - answered}"
    assert methods <= ok, f"never answered OK: {methods - ok}; {client.tally.codes}"
    assert methods <= rejected, f"never rejected: {methods - rejected}; {client.tally.codes}"


@pytest.mark.timeout(TIMEOUT_S)
def test_fuzz_decision_service(client: FuzzClient, fuzz_service: Service) -> None:
    """Every DecisionService RPC, malformed and valid, concurrently: client-error codes only."""
    examples = _examples("decision")
    _fuzz(client, fuzz_service, st.one_of(*DECISION_CALLS.values()), examples)
    _assert_coverage(client, set(DECISION_CALLS))


@pytest.mark.timeout(TIMEOUT_S)
def test_fuzz_admin_service(client: FuzzClient, fuzz_service: Service) -> None:
    """Every AdminService RPC (and DecisionService calls on what they change): client-error codes only."""
    examples = _examples("admin")
    calls = st.one_of(*ADMIN_CALLS.values(), *ADMIN_CALLS.values(), *DECISION_CALLS.values())
    _fuzz(client, fuzz_service, calls, examples)
    _assert_coverage(client, set(ADMIN_CALLS))


@pytest.mark.timeout(TIMEOUT_S)
def test_fuzz_undecodable_bytes(client: FuzzClient, fuzz_service: Service) -> None:
    """Raw bytes to every method path: INVALID_ARGUMENT (or OK when they happen to decode), never UNKNOWN.

    gRPC's own answer to a request it cannot deserialize is UNKNOWN; the service
    registers deserializers that hand the handler a marker instead, answered
    INVALID_ARGUMENT naming the message type.
    """
    examples = _examples("raw")
    _fuzz(client, fuzz_service, raw_calls, examples)
    raw = {m for m, _ in client.tally.codes if m.endswith("(raw bytes)")}
    assert len(raw) == len(DECISION_CALLS) + len(ADMIN_CALLS), raw
    assert {m for m in client.tally.methods_with("INVALID_ARGUMENT")} >= raw


@pytest.mark.timeout(TIMEOUT_S)
def test_fuzz_mesh_services(client: FuzzClient, fuzz_service: Service) -> None:
    """Envoy's RateLimitService and ADS, malformed, well-formed and raw, while pools change: client-error codes only.

    Well-formed rate-limit requests hit the configured rules until they answer OVER_LIMIT;
    well-formed ADS clients subscribe, ACK or NACK, and half-close or go away. Afterwards
    every fuzzed caller can hold its full share of ADS streams again (none was kept), and
    not one more.
    """
    examples = _examples("mesh")
    churn = st.one_of(*VALID_ADMIN_CALLS.values())  # pools and servers change under the open streams
    calls = blend(*MESH_CALLS.values(), *MESH_CALLS.values(), mesh_raw_calls, churn)
    _fuzz(client, fuzz_service, calls, examples)
    _assert_coverage(client, set(MESH_CALLS))
    raw = {f"{method} (raw bytes)" for method in MESH_CALLS}
    assert raw <= client.tally.methods_with("INVALID_ARGUMENT"), client.tally.codes
    said = client.tally.answers
    assert said[(SHOULD_RATE_LIMIT, "overall OK")] and said[(SHOULD_RATE_LIMIT, "overall OVER_LIMIT")], said
    assert said[(STREAM_RESOURCES, "ACKs sent")] and said[(STREAM_RESOURCES, "NACKs sent")], said
    for caller in range(len(TOKENS)):  # one stream over the cap: exactly the cap is admitted, once all were let go
        deadline = time.monotonic() + 5.0  # cancelled streams end on the service's side within moments
        while (admitted := client.streams_admitted(caller, XDS_STREAMS_PER_CALLER + 1)) != XDS_STREAMS_PER_CALLER:
            assert admitted < XDS_STREAMS_PER_CALLER, f"caller {caller}: {admitted} streams admitted, over the cap"
            assert time.monotonic() < deadline, f"caller {caller}: {admitted} of {XDS_STREAMS_PER_CALLER} admitted"
