"""deploy/: the alerting rules and the Grafana dashboard, checked with Prometheus's own tools.

``promtool check rules`` validates the rules; ``promtool check metrics`` lints what
``/metrics`` serves against Prometheus's naming conventions; every query of the rules
and of the dashboard parses (promtool, as recording rules) and names only series a
service (or the SDK) exports; and a real Prometheus scraping a real service fires the
ejection and no-eligible-server alerts when those happen. Prometheus and promtool
come from Debian's ``prometheus`` package, which ./scripts/test installs.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loadwarden.policy import OperationSettings, OutlierSettings
from loadwarden.server import PoolSettings, PoolSpec, RunningService, ServerSpec
from loadwarden.server.app._config import AdminSettings, MonitorSettings
from loadwarden.v1 import admin_pb2 as admin
from loadwarden.v1 import admin_pb2_grpc as admin_grpc
from loadwarden.v1 import common_pb2 as common
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ._harness import REPO, free_loopback_port

pytestmark = pytest.mark.e2e

RULES = REPO / "deploy" / "prometheus" / "loadwarden-alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "loadwarden.json"
TOKEN = "prometheus-test-token-0123456789"
# Grafana's variables, as a query would see them once chosen.
VARIABLES = {"$__rate_interval": "1m", "$job": ".+", "$pool": ".+"}
_SERIES = re.compile(r"\b((?:loadwarden|process|python)_[a-z_]+)\b")


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"required tool {name!r} not found; ./scripts/test installs Debian's prometheus", pytrace=False)
    return found


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    # A variable's label_values(SELECTOR, LABEL) is Grafana's: its SELECTOR is PromQL.
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.+), *\w+\)", variable["query"]["query"])
            assert found, variable["query"]
            queries.append(found.group(1))
    return queries


def rule_queries() -> list[str]:
    # The rules file is YAML; promtool parses it, and its exprs are found by their key.
    text = RULES.read_text(encoding="utf-8")
    blocks = re.findall(r"expr: \|\n((?:          .*\n)+)|expr: (.+)\n", text)
    return [(block or line).strip() for block, line in blocks]


def chosen(query: str) -> str:
    for variable, value in VARIABLES.items():
        query = query.replace(variable, value)
    return query


@pytest.fixture
async def service(start: Any) -> RunningService:
    outliers = OutlierSettings(consecutive_failures=2)
    return await start(
        PoolSpec(
            PoolSettings(name="api", outlier=outliers),
            (ServerSpec("a", "127.0.0.1:9001"), ServerSpec("b", "127.0.0.1:9002")),
        ),
        PoolSpec(PoolSettings(name="jobs", max_concurrency=2), (ServerSpec("w", "127.0.0.1:9003"),)),
        operations=(OperationSettings(name="import", default_batch_size=10),),
        admin=AdminSettings(listen="127.0.0.1:0", token=TOKEN),
        monitor=MonitorSettings(enabled=False),
    )


async def scrape(running: RunningService) -> str:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{running.admin_port}/metrics"
        async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200
            return await response.text()


async def workload(running: RunningService, channel_to: Any) -> None:
    """Every kind of series: decisions, outcomes (a's fail: ejected), load, a batch size, a
    grant, a denial."""
    stub = pb_grpc.DecisionServiceStub(channel_to(running))
    load = common.LoadReport(pool="api", server_id="b", cpu_percent=40.0, memory_percent=50.0)
    await stub.ReportLoad(pb.ReportLoadRequest(reports=[load]))
    await stub.GetBatchSize(pb.GetBatchSizeRequest(operation="import"))
    picks = [await stub.SelectServer(pb.SelectServerRequest(pool="api")) for _ in range(4)]
    outcomes = [pb.Outcome(decision_id=p.decision_id, success=p.server_id != "a", latency_ms=3.0) for p in picks]
    await stub.ReportOutcome(pb.ReportOutcomeRequest(outcomes=outcomes))
    leases = [await stub.AcquireSlot(pb.AcquireSlotRequest(pool="jobs")) for _ in range(3)]
    assert [lease.granted for lease in leases] == [True, True, False]


def test_promtool_checks_the_alerting_rules() -> None:
    done = promtool("check", "rules", str(RULES))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout


async def test_promtool_finds_nothing_to_lint_in_the_services_metrics(service: RunningService, channel_to: Any) -> None:
    await workload(service, channel_to)
    done = promtool("check", "metrics", stdin=await scrape(service))

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == "", done.stdout + done.stderr


async def test_every_query_parses_and_names_series_that_exist(
    service: RunningService, channel_to: Any, tmp_path: Path
) -> None:
    queries = dashboard_queries() + rule_queries()
    assert len(queries) >= 20, queries
    # promtool parses PromQL in rule files: each query as a recording rule.
    rules = {
        "groups": [
            {"name": "queries", "rules": [{"record": f"q:{i}", "expr": chosen(q)} for i, q in enumerate(queries)]}
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(json.dumps(rules), encoding="utf-8")  # JSON is YAML
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    await workload(service, channel_to)
    served = {m.group(1) for m in _SERIES.finditer(await scrape(service))}
    sdk_source = (REPO / "sdk" / "loadwarden" / "sdk" / "_metrics.py").read_text(encoding="utf-8")
    sdk = {name.replace(".", "_") for name in re.findall(r'"(loadwarden\.sdk\.[a-z_.]+)"', sdk_source)}
    named = {m.group(1) for q in queries for m in _SERIES.finditer(q)}
    assert named, queries
    assert not named - served - sdk, f"queries name series nobody exports: {sorted(named - served - sdk)}"


def _prometheus_config(admin_port: int, rules: Path) -> str:
    return json.dumps(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": "loadwarden",
                    "authorization": {"type": "Bearer", "credentials": TOKEN},
                    "static_configs": [{"targets": [f"127.0.0.1:{admin_port}"]}],
                }
            ],
        }
    )


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read())


async def test_a_real_prometheus_fires_the_ejection_and_no_eligible_server_alerts(
    service: RunningService, channel_to: Any, tmp_path: Path
) -> None:
    # The shipped rules with their `for` waits cut, so an alert fires at its first true evaluation.
    rules = tmp_path / "alerts.yml"
    rules.write_text(re.sub(r"for: \d+m", "for: 0s", RULES.read_text(encoding="utf-8")), encoding="utf-8")
    config = tmp_path / "prometheus.yml"
    assert service.admin_port is not None
    config.write_text(_prometheus_config(service.admin_port, rules), encoding="utf-8")
    port = free_loopback_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await workload(service, channel_to)  # a is ejected
        drain = admin.DrainServerRequest(pool="jobs", server_id="w", state=admin.DRAIN_STATE_DRAINING)
        admin_stub = admin_grpc.AdminServiceStub(channel_to(service))
        await admin_stub.DrainServer(drain, metadata=(("authorization", f"Bearer {TOKEN}"),))  # jobs: none eligible

        firing: dict[str, dict[str, str]] = {}
        deadline = asyncio.get_running_loop().time() + 60
        while not {"LoadwardenBackendEjected", "LoadwardenPoolWithoutEligibleServers"} <= set(firing):
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert asyncio.get_running_loop().time() < deadline, f"alerts firing: {firing}"
            try:
                alerts = (await asyncio.to_thread(_get, f"{base}/api/v1/alerts"))["data"]["alerts"]
            except OSError:  # not listening yet
                alerts = []
            firing = {a["labels"]["alertname"]: a["labels"] for a in alerts if a["state"] == "firing"}
            await asyncio.sleep(0.2)
        assert firing["LoadwardenBackendEjected"]["pool"] == "api"
        assert firing["LoadwardenBackendEjected"]["server"] == "a"
        assert firing["LoadwardenPoolWithoutEligibleServers"]["pool"] == "jobs"
        assert "LoadwardenHighDenialRate" not in firing or firing["LoadwardenHighDenialRate"]["pool"] == "jobs"
        # What Prometheus scraped carries the service's build.
        build = await asyncio.to_thread(_get, f"{base}/api/v1/query?query=loadwarden_build_info")
        assert build["data"]["result"][0]["metric"]["job"] == "loadwarden"
    finally:
        process.terminate()
        process.wait(10)
