"""What replicas tell each other about routing, so that each decides with every replica's view.

Nothing here is on a SelectServer's path: a selection reads only this process's
memory. What moves between replicas, on the service's events channel and in two
hashes:

* **Load reports** (``L``): a ReportLoad taken by one replica is applied by all.
* **Ejections** (``J``): a server one replica ejects is ejected by all, as long.
* **Outcomes** (``O``): an outcome reported to a replica that did not make the
  decision goes to the one that did (the decision id names it), which settles it
  as if reported there.
* **In flight** (``P inflight``): every ``exchange_interval_ms`` each replica writes its
  per-server in-flight counts and reads the others'; strategies weigh the sum. The same
  entry carries each pool's request counter, so every replica's ``requests_total`` (and
  the capacity planner reading it) counts the requests of all of them.
* **Batch sizing**: one replica sizes each operation (``P batch-owner:<op>``, a key with
  a TTL it renews every ``ELECT_S``); it announces each answer (``Z``), the others answer
  the same and send it their ReportBatch entries (``R``). A host-sourced operation
  follows the owner's host load. With the owner silent for ``ANSWER_FRESH_S`` a replica
  decides on its own until another owner is elected.
* **Learned state** (``P learned:<pool>``): every ``merge_interval_ms`` each replica writes
  its learning strategies' snapshots with the updates learned since the last
  merge, and takes the weighted average of every fresh one (``merge_snapshots``).
  Between merges each replica learns on its own decisions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Sequence
from typing import Any

from loadwarden.policy import Adjustment, BatchAnswer, BatchReportIn, LoadReportIn, LoadSample, Operation, OutcomeReport
from loadwarden.policy.strategies import merge_snapshots

from ..engine._core import DecisionCore
from ..engine._orca_limits import MAX_NAMED_METRICS
from ._redis import SharedRedis, decode

log = logging.getLogger("loadwarden.server")

# An in-flight or learned entry older than this many intervals is a dead replica's: ignored.
STALE_INTERVALS = 4
# How often operations' sizing owners are elected or renewed, and how long an owner that
# stopped renewing keeps it; a non-owner trusts the owner's last answer this long.
ELECT_S = 1.0
OWNER_TTL_MS = 3_000
ANSWER_FRESH_S = 3.0
# Outcomes or reports in one event at most (a larger batch goes as several).
EVENT_BATCH = 500


class Peers:
    """This replica's side of the exchange (the core's PeerLink); ``attach`` it to the core."""

    def __init__(self, redis: SharedRedis) -> None:
        self._redis = redis
        self._replica = redis.replica
        self._exchange_s = redis.settings.exchange_interval_ms / 1000.0
        self._merge_s = redis.settings.merge_interval_ms / 1000.0
        self._core: DecisionCore | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._merged_updates: dict[str, int] = {}  # pool -> its strategy's updates at the last merge
        self._batch_owners: dict[str, str] = {}  # operation -> the replica that sizes it
        self._answers: dict[str, tuple[BatchAnswer, float]] = {}  # operation -> the owner's answer, when
        self._published: dict[str, tuple[BatchAnswer, float]] = {}  # operation -> what this owner announced
        self.forwarded_total = 0
        redis.on_event(self._event)

    def attach(self, core: DecisionCore) -> None:
        self._core = core

    # --- PeerLink ------------------------------------------------------------------

    def loads_reported(self, reports: Sequence[LoadReportIn]) -> None:
        for start in range(0, len(reports), EVENT_BATCH):
            body = [[r.pool, r.server_id, *_sample(r.sample)] for r in reports[start : start + EVENT_BATCH]]
            self._publish(f"L {self._replica} {json.dumps(body, separators=(',', ':'))}")

    def ejected(self, pool: str, server: str, duration_s: float) -> None:
        self._publish(f"J {self._replica} {json.dumps([pool, server, duration_s], separators=(',', ':'))}")

    def elsewhere(self, outcomes: Sequence[OutcomeReport], owner: str) -> set[str]:
        core = self._core
        assert core is not None
        by_replica: dict[str, list[OutcomeReport]] = {}
        for outcome in outcomes:
            replica = outcome.decision_id.split("-", 1)[0]
            if replica != self._replica and core.ids.signed(outcome.decision_id, owner):
                by_replica.setdefault(replica, []).append(outcome)
        sent: set[str] = set()
        for replica, batch in by_replica.items():
            for start in range(0, len(batch), EVENT_BATCH):
                part = batch[start : start + EVENT_BATCH]
                body = {"o": owner, "r": [[o.decision_id, o.success, o.latency_ms, o.status] for o in part]}
                self._publish(f"O {replica} {json.dumps(body, separators=(',', ':'))}")
                sent.update(o.decision_id for o in part)
        self.forwarded_total += len(sent)
        return sent

    def batch_answer(self, operation: Operation) -> BatchAnswer | None:
        name = operation.settings.name
        owner = self._batch_owners.get(name)
        if owner is None or owner == self._replica:
            return None
        cached = self._answers.get(name)
        core = self._core
        assert core is not None
        if cached is None or core.clock.monotonic() - cached[1] > ANSWER_FRESH_S:
            return None  # the owner is silent: decide here meanwhile
        return cached[0]

    def batch_decided(self, operation: Operation, answer: BatchAnswer) -> None:
        name = operation.settings.name
        if self._batch_owners.get(name) != self._replica:
            return
        previous = self._published.get(name)
        core = self._core
        assert core is not None
        now = core.clock.monotonic()
        if previous is not None and previous[0] == answer and now - previous[1] < ANSWER_FRESH_S / 3:
            return
        self._published[name] = (answer, now)
        # With the history, so every replica's GetLoadStatus shows the owner's adjustments.
        history = [
            [e.at_wall, e.previous_size, e.new_size, e.reason, e.load_score, e.forecast] for e in operation.events
        ]
        body = [name, answer.size, answer.load_score, answer.level, answer.reason, answer.fallback]
        body += [operation.adjustments_total, operation.last_load, history, operation.forecast_adjustments_total]
        self._publish(f"Z {self._replica} {json.dumps(body, separators=(',', ':'))}")

    def batches_elsewhere(self, reports: Sequence[BatchReportIn]) -> list[BatchReportIn]:
        here: list[BatchReportIn] = []
        away: dict[str, list[list[Any]]] = {}
        for report in reports:
            owner = self._batch_owners.get(report.operation)
            if owner is None or owner == self._replica:
                here.append(report)
            else:
                away.setdefault(owner, []).append(
                    [report.operation, report.batch_size, report.duration_ms, report.success]
                )
        for owner, batch in away.items():
            self._publish(f"R {owner} {json.dumps(batch, separators=(',', ':'))}")
        return here

    def batch_owner(self, operation: str) -> str | None:
        """The replica that sizes ``operation``, as this one last heard; None before an election."""
        return self._batch_owners.get(operation)

    async def elect_batch_owners(self) -> None:
        """Takes (or renews) the sizing of each operation nobody sizes; the owner decides once
        then, so the others have a fresh answer even when nobody asks the owner."""
        core = self._core
        assert core is not None
        for name in list(core.operations):
            key = self._redis.key(f"batch-owner:{name}")
            owner = decode(await self._redis.own(keys=[key], args=[self._replica, OWNER_TTL_MS]))
            self._batch_owners[name] = owner
            if owner == self._replica:
                self._published.pop(name, None)  # announce again: a replica may have joined
                core.batch_size(name)
        for name in [n for n in self._batch_owners if n not in core.operations]:
            del self._batch_owners[name]
            self._answers.pop(name, None)
            self._published.pop(name, None)

    # --- events --------------------------------------------------------------------

    def _event(self, message: str) -> None:
        kind, _, rest = message.partition(" ")
        if kind not in ("L", "J", "O", "Z", "R") or self._core is None:
            return
        sender, _, payload = rest.partition(" ")
        try:
            if kind == "L" and sender != self._replica:
                self._apply_loads(json.loads(payload))
            elif kind == "J" and sender != self._replica:
                pool_name, server_id, duration_s = json.loads(payload)
                pool = self._core.find_pool(str(pool_name))
                server = pool.servers.get(str(server_id)) if pool is not None else None
                if pool is not None and server is not None:
                    pool.eject_for(server, float(duration_s), self._core.clock.monotonic())
            elif kind == "Z" and sender != self._replica:
                name, size, load, level, reason, fallback, *history = json.loads(payload)
                answer = BatchAnswer(
                    int(size), None if load is None else float(load), str(level), str(reason), bool(fallback)
                )
                self._answers[str(name)] = (answer, self._core.clock.monotonic())
                operation = self._core.operations.get(str(name))
                if operation is not None:  # so a replica that takes over goes on from the owner's size
                    operation.size, operation.last_reason, operation.fallback = (
                        answer.size,
                        answer.reason,
                        answer.fallback,
                    )
                    if len(history) in (3, 4):  # the owner's adjustments (an older replica sends none)
                        total, last_load, events = history[:3]
                        operation.adjustments_total, operation.last_load = int(total), float(last_load)
                        if len(history) == 4:  # and how many were made ahead of a forecast
                            operation.forecast_adjustments_total = int(history[3])
                        operation.events.clear()
                        operation.events.extend(
                            Adjustment(float(at), int(old), int(new), str(why), float(score), bool(ahead and ahead[0]))
                            for at, old, new, why, score, *ahead in events
                        )
            elif kind == "R" and sender == self._replica:  # addressed to this replica
                reports = [BatchReportIn(str(op), int(n), float(ms), bool(ok)) for op, n, ms, ok in json.loads(payload)]
                self._core.report_batches([r for r in reports if r.operation in self._core.operations])
            elif kind == "O" and sender == self._replica:  # addressed to this replica
                body = json.loads(payload)
                outcomes = [OutcomeReport(str(d), bool(ok), float(ms), str(st)) for d, ok, ms, st in body["r"]]
                self._core.report_outcomes(outcomes, str(body["o"]))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignored a malformed %s event (%s): %.200s", kind, exc, message)
        except Exception as exc:  # noqa: BLE001 - NotFound and friends: a peer's view differs for a moment
            log.debug("a %s event did not apply here: %s", kind, exc)

    def _apply_loads(self, body: list[Any]) -> None:
        core = self._core
        assert core is not None
        reports = []
        for pool, server, cpu, memory, active, latency, errors, *orca in body:
            found = core.find_pool(str(pool))
            if found is not None and str(server) in found.servers:  # a report for what this replica lacks: skipped
                sample = LoadSample(float(cpu), float(memory), int(active), float(latency), float(errors))
                if orca:  # ORCA's fields (a replica before them sends seven)
                    application, rps, eps, named = orca
                    metrics = {str(k): float(v) for k, v in dict(named).items()}
                    if len(metrics) > MAX_NAMED_METRICS:
                        raise ValueError(f"{len(metrics)} named metrics, at most {MAX_NAMED_METRICS}")
                    sample = dataclasses.replace(
                        sample,
                        application_utilization=float(application),
                        requests_per_second=float(rps),
                        errors_per_second=float(eps),
                        named_metrics=metrics,
                    )
                reports.append(LoadReportIn(str(pool), str(server), sample))
        if reports:
            core.report_load(reports, from_peer=True)

    def _publish(self, message: str) -> None:
        task = asyncio.get_running_loop().create_task(self._send(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, message: str) -> None:
        try:
            await self._redis.client.publish(self._redis.events_channel, message)
        except Exception as exc:  # noqa: BLE001 - a lost event: the next exchange or merge catches up
            log.debug("event not sent (%s): %.80s", exc, message)

    # --- periodic exchanges ----------------------------------------------------------

    async def run(self) -> None:
        """Exchanges in-flight counts and merges learned state, each at its interval."""
        since_merge = 0.0
        since_election = ELECT_S
        while True:
            await asyncio.sleep(self._exchange_s)
            since_merge += self._exchange_s
            since_election += self._exchange_s
            try:
                await self.exchange_in_flight()
                if since_election >= ELECT_S:
                    since_election = 0.0
                    await self.elect_batch_owners()
                if since_merge >= self._merge_s:
                    since_merge = 0.0
                    await self.merge_learned()
            except Exception as exc:  # noqa: BLE001 - Redis away: the next round tries again
                log.debug("peer exchange skipped: %s", exc)

    async def exchange_in_flight(self) -> None:
        core = self._core
        assert core is not None
        # This replica's selections and what its local clients reported to it.
        mine = {
            pool.name: counts
            for pool in core.pools()
            if (counts := {s.id: n for s in pool.servers.values() if (n := s.in_flight + s.client_in_flight)})
        }
        requests = {pool.name: pool.requests_total for pool in core.pools() if pool.requests_total}
        now = core.clock.wall()
        key = self._redis.key("inflight")
        entry = {"at": now, "pools": mine, "requests": requests}
        async with self._redis.client.pipeline(transaction=False) as pipe:
            pipe.hset(key, self._replica, json.dumps(entry, separators=(",", ":")))
            pipe.hgetall(key)
            _, entries = await pipe.execute()
        totals: dict[tuple[str, str], int] = {}
        peer_requests: dict[str, int] = {}
        for replica, raw in entries.items():
            if decode(replica) == self._replica:
                continue
            entry = json.loads(raw)
            if now - float(entry.get("at", 0)) > STALE_INTERVALS * self._exchange_s:
                await self._redis.client.hdel(key, replica)  # a dead replica's counts
                continue
            for pool_name, servers in entry.get("pools", {}).items():
                for server_id, count in servers.items():
                    totals[(pool_name, server_id)] = totals.get((pool_name, server_id), 0) + int(count)
            for pool_name, count in entry.get("requests", {}).items():
                peer_requests[pool_name] = peer_requests.get(pool_name, 0) + int(count)
        for pool in core.pools():
            pool.peer_requests_total = peer_requests.get(pool.name, 0)
            changed = False
            for server in pool.servers.values():
                count = totals.get((pool.name, server.id), 0)
                if count != server.peer_in_flight:
                    server.peer_in_flight = count
                    changed = True
            if changed:  # strategies that index costs (least_connections) rebuild on a new list
                pool.invalidate()

    async def merge_learned(self) -> None:
        """Publishes each learning pool's snapshot and takes the average of every replica's."""
        core = self._core
        assert core is not None
        now = core.clock.wall()
        for name in [n for n in self._merged_updates if core.find_pool(n) is None]:
            del self._merged_updates[name]  # a deleted pool's bookkeeping goes with it
        for pool in core.pools():
            snapshot = pool.strategy.snapshot()
            if snapshot is None:
                continue
            updates = int(snapshot.get("updates", 0))
            weight = max(0, updates - self._merged_updates.get(pool.name, 0))
            key = self._redis.key(f"learned:{pool.name}")
            entry = {"at": now, "strategy": pool.settings.strategy, "weight": weight, "state": snapshot}
            async with self._redis.client.pipeline(transaction=False) as pipe:
                pipe.hset(key, self._replica, json.dumps(entry, separators=(",", ":")))
                pipe.hgetall(key)
                _, entries = await pipe.execute()
            fresh = []
            for replica, raw in entries.items():
                other = json.loads(raw)
                if now - float(other.get("at", 0)) > STALE_INTERVALS * self._merge_s:
                    await self._redis.client.hdel(key, replica)
                elif other.get("strategy") == pool.settings.strategy:
                    fresh.append((other["state"], float(other.get("weight", 0))))
            if len(fresh) > 1:
                try:
                    pool.strategy.restore(merge_snapshots(fresh))
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("pool %s: learned state of the replicas not merged: %s", pool.name, exc)
            merged = pool.strategy.snapshot()
            self._merged_updates[pool.name] = int(merged.get("updates", 0)) if merged else updates

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def _sample(sample: LoadSample) -> list[Any]:
    return [
        sample.cpu_percent,
        sample.memory_percent,
        sample.active_requests,
        sample.mean_latency_ms,
        sample.error_rate,
        sample.application_utilization,
        sample.requests_per_second,
        sample.errors_per_second,
        dict(sample.named_metrics),
    ]
