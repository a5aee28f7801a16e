"""The one HTTP endpoint of a service process: ``/metrics`` and its health checks.

The inference worker, the alert service and ``patchsight ingest`` each serve one:
``/metrics`` is the process's Prometheus registry in text format; every other path is a
check the service names (the worker's ``/healthz`` and ``/readyz``, the alert service's
``/healthz``), anything else is 404. Each service owns its ``CollectorRegistry`` rather than
the process-global one, so several services in one process (tests, benchmarks) never share
counters. docs/operations.md says what each endpoint answers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = TEXT


Check = Callable[[], Reply]


class HealthServer:
    """``/metrics`` from ``registry`` and one ``Check`` per other path, on a daemon thread.

    Binding happens in the constructor, so a port in use raises ``OSError`` before the
    service does anything else; port 0 picks a free one (``.port`` says which). ``host`` is the
    service's ``metrics_host`` setting (loopback unless Prometheus scrapes from elsewhere).
    """

    def __init__(
        self,
        port: int,
        registry: CollectorRegistry,
        checks: Mapping[str, Check] | None = None,
        *,
        host: str,
        name: str = "health-http",
    ) -> None:
        routes: dict[str, Check] = {"/metrics": lambda: Reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)}
        routes.update(checks or {})

        def handler_factory(*args, **kwargs):  # type: ignore[no-untyped-def]
            return _Handler(routes, *args, **kwargs)

        self._server = ThreadingHTTPServer((host, port), handler_factory)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)

    def start(self) -> "HealthServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, routes: dict[str, Check], *args, **kwargs):  # type: ignore[no-untyped-def]
        self.routes = routes
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        route = self.routes.get(self.path.split("?", 1)[0])
        reply = route() if route is not None else Reply(404, b"not found\n")
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: object) -> None:  # scrapes every few seconds: keep them out of logs
        pass
