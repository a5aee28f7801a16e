"""Alerts per part through the alert service, against the real Kafka broker and Redis."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from alert_helpers import CAMERA, LINE, drain, line_section, live_messages, part_run, publish, result
from typer.testing import CliRunner

from alerts.cli import _print_event, console
from alerts.cli import app as alerts_app
from alerts.parts import PartRecord, decide_part, merge_part
from alerts.service import AlertService
from alerts.store import RedisAlertStore, StateConflict, connect
from schemas.alert import alert_id_for, part_alert_id

CLEAN = (0.1, 0.1)


def store_for(cfg) -> RedisAlertStore:
    return RedisAlertStore(connect(cfg.redis), cfg.alerts)


def jpeg(camera: str, seq: int) -> bytes:
    return b"\xff\xd8" + f"{camera}/{seq}".encode() + b"\xff\xd9"  # what part_result attaches


def one_camera_parts() -> list:
    """cam-1, tracked: a clean part, a scratched one, one with a scratch and a missing screw, a clean one."""
    return part_run([
        (None, [CLEAN] * 2),
        ("cam-1.1", [CLEAN, (0.2, 0.1), (0.15, 0.2), CLEAN]),          # seq 2-5: passes
        (None, [CLEAN] * 2),
        ("cam-1.2", [(0.7, 0.1), (0.85, 0.1), (0.8, 0.2), (0.75, 0.1)]),  # seq 8-11: scratch, best frame 9
        ("cam-1.3", [(0.65, 0.6), (0.7, 0.9), (0.8, 0.7), (0.5, 0.95)]),  # seq 12-15: both, best frame 15 (0.95)
        (None, [CLEAN]),
        ("cam-1.4", [CLEAN] * 4),                                        # seq 17-20: passes
        (None, [CLEAN] * 2),
    ])


def test_one_alert_per_defective_part_none_for_clean_parts_and_the_line_counted(alert_config, redis_client):
    cfg = alert_config()
    store = store_for(cfg)
    live = redis_client.pubsub()
    live.subscribe(store.channel(LINE))
    results = one_camera_parts()
    publish(cfg, results)
    with AlertService(cfg, "t1") as service:
        assert drain(service, len(results)) == len(results)
        with urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()

    alerts = {a.part_id: a for a in store.list_alerts(LINE)}
    assert sorted(alerts) == ["cam-1.2", "cam-1.3"]
    scratched, both = alerts["cam-1.2"], alerts["cam-1.3"]
    assert scratched.alert_id == part_alert_id(LINE, "cam-1.2", 0) and scratched.camera_id == CAMERA
    assert [(f.question_id, f.camera_id) for f in scratched.findings] == [("scratch", CAMERA)]
    assert scratched.score == pytest.approx(0.775) and scratched.threshold == 0.6
    assert (scratched.first_seq, scratched.last_seq) == (8, 11)
    assert [f.question_id for f in both.findings] == ["missing-screw", "scratch"]
    assert both.question_id == "missing-screw" and both.score == pytest.approx(0.7875)
    # the thumbnail of the best frame among the flagged questions
    assert store.thumbnail(scratched.alert_id) == jpeg(CAMERA, 9)
    assert store.thumbnail(both.alert_id) == jpeg(CAMERA, 15)
    assert store.part_counts(LINE) == {"inspected": 4, "passed": 2, "flagged": 2, "unscored": 0}
    assert store.counts(LINE) == {"scratch": 2, "missing_screw": 1}
    # nothing in view at the end: no part pending, no thumbnail held back
    assert store.open_parts() == [] and redis_client.hlen(store.pending_thumbnails_key(LINE, CAMERA)) == 0
    events = store.events(LINE)
    assert [(e.event, e.alert.part_id) for e in events] == [("raised", "cam-1.2"), ("raised", "cam-1.3")]
    messages = live_messages(live, 2)
    live.close()
    assert [m["id"] for m in messages] == [e.id for e in events]
    assert messages[1]["alert"]["part_id"] == "cam-1.3" and len(messages[1]["alert"]["findings"]) == 2
    assert 'patchsight_parts{line="line-a",verdict="flagged"} 2.0' in metrics
    assert 'patchsight_parts{line="line-a",verdict="inspected"} 4.0' in metrics
    assert 'patchsight_alerts_part_verdicts_total{line="line-a",verdict="passed"} 2.0' in metrics
    (camera,) = store.cameras(LINE)
    assert camera.last_seq == results[-1].seq and 9.0 < camera.fps < 11.0


def snapshot(store: RedisAlertStore) -> tuple:
    alerts = sorted(store.list_alerts(LINE, unresolved_only=False), key=lambda a: a.alert_id)
    return ([(a.alert_id, a.part_id, a.camera_id, a.findings, a.first_seq, a.last_seq) for a in alerts],
            store.part_counts(LINE), store.counts(LINE), [(e.event, e.alert.alert_id) for e in store.events(LINE)])


def test_replaying_the_same_results_gives_the_same_alerts_and_counts(alert_config):
    cfg = alert_config()
    results = one_camera_parts() + part_run([("plc-9", [(0.9, 0.1)] * 3), (None, [CLEAN])],
                                            camera="cam-2", source="header")
    publish(cfg, results + results[:7])  # a producer retry on top
    with AlertService(cfg, "t1") as service:
        drain(service, len(results) + 7)
    store = store_for(cfg)
    first = snapshot(store)
    assert len(first[0]) == 3 and first[1]["inspected"] == 5

    # the whole topic again, through another consumer group: every result is known
    replay = cfg.model_copy(update={"alerts": cfg.alerts.model_copy(update={"group_id": cfg.alerts.group_id + "-r"})})
    with AlertService(replay, "replay") as service:
        drain(service, len(results) + 7)
        assert service.metrics.results.labels("redelivery")._value.get() == len(results) + 7
    assert snapshot(store) == first

    # and into an empty store (another key prefix): the same alerts, ids and counts
    fresh = cfg.model_copy(update={"alerts": cfg.alerts.model_copy(
        update={"group_id": cfg.alerts.group_id + "-f", "key_prefix": cfg.alerts.key_prefix + "-f"})})
    with AlertService(fresh, "fresh") as service:
        drain(service, len(results) + 7)
    fresh_store = store_for(fresh)
    try:
        assert snapshot(fresh_store) == first
    finally:
        keys = list(fresh_store.redis.scan_iter(match=f"{fresh.alerts.key_prefix}:*", count=500))
        if keys:
            fresh_store.redis.delete(*keys)


def test_a_header_part_seen_by_two_cameras_is_one_alert_and_one_part(alert_config, tmp_path):
    cfg = alert_config()
    top = part_run([("plc-1", [(0.9, 0.1)] * 3), (None, [CLEAN]), ("plc-2", [CLEAN] * 3), (None, [CLEAN]),
                    ("plc-3", [CLEAN] * 3), (None, [CLEAN])], camera=CAMERA, source="header")
    side = part_run([("plc-1", [(0.1, 0.8)] * 3), (None, [CLEAN]), ("plc-2", [CLEAN] * 3), (None, [CLEAN]),
                     ("plc-3", [(0.1, 0.9)] * 3), (None, [CLEAN])], camera="cam-2", source="header", first=500)
    publish(cfg, top + side)
    with AlertService(cfg, "t1") as service:
        drain(service, len(top) + len(side))
    store = store_for(cfg)
    alerts = {a.part_id: a for a in store.list_alerts(LINE)}
    assert sorted(alerts) == ["plc-1", "plc-3"]
    plc1 = alerts["plc-1"]
    assert plc1.alert_id == part_alert_id(LINE, "plc-1") and plc1.camera_id == CAMERA  # raised by the first camera
    assert sorted((f.question_id, f.camera_id) for f in plc1.findings) == [("missing-screw", "cam-2"),
                                                                           ("scratch", CAMERA)]
    assert [(f.question_id, f.camera_id) for f in alerts["plc-3"].findings] == [("missing-screw", "cam-2")]
    # plc-3 was passed by cam-1 first, then flagged by cam-2: counted once, as flagged
    assert store.part_counts(LINE) == {"inspected": 3, "passed": 1, "flagged": 2, "unscored": 0}
    assert [(e.event, e.alert.part_id, len(e.alert.findings)) for e in store.events(LINE)] == [
        ("raised", "plc-1", 1), ("updated", "plc-1", 2), ("raised", "plc-3", 1)]
    assert store.counts(LINE) == {"scratch": 1, "missing_screw": 2}
    assert store.thumbnail(plc1.alert_id) == jpeg(CAMERA, 0)  # 0.9 beats cam-2's 0.8

    # the commands show the part and every finding
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    listed = CliRunner().invoke(alerts_app, ["list", "--config", str(path)], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if plc1.alert_id in line)
    assert "plc-1" in row and "scratch 0.90" in row and "missing_screw 0.80@cam-2" in row
    with console.capture() as captured:
        _print_event(store.events(LINE)[1])
    said = " ".join(captured.get().split())
    assert "updated" in said and "part plc-1" in said and "missing_screw 0.80@cam-2" in said


def test_a_merge_decided_on_a_stale_part_record_is_refused_and_decided_again(alert_config):
    cfg = alert_config()
    store = store_for(cfg)
    a = part_run([("plc-5", [(0.9, 0.1)] * 2), (None, [CLEAN])], camera=CAMERA, source="header")
    b = part_run([("plc-5", [(0.1, 0.1)] * 2), (None, [CLEAN])], camera="cam-2", source="header")
    for r in b[:-1]:
        store.step_part(LINE, "cam-2", lambda s, r=r: decide_part(s, r, None, 1), 1, r)
    # cam-2 decides plc-5 on the record as it is now (empty) ...
    state = store.load_part_state(LINE, "cam-2")
    decision = decide_part(state, b[-1], None, 2)
    record, alert = store.load_part(decision.ended.part_key)
    stale = merge_part(record, alert, decision.ended, 2)
    # ... while cam-1's verdict on the same part lands first (another instance, another partition)
    for r in a:
        store.step_part(LINE, CAMERA, lambda s, r=r: decide_part(s, r, None, 3), 3, r)
    with pytest.raises(StateConflict, match="part moved on"):
        store._apply_part_step(LINE, "cam-2", state, decision, stale, alert, b[-1], None, 4)
    step = store.step_part(LINE, "cam-2", lambda s: decide_part(s, b[-1], None, 5), 5, b[-1])
    assert step.merge.counts == {} and step.event == ""  # flagged already; a clean pass adds nothing
    assert store.part_counts(LINE) == {"inspected": 1, "passed": 0, "flagged": 1, "unscored": 0}
    assert merge_part(PartRecord(), None, decision.ended, 0).counts == {"passed": 1, "inspected": 1}


def test_a_part_whose_camera_goes_quiet_is_decided_after_the_timeout(alert_config):
    cfg = alert_config({"part_timeout_s": 0.5})
    results = part_run([(None, [CLEAN]), ("cam-1.7", [(0.9, 0.1)] * 3)])  # the camera stops with the part in view
    publish(cfg, results)
    store = store_for(cfg)
    with AlertService(cfg, "t1") as service:
        drain(service, len(results))
        assert store.open_parts() == [(LINE, CAMERA)]
        deadline = time.monotonic() + 15
        while not store.list_alerts(LINE) and time.monotonic() < deadline:
            service.process_batch(timeout_ms=200)
    (alert,) = store.list_alerts(LINE)
    assert alert.part_id == "cam-1.7" and (alert.first_seq, alert.last_seq) == (1, 3)
    assert store.thumbnail(alert.alert_id) == jpeg(CAMERA, 1)
    assert store.open_parts() == [] and store.part_counts(LINE)["flagged"] == 1


def test_a_camera_without_part_tracking_keeps_the_k_of_n_debounce(alert_config):
    line = line_section()
    line["cameras"] = [{"id": CAMERA, "track_parts": False}]
    cfg = alert_config(line=line)
    results = part_run([("cam-1.1", [CLEAN] * 3 + [(0.9, 0.1)] * 4 + [CLEAN] * 6)])
    publish(cfg, results)
    with AlertService(cfg, "t1") as service:
        drain(service, len(results))
    store = store_for(cfg)
    (alert,) = store.list_alerts(LINE)
    assert alert.alert_id == alert_id_for(LINE, CAMERA, "scratch", 3) and alert.part_id is None
    assert store.part_counts(LINE)["inspected"] == 0


def test_results_without_a_part_keep_the_k_of_n_debounce_next_to_tracked_ones(alert_config):
    cfg = alert_config()
    scratch = {3: 0.9, 4: 0.9, 5: 0.9, 6: 0.97, 7: 0.95}
    old_worker = [result(seq, scratch=scratch.get(seq, 0.1), camera="cam-2") for seq in range(15)]
    tracked = part_run([("cam-1.1", [(0.9, 0.1)] * 3), (None, [CLEAN])])
    publish(cfg, old_worker + tracked)
    with AlertService(cfg, "t1") as service:
        drain(service, len(old_worker) + len(tracked))
    alerts = store_for(cfg).list_alerts(LINE)
    assert sorted((a.camera_id, a.part_id) for a in alerts) == [(CAMERA, "cam-1.1"), ("cam-2", None)]
    k_of_n = next(a for a in alerts if a.part_id is None)
    assert k_of_n.alert_id == alert_id_for(LINE, "cam-2", "scratch", 3)
    # raised at seq 5 with 0.9; its one finding follows the score as the defect goes on
    assert k_of_n.score == 0.97 and k_of_n.last_defect_seq == 7
    assert [(f.question_id, f.camera_id, f.score) for f in k_of_n.findings] == [("scratch", "cam-2", 0.97)]
