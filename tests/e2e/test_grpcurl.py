"""The real grpcurl binary against a real ``loadwarden serve`` process (reflection, health, errors)."""

from __future__ import annotations

import signal

import pytest

from ._harness import API_SERVERS, Grpcurl, Processes, Service

pytestmark = pytest.mark.e2e

DECISION = "loadwarden.v1.DecisionService"
ADMIN = "loadwarden.v1.AdminService"
HEALTH = "grpc.health.v1.Health"


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
