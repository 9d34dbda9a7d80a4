"""Seed 001's optimized ML chatbot API as a small app on the loadwarden SDK: a request
queue with priorities, a results cache, a model pool, a health endpoint and a Celery task.

What the seed built by hand, and what stands in for it here:

- ``RequestQueue(max_concurrent=3).acquire_slot(timeout=30)``: a pool of the
  loadwarden service (``max_concurrency = 3``, ``max_wait_ms = 30000``), shared by
  every process (the API and the Celery workers); waiting requests are served
  highest priority first.
- ``MLResultCache`` (``KEY_PREFIX = "ml_results"``, ``TIMEOUT = 7200``):
  ``loadwarden.sdk.cache``; keys are built from the arguments, whitespace
  normalised, so ``"hello  world "`` and ``"hello world"`` share a result.
  In process by default; ``--redis URL`` shares it between processes.
- ``MLModelPool(max_models=2)``: ``AsyncResourcePool(max_resident=2)``, LRU
  eviction, each model loaded once per residency however many requests want it.
- ``curl http://localhost:8000/api/health/``: the SDK's health document (control
  plane, breakers, fallback, and the app's own checks: here the model pool).
- Celery's "automatic retry on failures": a task with ``AdmittedTask``, which takes
  a slot of the same pool per run and retries when denied with the service's
  retry-after; an in-process worker on the in-memory broker here.

Run it against a local service (``./scripts/serve`` in another terminal):

    python examples/seed001_ml_app.py [--target 127.0.0.1:50051] [--requests 400] [--texts 40]
    python examples/seed001_ml_app.py --serve 8000     # then: curl http://127.0.0.1:8000/api/health/

It creates (or replaces) the ``ml`` pool, sends a repeated workload (``--requests``
requests over ``--texts`` texts, each re-spelled with extra spaces, for three
models, three priorities) through the app, then runs one Celery task, and prints
the cache's hit rate against the seed's 80 % target, the model pool's loads and
evictions, the queue waits by priority, and the health document. Needs httpx (the
in-process HTTP client), celery, and uvicorn for ``--serve``: the dev extra has them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections import defaultdict
from typing import Any

import httpx

from loadwarden.sdk import AsyncClient, AsyncResourcePool, Client, PoolConfig
from loadwarden.sdk.cache import AsyncCache, AsyncRedisStore, cached
from loadwarden.sdk.integrations.asgi import HealthApp, Receive, Scope, Send
from loadwarden.sdk.integrations.health import AsyncHealth

POOL = "ml"
MAX_CONCURRENT_ML_OPERATIONS = 3
QUEUE_TIMEOUT_S = 30.0
CACHE_KEY_PREFIX = "ml_results"
CACHE_TIMEOUT_S = 7200.0
CACHE_HIT_RATE_TARGET = 0.80
MAX_MODELS = 2
MODELS = ("sentiment", "intent", "toxicity")
PRIORITIES = (0, 5, 9)
HEALTH_PATH = "/api/health/"


class Model:
    """A stand-in for a 500 MB model: loading takes `load_s`, each inference `work_s`."""

    def __init__(self, name: str, work_s: float) -> None:
        self.name = name
        self.work_s = work_s

    async def classify(self, text: str) -> dict[str, Any]:
        await asyncio.sleep(self.work_s)
        score = (sum(map(ord, text)) % 100) / 100.0
        return {"model": self.name, "label": "positive" if score >= 0.5 else "negative", "score": score}


class MLApp:
    """The API: ``POST /api/classify`` and ``GET /api/health/``, as a plain ASGI app."""

    def __init__(self, client: AsyncClient, cache: AsyncCache, *, load_s: float, work_s: float) -> None:
        self.client = client
        self.load_s = load_s
        self.work_s = work_s
        self.loads: dict[str, int] = defaultdict(int)
        self.resident_now = 0
        self.resident_max = 0
        self.waits: dict[int, list[float]] = defaultdict(list)
        self.models = AsyncResourcePool(self._load, self._unload, max_resident=MAX_MODELS, name="ml-models")
        self.health = AsyncHealth(client, pool=POOL)
        self.health.add_check("model_pool", self._models_ok, critical=False)
        self._health_app = HealthApp(self.health)
        self.classify = cached(cache, ttl_s=CACHE_TIMEOUT_S, ignore=("priority",))(self._classify)

    async def _load(self, name: str) -> Model:
        await asyncio.sleep(self.load_s)  # reading the weights
        self.loads[name] += 1
        self.resident_now += 1
        self.resident_max = max(self.resident_max, self.resident_now)
        return Model(name, self.work_s)

    async def _unload(self, model: Model) -> None:
        self.resident_now -= 1

    def _models_ok(self) -> str:
        stats = self.models.stats()
        return f"{len(self.models.resident())} of {MAX_MODELS} models resident, {stats.loads} loads"

    async def _classify(self, text: str, model: str, priority: int = 0) -> dict[str, Any]:
        """One inference: a slot of the shared pool (queued by priority), then a model."""
        asked = time.perf_counter()
        async with self.client.slot(POOL, wait_s=QUEUE_TIMEOUT_S, priority=priority), self.models.use(model) as ml:
            self.waits[priority].append(time.perf_counter() - asked)
            return await ml.classify(text)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # under uvicorn (--serve)
            await receive()  # lifespan.startup
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            await self.models.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == HEALTH_PATH:
            await self._health_app(scope, receive, send)
            return
        if scope["path"] != "/api/classify" or scope["method"] != "POST":
            await _json(send, 404, {"error": "not_found"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            request = json.loads(body)
            text, model, priority = (
                str(request["text"]),
                str(request.get("model", MODELS[0])),
                int(request.get("priority", 0)),
            )
        except (ValueError, KeyError, TypeError):
            await _json(send, 400, {"error": "invalid_argument", "message": 'send {"text": ..., "model": ...}'})
            return
        if model not in MODELS:
            await _json(
                send, 400, {"error": "invalid_argument", "message": f"model must be one of {', '.join(MODELS)}"}
            )
            return
        await _json(send, 200, await self.classify(text, model, priority=priority))


async def _json(send: Send, status: int, document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def configure_pool(target: str) -> None:
    """Creates or replaces the `ml` pool: the seed's 3 concurrent ML operations, 30 s queue timeout."""
    with Client(target, timeout_s=5.0) as client:
        client.admin.configure_pool(
            PoolConfig(POOL, max_concurrency=MAX_CONCURRENT_ML_OPERATIONS, max_wait_ms=int(QUEUE_TIMEOUT_S * 1000))
        )


def workload(requests: int, texts: int, seed: int = 1) -> list[dict[str, Any]]:
    """A repeated workload: `requests` requests over `texts` texts, each re-spelled with spaces.

    Each text goes to one model, most to the first: 60 % sentiment, 30 % intent, 10 % toxicity.
    """
    rng = random.Random(seed)
    phrases = [(f"message {i} about the order status", rng.choices(MODELS, (6, 3, 1))[0]) for i in range(texts)]
    out = []
    for n in range(requests):
        text, model = rng.choice(phrases)
        spelled = (" " * rng.randint(1, 3)).join(text.split()) + " " * rng.randint(0, 2)
        out.append({"text": spelled, "model": model, "priority": PRIORITIES[n % len(PRIORITIES)]})
    return out


def run_celery_task(target: str, text: str) -> str:
    """One Celery task through `AdmittedTask`, on an in-process worker and the in-memory broker."""
    from celery import Celery  # type: ignore[import-untyped]  # Celery ships no type hints
    from celery.contrib.testing.worker import start_worker  # type: ignore[import-untyped]  # the same

    from loadwarden.sdk.integrations.celery import AdmittedTask

    app = Celery("seed001", broker="memory://", backend="cache+memory://")
    app.conf.loadwarden_target = target

    @app.task(base=AdmittedTask, bind=True, loadwarden_pool=POOL, loadwarden_priority=0, max_retries=5, shared=False)
    def classify_later(self: AdmittedTask, text: str) -> dict[str, Any]:
        lease = self.loadwarden_lease  # the slot this run holds
        return {"text": " ".join(text.split()), "held_lease": lease is not None and bool(lease.lease_id)}

    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
        result = classify_later.delay(text).get(timeout=60)
    return json.dumps(result)


async def run(args: argparse.Namespace) -> None:
    async with AsyncClient(args.target, timeout_s=5.0) as client:
        store = AsyncRedisStore.from_url(args.redis) if args.redis else None
        cache = AsyncCache(store, key_prefix=CACHE_KEY_PREFIX, ttl_s=CACHE_TIMEOUT_S, name=CACHE_KEY_PREFIX)
        app = MLApp(client, cache, load_s=args.load_ms / 1000.0, work_s=args.work_ms / 1000.0)
        if args.serve:
            import uvicorn

            print(
                f"serving on http://127.0.0.1:{args.serve}{HEALTH_PATH} and POST /api/classify; Ctrl-C stops",
                flush=True,
            )
            await uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.serve, log_level="warning")).serve()
            return
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ml-app") as http:
            began = time.perf_counter()
            limit = asyncio.Semaphore(args.concurrency)

            async def send(request: dict[str, Any]) -> int:
                async with limit:
                    return (await http.post("/api/classify", json=request)).status_code

            codes = await asyncio.gather(*(send(r) for r in workload(args.requests, args.texts)))
            elapsed_s = time.perf_counter() - began
            health = await http.get(HEALTH_PATH)
            bad = await http.post("/api/classify", json={"text": "x", "model": "nope"})
        status = (await client.load_status(POOL)).pools[0]
        stats = cache.stats()
        models = app.models.stats()
        await app.models.close()
    print(f"requests: {len(codes)} in {elapsed_s:.2f} s, {codes.count(200)} answered 200")
    print(f"cache: {stats}")
    verdict = "met" if stats.hit_rate >= CACHE_HIT_RATE_TARGET else "NOT met"
    print(f"cache hit rate: {stats.hit_rate:.1%} (target {CACHE_HIT_RATE_TARGET:.0%}: {verdict})")
    print(f"models: {models.loads} loads, {models.evictions} evictions, ", end="")
    print(f"at most {app.resident_max} resident (limit {MAX_MODELS})")
    for priority in PRIORITIES:
        waits = app.waits[priority]
        if waits:
            median_ms = statistics.median(waits) * 1000
            print(f"priority {priority}: queue wait median {median_ms:.1f} ms over {len(waits)} inferences")
    print(f"health: {health.status_code} {health.text}")
    print(f"bad request: {bad.status_code} {bad.json()['message']}")
    print(f"active leases after: {status.active_leases}")
    print(f"celery task: {await asyncio.to_thread(run_celery_task, args.target, '  a   late  job ')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="loadwarden service address")
    parser.add_argument("--requests", type=int, default=400, help="requests of the repeated workload, count")
    parser.add_argument("--texts", type=int, default=40, help="distinct texts among them, count")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once, count")
    parser.add_argument("--load-ms", type=float, default=50.0, help="simulated model load time, milliseconds")
    parser.add_argument("--work-ms", type=float, default=20.0, help="simulated inference time, milliseconds")
    parser.add_argument("--redis", metavar="URL", help="keep the cache on Redis (shared by every process)")
    parser.add_argument("--serve", type=int, metavar="PORT", help="serve the app with uvicorn instead")
    args = parser.parse_args()
    configure_pool(args.target)
    print(f"pool {POOL!r}: at most {MAX_CONCURRENT_ML_OPERATIONS} concurrent ML operations, ", end="")
    print(f"{QUEUE_TIMEOUT_S:g} s queue timeout")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
