"""The alert service against the real Kafka broker and Redis."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import urllib.request

import pytest
from alert_helpers import CAMERA, LINE, THUMB, defect_run, drain, publish, result
from kafka import KafkaConsumer
from kafka.errors import KafkaTimeoutError
from kafka.structs import TopicPartition

from alerts.service import AlertService, AlertServiceError
from alerts.store import RedisAlertStore, connect
from schemas.alert import AlertState, alert_id_for
from schemas.dead_letter import DeadLetter, record_size


def store_for(cfg) -> RedisAlertStore:
    return RedisAlertStore(connect(cfg.redis), cfg.alerts)


def test_defect_over_ten_frames_makes_exactly_one_alert(alert_config, redis_client):
    cfg = alert_config()
    store = store_for(cfg)
    live = redis_client.pubsub()
    live.subscribe(store.channel(LINE))
    results = defect_run(first=0, frames=10)  # 3 clean, 10 scratched (seq 3..12), 8 clean
    publish(cfg, results)
    with AlertService(cfg, "t1") as service:
        assert drain(service, len(results)) == len(results)

    alerts = store.list_alerts(LINE)
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.alert_id == alert_id_for(LINE, CAMERA, "scratch", 3)
    assert (alert.first_seq, alert.last_seq, alert.last_defect_seq) == (3, 5, 12)
    assert alert.state == AlertState.open and alert.defect_type == "scratch" and alert.model_id == "test-model"
    assert alert.score == 0.9 and alert.threshold == 0.6
    assert store.thumbnail(alert.alert_id) == THUMB
    ttl = redis_client.ttl(store.thumbnail_key(alert.alert_id))
    assert 0 < ttl <= cfg.alerts.thumbnail_ttl_s
    events = store.events(LINE)
    assert [(e.event, e.alert.alert_id) for e in events] == [("raised", alert.alert_id)]
    assert store.counts(LINE) == {"scratch": 1}
    # the live channel carried the same event, with its stream id
    messages = []
    deadline = time.monotonic() + 5
    while not messages and time.monotonic() < deadline:
        m = live.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if m:
            messages.append(json.loads(m["data"]))
    assert messages and messages[0]["id"] == events[0].id and messages[0]["alert"]["alert_id"] == alert.alert_id
    live.close()
    # per-camera health from the results consumed: 10 fps camera clock, last frame seen
    (camera,) = store.cameras(LINE)
    assert camera.camera_id == CAMERA and camera.last_seq == results[-1].seq
    assert 9.0 < camera.fps < 11.0 and camera.healthy()


def test_same_results_delivered_twice_make_no_duplicate(alert_config):
    cfg = alert_config()
    results = defect_run(first=0, frames=6)
    publish(cfg, results + results)  # at-least-once: a producer retry or a replay
    with AlertService(cfg, "t1") as service:
        drain(service, 2 * len(results))
        assert service.metrics.results.labels("redelivery")._value.get() == len(results)
    store = store_for(cfg)
    assert len(store.list_alerts(LINE)) == 1
    assert len(store.events(LINE)) == 1 and store.counts(LINE) == {"scratch": 1}


def test_restart_mid_defect_makes_no_second_alert(alert_config):
    cfg = alert_config()
    results = defect_run(first=0, frames=12)  # scratched seq 3..14
    publish(cfg, results[:9])  # the alert is raised at seq 5, the defect is still going at seq 8
    with AlertService(cfg, "first") as service:
        drain(service, 9)
    store = store_for(cfg)
    assert len(store.list_alerts(LINE)) == 1

    publish(cfg, results[9:])
    with AlertService(cfg, "second") as service:  # same group: continues from the committed offsets
        drain(service, len(results) - 9)
    # A different group replays the whole topic from the start: the stored debounce state
    # knows every one of those frames already.
    replay_cfg = cfg.model_copy(update={"alerts": cfg.alerts.model_copy(update={"group_id": cfg.alerts.group_id + "-replay"})})
    with AlertService(replay_cfg, "replay") as service:
        drain(service, len(results))
        assert service.metrics.results.labels("redelivery")._value.get() == len(results)
    alerts = store.list_alerts(LINE)
    assert len(alerts) == 1 and alerts[0].last_defect_seq == 14
    assert len(store.events(LINE)) == 1


def test_a_second_defect_after_it_cleared_is_a_second_alert(alert_config):
    cfg = alert_config()
    results = defect_run(first=0, frames=5) + defect_run(first=16, frames=5)
    publish(cfg, results)
    with AlertService(cfg, "t1") as service:
        drain(service, len(results))
    assert sorted(a.first_seq for a in store_for(cfg).list_alerts(LINE)) == [3, 19]


def test_two_instances_in_one_group_share_the_cameras(alert_config):
    cfg = alert_config()
    results = defect_run(first=0, frames=6, camera=CAMERA) + defect_run(first=0, frames=6, camera="cam-2")
    publish(cfg, results)
    store = store_for(cfg)
    with AlertService(cfg, "a") as a, AlertService(cfg, "b") as b:
        threads, stop = [], threading.Event()
        for service in (a, b):
            threads.append(threading.Thread(target=service.run, args=(stop,)))
            threads[-1].start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and {c.last_seq for c in store.cameras(LINE)} != {results[-1].seq}:
            time.sleep(0.1)
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    alerts = store.list_alerts(LINE)
    assert sorted(a.camera_id for a in alerts) == [CAMERA, "cam-2"]
    assert len(store.events(LINE)) == 2


def test_bad_results_are_dead_lettered_and_the_service_carries_on(alert_config):
    cfg = alert_config()
    good = defect_run(first=0, frames=4)
    future = result(0).model_dump(mode="json") | {"schema_version": 9}
    publish(cfg, [(CAMERA.encode(), b"{not json"), (CAMERA.encode(), json.dumps(future).encode())] + good)
    with AlertService(cfg, "t1") as service:
        drain(service, len(good) + 2)
        assert service.metrics.results.labels("invalid")._value.get() == 2
    assert len(store_for(cfg).list_alerts(LINE)) == 1
    consumer = KafkaConsumer(**cfg.kafka.client_kwargs(), auto_offset_reset="earliest")
    topic = cfg.kafka.topics.dead_letter
    consumer.assign([TopicPartition(topic, p) for p in range(cfg.kafka.topics.partitions)])
    letters, deadline = [], time.monotonic() + 20
    while len(letters) < 2 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=300).values():
            letters += [DeadLetter.from_record(r.key, r.value, r.headers) for r in records]
    consumer.close()
    assert sorted(d.reason for d in letters) == ["malformed", "unsupported-version"]
    assert b"{not json" in [d.value for d in letters] and {d.service for d in letters} == {"alerts/t1"}


def test_an_unparsable_result_just_under_the_broker_limit_is_dead_lettered_as_a_cut_copy(alert_config):
    """The dead letter of a result the broker took at 1,048,250 bytes would not fit the producer (issue #35)."""
    cfg = alert_config()
    poison = b"{" + b"x" * (1_048_250 - 1)
    good = defect_run(first=0, frames=4)
    publish(cfg, [(CAMERA.encode(), poison)] + good)
    with AlertService(cfg, "t1") as service:
        drain(service, len(good) + 1)
        assert service.metrics.results.labels("invalid")._value.get() == 1
        assert service.metrics.dead_letters_failed._value.get() == 0
    assert len(store_for(cfg).list_alerts(LINE)) == 1
    consumer = KafkaConsumer(**cfg.kafka.client_kwargs(), auto_offset_reset="earliest")
    topic = cfg.kafka.topics.dead_letter
    consumer.assign([TopicPartition(topic, p) for p in range(cfg.kafka.topics.partitions)])
    records, deadline = [], time.monotonic() + 20
    while not records and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=300).values():
            records += batch
    consumer.close()
    [record] = records
    letter = DeadLetter.from_record(record.key, record.value, record.headers)
    assert letter.reason == "malformed" and letter.truncated == ("value",) and poison.startswith(letter.value)
    assert letter.original_size == len(poison) and letter.original_sha256 == hashlib.sha256(poison).hexdigest()
    assert record_size(record.key, record.value, record.headers) <= cfg.ingest.max_message_bytes


def test_metrics_and_healthz(alert_config):
    cfg = alert_config()
    publish(cfg, defect_run(first=0, frames=4))
    with AlertService(cfg, "t1") as service:
        drain(service, 15)
        base = f"http://127.0.0.1:{service.metrics_port}"
        with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
            assert json.load(r)["status"] == "ok"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'patchsight_alerts_raised_total{defect_type="scratch",line="line-a"} 1.0' in text
        assert "patchsight_alerts_redis_up 1.0" in text


def _this_hosts_address() -> str | None:
    """An IPv4 address of this host other than loopback (the one a route out would use), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))  # UDP: nothing is sent
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def _answers(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def test_metrics_listen_on_loopback_unless_metrics_host_says_otherwise(alert_config):
    """Issue #35: /metrics listened on every interface while the dashboard defaulted to loopback."""
    address = _this_hosts_address()
    if address is None:
        pytest.skip("this host has no address besides loopback")
    cfg = alert_config()
    assert cfg.alerts.metrics_host == "127.0.0.1"
    with AlertService(cfg, "t1") as service:
        assert _answers("127.0.0.1", service.metrics_port) and not _answers(address, service.metrics_port)
    with AlertService(alert_config(alerts={"metrics_host": "0.0.0.0"}), "t2") as service:
        assert _answers(address, service.metrics_port)


def test_run_stops_on_event_and_commits(alert_config):
    cfg = alert_config()
    results = defect_run(first=0, frames=4)
    publish(cfg, results)
    with AlertService(cfg, "t1") as service:
        stop = threading.Event()
        thread = threading.Thread(target=service.run, args=(stop,))
        thread.start()
        deadline = time.monotonic() + 30
        while not store_for(cfg).list_alerts(LINE) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive()
    # everything was committed: a restarted service finds nothing to do
    with AlertService(cfg, "t2") as service:
        assert drain(service, 1, timeout_s=2) == 0


def test_a_commit_that_times_out_is_retried_and_the_service_goes_on(alert_config, monkeypatch):
    # Under load a freshly started broker's group coordinator can stay unavailable for longer than
    # the commit's timeout; the demo's alert service once died of exactly that.
    cfg = alert_config()
    results = defect_run(first=0, frames=4)
    publish(cfg, results)
    with AlertService(cfg, "t1") as service:
        real_commit = service._consumer.commit
        calls = []

        def slow_coordinator(offsets, timeout_ms=None):
            calls.append(dict(offsets))
            if len(calls) == 1:
                raise KafkaTimeoutError("coordinator did not answer")
            return real_commit(offsets, timeout_ms=timeout_ms)

        monkeypatch.setattr(service._consumer, "commit", slow_coordinator)
        assert drain(service, len(results)) == len(results)
        assert len(store_for(cfg).list_alerts(LINE)) == 1
        # with nothing new to handle, the next poll commits what the failed commit held
        deadline = time.monotonic() + 10
        while len(calls) < 2 and time.monotonic() < deadline:
            service.process_batch(timeout_ms=200)
        assert len(calls) == 2 and all(calls[1][tp].offset >= o.offset for tp, o in calls[0].items())
        assert service.metrics.registry.get_sample_value("patchsight_alerts_commits_failed_total") == 1.0
    # the retried commit holds: a restarted service in the same group finds nothing to do
    with AlertService(cfg, "t2") as service:
        assert drain(service, 1, timeout_s=2) == 0


def test_serve_without_a_broker_exits_with_one_line_naming_it(make_config, tmp_path):
    from typer.testing import CliRunner

    from alerts.cli import app

    cfg = make_config(kafka={"bootstrap": "127.0.0.1:1"})  # nothing listens on port 1
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    result = CliRunner().invoke(app, ["serve", "--config", str(path)])
    said = " ".join(result.output.split())
    assert result.exit_code == 1, said
    assert "alert service failed: kafka at 127.0.0.1:1" in said and "Traceback" not in said


def test_a_metrics_port_in_use_stops_the_service_before_it_joins_the_group(alert_config):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = alert_config(alerts={"metrics_port": port})
        with pytest.raises(AlertServiceError, match=f"cannot serve /metrics on port {port}.*alerts.metrics_port"):
            AlertService(cfg).start()
