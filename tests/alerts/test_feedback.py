"""Operator verdicts on alerts: the store, the CLI, the dashboard API, the event stream, pub/sub and webhooks."""

from __future__ import annotations

import json
import time

import pytest
from alert_helpers import LINE, defect_run, drain, publish, raise_one_alert
from fastapi.testclient import TestClient
from pydantic import ValidationError
from test_notifications import SECRET, receiver_factory, wait_for  # noqa: F401  (fixture)
from typer.testing import CliRunner

from alerts.cli import app as alerts_app
from alerts.dashboard import create_app
from alerts.service import AlertService
from alerts.store import AlertNotFound, RedisAlertStore, connect
from alerts.webhooks import verify_signature
from schemas.alert import AlertState
from schemas.feedback import OperatorVerdict, VerdictSubject


@pytest.fixture
def raised(alert_config):
    """One k-of-n alert raised through the service (the notification tests have the same, for theirs)."""
    return (cfg := alert_config()), *raise_one_alert(cfg)


def test_a_verdict_is_stored_next_to_the_alert_and_announced(raised):
    cfg, store, alert = raised
    pubsub = store.redis.pubsub()
    pubsub.subscribe(store.channel(LINE))
    assert wait_for(lambda: pubsub.get_message(timeout=0.2) is not None, 5)  # the subscribe confirmation
    given = store.record_verdict(alert.alert_id, False, "alice")
    assert (given.label, given.by, given.defect_type, given.part_id) == ("false_alarm", "alice", None, None)
    assert store.verdict(VerdictSubject.alert, alert.alert_id) == given
    # the alert itself is unchanged: a verdict is not a state
    assert store.get_alert(alert.alert_id) == alert
    (raised_event, verdict_event) = store.events(LINE)
    assert verdict_event.event == "verdict" and verdict_event.verdict == given and verdict_event.by == "alice"
    assert verdict_event.alert.alert_id == alert.alert_id
    message = None
    deadline = time.monotonic() + 5
    while message is None and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)
    pubsub.close()
    published = json.loads(message["data"])
    assert published["id"] == verdict_event.id and published["event"] == "verdict"
    assert OperatorVerdict.model_validate(published["verdict"]) == given

    # a corrected verdict replaces it, and is an event of its own; the line's verdicts index both subjects
    corrected = store.record_verdict(alert.alert_id, True, "bob", defect_type="dent")
    assert store.verdict(VerdictSubject.alert, alert.alert_id) == corrected
    assert (corrected.label, corrected.defect_type) == ("confirmed", "dent")
    assert [e.event for e in store.events(LINE)] == ["raised", "verdict", "verdict"]
    assert store.redis.zrange(store.line_verdicts_key(LINE), 0, -1) == [f"alert:{alert.alert_id}".encode()]
    # a verdict and the state machine are independent: the alert can still be resolved, and judged after
    store.resolve(alert.alert_id, "bob")
    assert store.record_verdict(alert.alert_id, True, "carol").by == "carol"
    assert store.get_alert(alert.alert_id).state == AlertState.resolved


def test_verdict_on_an_unknown_alert_or_a_defect_on_a_false_alarm_is_refused(raised):
    _, store, alert = raised
    with pytest.raises(AlertNotFound, match="no alert with id 'nope'"):
        store.record_verdict("nope", True, "alice")
    with pytest.raises(ValidationError, match="defect type goes only with a defective verdict"):
        store.record_verdict(alert.alert_id, False, "alice", defect_type="scratch")
    assert store.verdict(VerdictSubject.alert, alert.alert_id) is None
    assert [e.event for e in store.events(LINE)] == ["raised"]  # nothing was announced


def test_cli_verdict(raised, tmp_path):
    cfg, store, alert = raised
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    runner = CliRunner()
    ok = runner.invoke(
        alerts_app,
        ["verdict", alert.alert_id, "--confirmed", "--defect", "dent", "--by", "erin", "--config", str(path)],
    )
    assert ok.exit_code == 0, ok.output
    assert "confirmed (dent) by erin" in ok.output
    stored = store.verdict(VerdictSubject.alert, alert.alert_id)
    assert (stored.defective, stored.defect_type, stored.by) == (True, "dent", "erin")
    ok = runner.invoke(alerts_app, ["verdict", alert.alert_id, "--false-alarm", "--config", str(path)])
    assert ok.exit_code == 0 and store.verdict(VerdictSubject.alert, alert.alert_id).label == "false_alarm"

    missing = runner.invoke(alerts_app, ["verdict", "nope", "--confirmed", "--config", str(path)])
    assert missing.exit_code == 1 and "no alert with id 'nope'" in missing.output
    for bad in (["--confirmed", "--false-alarm"], [], ["--false-alarm", "--defect", "dent"]):
        refused = runner.invoke(alerts_app, ["verdict", alert.alert_id, *bad, "--config", str(path)])
        assert refused.exit_code == 2, (bad, refused.output)
    bad_name = runner.invoke(
        alerts_app, ["verdict", alert.alert_id, "--confirmed", "--defect", "a b/c", "--config", str(path)]
    )
    assert bad_name.exit_code == 2 and "defect_type" in bad_name.output
    assert store.verdict(VerdictSubject.alert, alert.alert_id).label == "false_alarm"  # the refusals changed nothing


def test_dashboard_api_verdict_and_listing(raised):
    cfg, store, alert = raised
    client = TestClient(create_app(cfg))
    (listed,) = client.get("/api/alerts").json()
    assert listed["verdict"] is None
    given = client.post(f"/api/alerts/{alert.alert_id}/verdict", json={"verdict": "confirmed", "by": "frank"})
    assert given.status_code == 200 and given.json()["label"] == "confirmed" and given.json()["by"] == "frank"
    (listed,) = client.get("/api/alerts").json()
    assert listed["verdict"]["label"] == "confirmed" and listed["verdict"]["by"] == "frank"
    assert client.post("/api/alerts/nope/verdict", json={"verdict": "confirmed"}).status_code == 404
    for body in (
        {"verdict": "good"},
        {"verdict": "maybe"},
        {"verdict": "false_alarm", "defect_type": "dent"},
        {"verdict": "confirmed", "by": ""},
        {"verdict": "confirmed", "extra": 1},
        {},
    ):
        refused = client.post(f"/api/alerts/{alert.alert_id}/verdict", json=body)
        assert refused.status_code == 422, body
    assert store.verdict(VerdictSubject.alert, alert.alert_id).by == "frank"


def test_a_verdict_is_sent_to_webhooks_signed(alert_config, receiver_factory):  # noqa: F811
    hook = receiver_factory(fail_first=0)
    cfg = alert_config(alerts={"webhooks": [{"url": hook.url, "secret": SECRET, "retry_initial_s": 0.05}]})
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    results = defect_run(first=0, frames=4)
    publish(cfg, results)
    with AlertService(cfg, "t1") as service:
        drain(service, len(results))
        (alert,) = store.list_alerts(LINE)
        store.record_verdict(alert.alert_id, False, "grace")
        assert wait_for(lambda: len(hook.requests) >= 2)
    # the events of one batch are delivered concurrently: find the verdict's request by its header
    assert sorted(h["X-Patchsight-Event"] for h, _, _ in hook.requests) == ["raised", "verdict"]
    headers, body, _ = next(r for r in hook.requests if r[0]["X-Patchsight-Event"] == "verdict")
    assert verify_signature(SECRET, headers["X-Patchsight-Timestamp"], body, headers["X-Patchsight-Signature"])
    sent = json.loads(body)
    assert sent["id"] == headers["X-Patchsight-Delivery"] and sent["alert"]["alert_id"] == alert.alert_id
    assert (sent["verdict"]["defective"], sent["verdict"]["by"], sent["verdict"]["subject"]) == (
        False,
        "grace",
        "alert",
    )
