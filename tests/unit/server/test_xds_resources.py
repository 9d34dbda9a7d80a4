"""The xDS resources of a pool, built without sockets: names, weights, states, left-out servers,
the settings, the token helpers and the mesh package's public names."""

from __future__ import annotations

import base64
import json

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
from envoy.config.core.v3 import health_check_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # type: ignore[import-untyped]  # xds-protos: no stubs
    http_connection_manager_pb2,
)

import loadwarden.server.mesh
from loadwarden.policy import Answer, LoadSample, ManualClock, PoolSettings, ProbeRules, ServerSpec
from loadwarden.policy.strategies import Feedback
from loadwarden.server import ConfigError, DecisionCore, OutlierSettings
from loadwarden.server.mesh import EndpointView, Refused, XdsSettings, check_bearer, new_xds_token, pool_view
from loadwarden.server.mesh._xds_resources import (
    MAX_WEIGHT_SUM,
    WEIGHT_SCALE,
    cluster,
    fit_weights,
    listener,
    load_assignment,
    pool_resources,
    split_address,
)

HEALTHY, UNHEALTHY, DRAINING = health_check_pb2.HEALTHY, health_check_pb2.UNHEALTHY, health_check_pb2.DRAINING


def make_core(*weights: int, clock: ManualClock | None = None, **settings: object) -> DecisionCore:
    core = DecisionCore(clock=clock or ManualClock())
    servers = [ServerSpec(f"s{i}", f"10.0.0.{i}:50{i}", w) for i, w in enumerate(weights, 1)]
    core.configure_pool(PoolSettings(name="api", **settings), servers)  # type: ignore[arg-type]  # test settings
    return core


def view_of(core: DecisionCore) -> dict[str, EndpointView]:
    return {v.server_id: v for v in pool_view(core.pool("api"), core.clock.monotonic()).endpoints}


def test_weights_are_the_configured_weights_scaled() -> None:
    views = view_of(make_core(1, 2, 3))
    assert [(v.host, v.port, v.weight, v.health) for v in views.values()] == [
        ("10.0.0.1", 501, 1 * WEIGHT_SCALE, HEALTHY),
        ("10.0.0.2", 502, 2 * WEIGHT_SCALE, HEALTHY),
        ("10.0.0.3", 503, 3 * WEIGHT_SCALE, HEALTHY),
    ]


def test_slow_start_ramps_the_weight_of_a_returning_server() -> None:
    clock = ManualClock()
    core = make_core(2, 2, clock=clock, slow_start_ms=10_000)
    view_of(core)  # the servers become routable now: their ramp starts
    assert view_of(core)["s1"].weight == round(2 * 0.1 * WEIGHT_SCALE)  # 10 % at first
    clock.advance(5.0)
    assert view_of(core)["s1"].weight == round(2 * 0.5 * WEIGHT_SCALE)
    clock.advance(5.0)
    assert view_of(core)["s1"].weight == 2 * WEIGHT_SCALE


def test_a_degraded_server_weighs_its_degraded_share_and_stays_healthy() -> None:
    core = make_core(4, 4)
    pool = core.pool("api")
    rules = ProbeRules(degraded_share=0.25)
    pool.record_probe(pool.servers["s1"], Answer.DEGRADED, 5.0, "degraded", 0.0, rules)
    views = view_of(core)
    assert (views["s1"].weight, views["s1"].health) == (WEIGHT_SCALE, HEALTHY)
    assert views["s2"].weight == 4 * WEIGHT_SCALE


def test_states_become_health_statuses() -> None:
    clock = ManualClock()
    core = make_core(*[1] * 8, clock=clock, require_load_report=True, load_report_ttl_ms=1_000)
    pool = core.pool("api")
    for sid in ("s1", "s2", "s3", "s4", "s5", "s6", "s7"):  # s8 never reports: stale
        pool.record_load(pool.servers[sid], _sample(), clock.monotonic(), clock.wall())
    core.drain_server("api", "s1", True)
    pool.eject_for(pool.servers["s2"], 30.0, clock.monotonic())
    pool.record_probe(pool.servers["s3"], Answer.FAILED, 1.0, "HTTP 503", 0.0, ProbeRules(unhealthy_threshold=1))
    views = view_of(core)
    assert not pool.panic  # 4 of the 6 routable servers are healthy
    assert {sid: v.health for sid, v in views.items()} == {
        "s1": DRAINING,
        "s2": UNHEALTHY,
        "s3": UNHEALTHY,
        **{f"s{i}": HEALTHY for i in (4, 5, 6, 7)},
        "s8": UNHEALTHY,
    }
    assert views["s1"].weight == WEIGHT_SCALE  # not sent to, steady
    clock.advance(2.0)  # every load report is older than its TTL now: all stale
    assert {v.health for sid, v in view_of(core).items() if sid != "s1"} == {UNHEALTHY}


def test_a_pool_in_panic_offers_its_ejected_servers_as_loadwarden_would_choose_them() -> None:
    clock = ManualClock()
    core = make_core(1, 1, clock=clock, outlier=OutlierSettings(panic_threshold_percent=60))
    pool = core.pool("api")
    pool.eject_for(pool.servers["s1"], 30.0, clock.monotonic())
    pool.record_probe(pool.servers["s2"], Answer.FAILED, 1.0, "down", 0.0, ProbeRules(unhealthy_threshold=1))
    views = view_of(core)  # neither is healthy: under the panic threshold, both are chosen
    assert pool.panic
    assert {v.health for v in views.values()} == {HEALTHY}


def test_peak_ewma_turns_latency_estimates_into_weights() -> None:
    core = make_core(1, 1, 1, strategy="peak_ewma")
    pool = core.pool("api")
    for sid, latency_ms in (("s1", 10.0), ("s2", 40.0)):
        pool.strategy.observe(Feedback(pool.servers[sid], True, latency_ms))
    views = view_of(core)
    # s2 answers 4x slower: a quarter of the fastest one's weight; s3 has no estimate: a full one.
    assert [views[s].weight for s in ("s1", "s2", "s3")] == [WEIGHT_SCALE, WEIGHT_SCALE // 4, WEIGHT_SCALE]


def test_servers_eds_cannot_carry_are_left_out_with_the_reason() -> None:
    core = DecisionCore(clock=ManualClock())
    specs = [
        ServerSpec("a", "10.0.0.1:80"),
        ServerSpec("b", "backend.internal:80"),
        ServerSpec("c", "10.0.0.1:80"),
        ServerSpec("d", "[::1]:8080"),
        ServerSpec("e", "10.0.0.5:70000"),
    ]
    core.configure_pool(PoolSettings(name="api"), specs)
    view = pool_view(core.pool("api"), 0.0)
    assert [(v.server_id, v.host, v.port) for v in view.endpoints] == [("a", "10.0.0.1", 80), ("d", "::1", 8080)]
    reasons = dict(view.left_out)
    assert "names a host, not an IP address" in reasons["b"]
    assert "server 'a'" in reasons["c"]
    assert "outside 1-65535" in reasons["e"]


def test_split_address() -> None:
    assert split_address("127.0.0.1:9") == ("127.0.0.1", 9)
    assert split_address("[2001:db8::1]:443") == ("2001:db8::1", 443)
    assert isinstance(split_address("127.0.0.1"), str)
    assert isinstance(split_address("127.0.0.1:0"), str)


def test_weights_past_uint32_are_scaled_down_in_proportion() -> None:
    views = [EndpointView("a", "10.0.0.1", 1, 3 * 10**9, HEALTHY), EndpointView("b", "10.0.0.2", 1, 10**9, HEALTHY)]
    fitted = fit_weights(views)
    assert sum(v.weight for v in fitted) <= MAX_WEIGHT_SUM
    assert fitted[0].weight == pytest.approx(3 * fitted[1].weight, rel=1e-6)
    assert fit_weights(views[1:]) == tuple(views[1:])


def test_resources_are_named_like_the_pool() -> None:
    core = make_core(1, 3)
    resources = pool_resources("api", pool_view(core.pool("api"), 0.0))
    assert resources.listener.name == resources.route.name == resources.cluster.name == "api"
    assert resources.endpoints.cluster_name == "api"

    manager = http_connection_manager_pb2.HttpConnectionManager()
    assert resources.listener.api_listener.api_listener.Unpack(manager)
    assert [f.name for f in manager.http_filters] == ["envoy.filters.http.router"]
    (host,) = manager.route_config.virtual_hosts
    assert list(host.domains) == ["*"]
    assert host.routes[0].route.cluster == "api"
    assert host.routes[0].match.prefix == ""

    assert resources.cluster.type == cluster_pb2.Cluster.EDS
    assert resources.cluster.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
    assert resources.cluster.eds_cluster_config.eds_config.HasField("ads")
    assert resources.cluster.eds_cluster_config.service_name == "api"


def test_one_locality_per_server_weighs_as_the_server() -> None:
    views = [EndpointView("s1", "10.0.0.1", 80, 100, HEALTHY), EndpointView("s2", "::1", 81, 300, DRAINING)]
    assignment = load_assignment("api", views)
    assert [locality.locality.sub_zone for locality in assignment.endpoints] == ["s1", "s2"]
    assert [locality.load_balancing_weight.value for locality in assignment.endpoints] == [100, 300]
    endpoints = [locality.lb_endpoints[0] for locality in assignment.endpoints]
    assert [e.load_balancing_weight.value for e in endpoints] == [100, 300]
    assert [e.health_status for e in endpoints] == [HEALTHY, DRAINING]
    assert [e.endpoint.address.socket_address.address for e in endpoints] == ["10.0.0.1", "::1"]
    assert [e.endpoint.address.socket_address.port_value for e in endpoints] == [80, 81]


def test_listener_and_cluster_bytes_are_stable() -> None:
    assert listener("a").SerializeToString(deterministic=True) == listener("a").SerializeToString(deterministic=True)
    assert cluster("a").SerializeToString(deterministic=True) != cluster("b").SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"enabled": "yes"}, "xds.enabled"),
        ({"listen": "nowhere"}, "xds.listen"),
        ({"listen": "127.0.0.1:70000"}, "xds.listen"),
        ({"push_interval_ms": 5}, "xds.push_interval_ms"),
        ({"push_interval_ms": 2_000}, "xds.push_interval_ms"),
        ({"max_streams": 0}, "xds.max_streams"),
        ({"max_streams_per_caller": True}, "xds.max_streams_per_caller"),
    ],
)
def test_settings_name_the_key_they_reject(values: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        XdsSettings(**values)  # type: ignore[arg-type]  # wrong on purpose
    assert caught.value.key == key


def test_settings_defaults() -> None:
    settings = XdsSettings()
    assert (settings.enabled, settings.listen, settings.push_interval_ms) == (False, "", 100)
    assert XdsSettings(enabled=True, listen="[::1]:0").listen == "[::1]:0"


def test_new_xds_token_is_a_jwt_with_an_expiry_and_a_secret() -> None:
    token = new_xds_token()
    header, payload, secret = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(payload + "==")) == {"exp": 4_102_444_800}
    assert json.loads(base64.urlsafe_b64decode(header + "=="))["typ"] == "JWT"
    assert len(secret) >= 43 and new_xds_token() != token
    assert len(token) >= 16 and " " not in token  # a valid [auth] token


def test_check_bearer_names_the_caller_as_the_decision_service_does() -> None:
    tokens = {"t" * 20: "mesh"}
    assert check_bearer([("authorization", "Bearer " + "t" * 20)], tokens) == "mesh"
    assert check_bearer([], {}) == ""  # no tokens configured: open, anonymous
    for metadata, code in (
        ([], grpc.StatusCode.UNAUTHENTICATED),
        ([("authorization", "Basic abc")], grpc.StatusCode.UNAUTHENTICATED),
        ([("authorization", "Bearer " + "u" * 20)], grpc.StatusCode.PERMISSION_DENIED),
    ):
        with pytest.raises(Refused) as caught:
            check_bearer(metadata, tokens)
        assert caught.value.code is code
        assert "t" * 20 not in caught.value.message


def test_public_names() -> None:
    assert sorted(loadwarden.server.mesh.__all__) == [
        "ADS_SERVICE",
        "AdsServer",
        "EndpointView",
        "PoolView",
        "RLS_SERVICE",
        "RateLimitService",
        "Refused",
        "RlsDescriptor",
        "RlsDomain",
        "RlsRateLimit",
        "RlsSettings",
        "XdsSettings",
        "check_bearer",
        "new_xds_token",
        "parse_rls",
        "pool_view",
        "protoset",
    ]


def _sample() -> LoadSample:
    return LoadSample(cpu_percent=10.0, memory_percent=10.0, active_requests=0, mean_latency_ms=1.0, error_rate=0.0)
