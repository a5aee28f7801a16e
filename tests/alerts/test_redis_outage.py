"""Redis stops and comes back in the middle of a stream: nothing is lost, nothing doubles.

Uses its own redis-server on a free port (never the shared one), with an
append-only file so its data survives the restart, like a production Redis.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis as redis_lib
from alert_helpers import LINE, defect_run, publish, result

from alerts.service import AlertService
from alerts.store import RedisAlertStore, connect


class OwnRedis:
    def __init__(self, home: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.home = home
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.home), "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis_lib.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis_lib.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path):
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def wait_for(check, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def healthz(service: AlertService) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/healthz", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def last_seq(store: RedisAlertStore) -> int:
    try:
        cams = store.cameras(LINE)
    except redis_lib.RedisError:
        return -1
    return cams[0].last_seq if cams else -1


def test_service_waits_for_redis_and_loses_nothing(alert_config, own_redis):
    cfg = alert_config(redis={"url": own_redis.url})
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    clean = [result(seq) for seq in range(10)]
    rest = defect_run(first=10, frames=8)  # scratched 13..20
    publish(cfg, clean)
    with AlertService(cfg, "t1") as service:
        stop = threading.Event()
        thread = threading.Thread(target=service.run, args=(stop,))
        thread.start()
        assert wait_for(lambda: last_seq(store) == 9)

        own_redis.stop()
        publish(cfg, rest)
        assert wait_for(lambda: not service.healthy, 10)
        assert healthz(service) == 503
        time.sleep(1.0)  # the service keeps retrying, and holds its offsets meanwhile

        own_redis.start()
        assert wait_for(lambda: last_seq(store) == rest[-1].seq)
        assert service.healthy and healthz(service) == 200
        assert service.metrics.redis_retries._value.get() > 0
        stop.set()
        thread.join(timeout=15)
    alerts = store.list_alerts(LINE)
    assert [(a.first_seq, a.camera_id) for a in alerts] == [(13, "cam-1")]
    assert len(store.events(LINE)) == 1


def test_service_stopped_while_redis_is_down_leaves_the_results_for_the_next_one(alert_config, own_redis):
    cfg = alert_config(redis={"url": own_redis.url})
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    results = defect_run(first=0, frames=6)  # scratched 3..8; 3 of 5 at seq 5
    publish(cfg, results[:5])  # seq 0..4: the defect is in progress, no alert yet
    with AlertService(cfg, "first") as service:
        stop = threading.Event()
        thread = threading.Thread(target=service.run, args=(stop,))
        thread.start()
        assert wait_for(lambda: last_seq(store) == 4)
        own_redis.stop()
        publish(cfg, results[5:])
        assert wait_for(lambda: not service.healthy, 10)
        stop.set()  # SIGTERM while Redis is away: exit without committing what is not stored
        thread.join(timeout=15)
        assert not thread.is_alive()

    own_redis.start()
    # the in-progress defect (2 frames seen) survived in Redis; the new instance completes it
    assert len(json.loads(store.redis.hget(store.debounce_key(LINE, "cam-1"), "state"))["questions"]["scratch"]["window"]) == 5
    with AlertService(cfg, "second") as service:
        stop = threading.Event()
        thread = threading.Thread(target=service.run, args=(stop,))
        thread.start()
        assert wait_for(lambda: last_seq(store) == results[-1].seq)
        stop.set()
        thread.join(timeout=15)
    alerts = store.list_alerts(LINE)
    assert [a.first_seq for a in alerts] == [3]
