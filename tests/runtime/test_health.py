"""The one health/metrics HTTP server that the worker, the alert service and ingest share."""

from __future__ import annotations

import socket

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from runtime.health import HealthServer, Reply


def test_it_serves_metrics_its_checks_and_404_for_anything_else() -> None:
    registry = CollectorRegistry()
    Counter("patchsight_test_things", "Things counted.", registry=registry).inc(3)
    healthy = [True]
    checks = {"/healthz": lambda: Reply(200, b"ok\n") if healthy[0] else Reply(503, b"down\n", "text/plain")}
    server = HealthServer(0, registry, checks, host="127.0.0.1").start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        metrics = httpx.get(base + "/metrics")
        assert metrics.status_code == 200 and "patchsight_test_things_total 3.0" in metrics.text
        assert metrics.headers["content-type"].startswith("text/plain; version=")
        assert httpx.get(base + "/healthz?verbose=1").text == "ok\n"
        healthy[0] = False
        down = httpx.get(base + "/healthz")
        assert (down.status_code, down.text) == (503, "down\n")
        assert httpx.get(base + "/readyz").status_code == 404
    finally:
        server.stop()


def test_a_port_in_use_fails_in_the_constructor() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            HealthServer(taken.getsockname()[1], CollectorRegistry(), host="127.0.0.1")


def test_a_server_never_started_stops_at_once() -> None:
    HealthServer(0, CollectorRegistry(), host="127.0.0.1").stop()
