"""Seed 002 as a small reverse proxy: round robin, least connections and Q-learning, compared.

What the seed built by hand, and what stands in for it here:

- ``backend/server.py`` (FastAPI servers with a base delay and a ``/health``
  endpoint): `backends.Backend`, three aiohttp servers of unequal speed (4, 2 and 1
  at the seed's 50 ms base delay, two workers each: 160, 80 and 40 req/s), whose
  ``/health`` answers CPU %, active requests, average response time and
  healthy/degraded/unhealthy.
- ``load_balancer/`` (the proxy and its round robin and RL routers): `proxy.ReverseProxy`,
  an aiohttp app that asks loadwarden for each request (``AsyncClient.route``), forwards
  it, and logs ``request_id, strategy, server, latency, status``; the strategies are
  the service's own (``round_robin``, ``least_connections``, ``q_learning`` with the
  seed's parameters), one pool per strategy created through ``AdminService``.
- ``metrics/collector.py``: `collector.MetricsCollector`, polling every backend's
  ``/health`` each second and pushing it with ``ReportLoad``, which is what the
  Q-learning state is encoded from.
- ``traffic/generator.py``: `traffic.TrafficGenerator`, seeded Poisson arrivals at
  140 req/s (half the capacity; round robin still gives the slowest backend more
  than it can serve), the same arrivals for every strategy.
- ``evaluation/`` and ``visualization/``: `report`, per strategy mean, p50/p95/p99,
  standard deviation, success rate, throughput, requests per server and the
  coefficients of variation, naming the best strategy by p99 among those within
  one point of the best success rate; the plots with matplotlib.

Run it from the repository root (about 95 s: 25 s of traffic per strategy):

    python -m examples.seed002_proxy [--out eval-out/seed002-proxy] [--quick] [--target 127.0.0.1:50051]

Without ``--target`` it starts its own ``loadwarden serve`` on a free port of
127.0.0.1 (stopped at the end, even when the example is killed); with it, it uses
that service and creates (or replaces) the pools ``seed002-round_robin``,
``seed002-least_connections`` and ``seed002-q_learning`` there. The backends, the
proxy and the traffic run in this process, each server on its own port of
127.0.0.1. It writes ``report.md``, ``report.json``, ``requests.csv`` (one row per
request), ``server_metrics.csv`` (the collector's samples) and six PNG plots
(latency over time, throughput, requests per server, the learning curve, the
latency histogram and a summary) into ``--out``, and prints the report.
``--quick`` runs 5 s per strategy. Needs aiohttp, numpy and matplotlib (the dev
and eval extras).
"""
