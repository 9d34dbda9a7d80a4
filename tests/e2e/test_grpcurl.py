"""The real grpcurl binary against a real ``loadwarden serve`` process (reflection, health, errors),
and against one with the mesh on: ADS (``[xds]``) and Envoy's rate-limit service (``[rls]``)."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest

from ._harness import API_CONFIG, API_SERVERS, Grpcurl, Processes, Service

pytestmark = pytest.mark.e2e

DECISION = "loadwarden.v1.DecisionService"
ADMIN = "loadwarden.v1.AdminService"
HEALTH = "grpc.health.v1.Health"
ADS = "envoy.service.discovery.v3.AggregatedDiscoveryService"
RLS = "envoy.service.ratelimit.v3.RateLimitService"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
# Three an hour per address: no test runs long enough to get one back.
MESH_CONFIG = (
    API_CONFIG
    + """
[xds]
enabled = true

[rls]
enabled = true

[[rls.domains]]
domain = "edge"

[[rls.domains.descriptors]]
key = "remote_address"
rate_limit = { unit = "hour", requests_per_unit = 3 }
"""
)


@pytest.fixture(scope="module")
def mesh_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    procs = Processes(tmp_path_factory.mktemp("mesh-service"))
    try:
        yield procs.serve(MESH_CONFIG)
    finally:
        procs.close()


def test_list_shows_decision_admin_and_health_services(shared_service: Service, grpcurl: Grpcurl) -> None:
    result = grpcurl(shared_service.target, "list")

    assert result.returncode == 0, str(result)
    services = set(result.stdout.split())
    assert {DECISION, ADMIN, HEALTH} <= services, str(result)


def test_describe_method_shows_the_rpc(shared_service: Service, grpcurl: Grpcurl) -> None:
    result = grpcurl(shared_service.target, "describe", f"{DECISION}.SelectServer")

    assert result.returncode == 0, str(result)
    rpc = "rpc SelectServer ( .loadwarden.v1.SelectServerRequest ) returns ( .loadwarden.v1.SelectServerResponse );"
    assert rpc in result.stdout, str(result)


def test_describe_shows_the_contracts_comments(shared_service: Service, grpcurl: Grpcurl) -> None:
    """Reflection serves the descriptors with their source info: the units and ranges."""
    message = grpcurl(shared_service.target, "describe", "loadwarden.v1.AcquireSlotRequest")
    assert message.returncode == 0, str(message)
    assert "// Priority 0-9; higher is served first, FIFO within a priority." in message.stdout, str(message)
    assert "uint32 priority = 3;" in message.stdout, str(message)

    service = grpcurl(shared_service.target, "describe", DECISION)
    assert "// The Decision service answers three questions" in service.stdout, str(service)
    method = grpcurl(shared_service.target, "describe", f"{DECISION}.AcquireSlot")
    assert method.returncode == 0 and "//" in method.stdout, str(method)
    # Files outside the contract come as they are.
    health = grpcurl(shared_service.target, "describe", HEALTH)
    assert health.returncode == 0 and "rpc Check" in health.stdout, str(health)


def test_select_server_answers_a_configured_server_with_a_decision_id(
    shared_service: Service, grpcurl: Grpcurl
) -> None:
    answer = grpcurl(shared_service.target, f"{DECISION}/SelectServer", data={"pool": "api"}).json()

    assert answer["server_id"] in API_SERVERS
    assert answer["address"] == API_SERVERS[answer["server_id"]]
    assert answer["decision_id"]
    assert answer["strategy"] == "round_robin"


def test_round_robin_visits_each_server_once_in_three_calls(shared_service: Service, grpcurl: Grpcurl) -> None:
    select = f"{DECISION}/SelectServer"
    answers = [grpcurl(shared_service.target, select, data={"pool": "api"}).json() for _ in range(3)]

    assert sorted(a["server_id"] for a in answers) == sorted(API_SERVERS)
    assert len({a["decision_id"] for a in answers}) == 3


@pytest.mark.parametrize("service_name", ["", DECISION, ADMIN])
def test_health_check_is_serving(shared_service: Service, grpcurl: Grpcurl, service_name: str) -> None:
    answer = grpcurl(shared_service.target, f"{HEALTH}/Check", data={"service": service_name}).json()

    assert answer == {"status": "SERVING"}


def test_unknown_pool_is_not_found_naming_the_field(shared_service: Service, grpcurl: Grpcurl) -> None:
    result = grpcurl(shared_service.target, f"{DECISION}/SelectServer", data={"pool": "no-such-pool"})

    assert result.code == "NotFound", str(result)
    assert result.message.startswith("pool:"), str(result)
    assert "no-such-pool" in result.message, str(result)


def test_watch_load_status_streams_a_snapshot(shared_service: Service, grpcurl: Grpcurl) -> None:
    # The stream stays open; grpcurl's -max-time ends it after the first snapshot arrived.
    result = grpcurl(shared_service.target, f"{DECISION}/WatchLoadStatus", data={"pool": "api"}, max_time_s=1.5)

    assert '"name": "api"' in result.stdout and '"id": "api-1"' in result.stdout, str(result)
    assert result.code == "DeadlineExceeded", str(result)


def test_acquire_and_release_a_slot(shared_service: Service, grpcurl: Grpcurl) -> None:
    granted = grpcurl(
        shared_service.target,
        f"{DECISION}/AcquireSlot",
        data={"pool": "api", "request_id": "r-1", "select_server": True},
    ).json()
    assert granted["granted"] is True and granted["server_id"].startswith("api-"), granted
    lease_id = granted["lease"]["lease_id"]
    released = grpcurl(
        shared_service.target, f"{DECISION}/ReleaseSlot", data={"lease_id": lease_id, "success": True}
    ).json()
    assert released == {"released": True}
    again = grpcurl(shared_service.target, f"{DECISION}/ReleaseSlot", data={"lease_id": lease_id}).json()
    assert again == {"already_released": True}


def test_sigterm_exits_zero_and_stops_answering(processes: Processes, grpcurl: Grpcurl) -> None:
    service = processes.serve()
    assert grpcurl(service.target, f"{HEALTH}/Check").json() == {"status": "SERVING"}

    assert service.stop(signal.SIGTERM) == 0, service.process.describe()
    after = grpcurl(service.target, f"{HEALTH}/Check", max_time_s=2)
    assert after.returncode != 0, str(after)


# --- the mesh ------------------------------------------------------------------------------------


def test_list_shows_the_mesh_services_only_when_they_are_on(
    mesh_service: Service, shared_service: Service, grpcurl: Grpcurl
) -> None:
    on = grpcurl(mesh_service.target, "list")
    off = grpcurl(shared_service.target, "list")

    assert on.returncode == 0 and off.returncode == 0, f"{on}\n{off}"
    assert {ADS, RLS, DECISION, ADMIN, HEALTH} <= set(on.stdout.split()), str(on)
    assert not {ADS, RLS} & set(off.stdout.split()), str(off)


def test_describe_shows_the_mesh_services_rpcs_and_messages(mesh_service: Service, grpcurl: Grpcurl) -> None:
    """Reflection serves xds-protos' descriptors: no .proto at hand is needed."""
    ads = grpcurl(mesh_service.target, "describe", ADS)
    assert ads.returncode == 0, str(ads)
    rpc = (
        "rpc StreamAggregatedResources ( stream .envoy.service.discovery.v3.DiscoveryRequest )"
        " returns ( stream .envoy.service.discovery.v3.DiscoveryResponse );"
    )
    assert rpc in ads.stdout, str(ads)
    method = grpcurl(mesh_service.target, "describe", f"{RLS}.ShouldRateLimit")
    rpc = (
        "rpc ShouldRateLimit ( .envoy.service.ratelimit.v3.RateLimitRequest )"
        " returns ( .envoy.service.ratelimit.v3.RateLimitResponse );"
    )
    assert method.returncode == 0 and rpc in method.stdout, str(method)
    message = grpcurl(mesh_service.target, "describe", "envoy.service.ratelimit.v3.RateLimitRequest")
    assert message.returncode == 0 and "string domain = 1;" in message.stdout, str(message)


def test_should_rate_limit_answers_ok_then_over_limit_with_the_headers(mesh_service: Service, grpcurl: Grpcurl) -> None:
    request = {"domain": "edge", "descriptors": [{"entries": [{"key": "remote_address", "value": "10.7.7.7"}]}]}

    answers = [grpcurl(mesh_service.target, f"{RLS}/ShouldRateLimit", data=request).json() for _ in range(4)]

    assert [a["overall_code"] for a in answers] == ["OK", "OK", "OK", "OVER_LIMIT"], answers
    assert [a["statuses"][0].get("limit_remaining", 0) for a in answers] == [2, 1, 0, 0], answers
    assert answers[3]["statuses"][0]["current_limit"] == {"requests_per_unit": 3, "unit": "HOUR"}, answers
    headers = {h["key"]: h["value"] for h in answers[3]["response_headers_to_add"]}
    assert headers == {"x-ratelimit-limit": "3", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "3600"}, answers
    other = {"domain": "edge", "descriptors": [{"entries": [{"key": "remote_address", "value": "10.7.7.8"}]}]}
    assert grpcurl(mesh_service.target, f"{RLS}/ShouldRateLimit", data=other).json()["overall_code"] == "OK"


def test_should_rate_limit_refuses_an_empty_domain_naming_it(mesh_service: Service, grpcurl: Grpcurl) -> None:
    result = grpcurl(mesh_service.target, f"{RLS}/ShouldRateLimit", data={"descriptors": [{"entries": []}]})

    assert result.code == "InvalidArgument", str(result)
    assert "domain" in result.message, str(result)


def test_stream_aggregated_resources_answers_a_subscription(mesh_service: Service, grpcurl: Grpcurl) -> None:
    """grpcurl sends the one request, half-closes and prints the answer (the Listener, its
    Any resolved over reflection); the service then ends the stream."""
    request = {"type_url": LISTENER, "resource_names": ["api"], "node": {"id": "grpcurl"}}

    result = grpcurl(mesh_service.target, f"{ADS}/StreamAggregatedResources", data=request)

    assert result.returncode == 0, str(result)
    answer = json.loads(result.stdout)
    assert answer["type_url"] == LISTENER and answer["nonce"] and answer["version_info"], answer
    assert [(r["@type"], r["name"]) for r in answer["resources"]] == [(LISTENER, "api")], answer
