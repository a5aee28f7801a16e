"""`make demo` stops the Kafka broker and Redis server it started, and only those."""

from __future__ import annotations

import pytest

from patchsight import demo, infra


@pytest.fixture
def stopped(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(infra, "kafka_down", lambda: calls.append("kafka") or True)
    monkeypatch.setattr(infra, "redis_down", lambda: calls.append("redis") or True)
    return calls


def test_servers_the_demo_started_are_stopped(stopped, capsys) -> None:
    demo._leave_servers([infra.ServiceStatus("kafka", "running", "127.0.0.1:9092", 11, started=True),
                         infra.ServiceStatus("redis", "running", "redis://127.0.0.1:6379/0", 12, started=True)])
    assert stopped == ["kafka", "redis"]
    assert "stopped the servers the demo started: kafka, redis" in capsys.readouterr().out


def test_servers_running_before_the_demo_keep_running_and_it_says_so(stopped, capsys) -> None:
    demo._leave_servers([infra.ServiceStatus("kafka", "external", "127.0.0.1:9092"),
                         infra.ServiceStatus("redis", "running", "redis://127.0.0.1:6379/0", 12, started=True)])
    assert stopped == ["redis"]
    out = " ".join(capsys.readouterr().out.split())
    assert "left running, as they were before the demo: kafka at 127.0.0.1:9092" in out
    demo._leave_servers([infra.ServiceStatus("kafka", "running", "127.0.0.1:9092", 11)])  # an earlier `infra up`
    assert stopped == ["redis"] and "`patchsight infra down` stops" in " ".join(capsys.readouterr().out.split())


def test_a_server_that_failed_to_start_leaves_the_one_started_before_it_stopped(stopped, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(infra, "kafka_up", lambda _: infra.ServiceStatus("kafka", "running", "k", 1, started=True))

    def no_redis(_):  # type: ignore[no-untyped-def]
        raise infra.InfraError("redis-server is not installed")

    monkeypatch.setattr(infra, "redis_up", no_redis)
    with pytest.raises(infra.InfraError):
        demo.run_demo(demo.DemoOptions(run_dir=tmp_path))
    assert stopped == ["kafka"]
