"""Webhooks (signed, retried, failures recorded), the operator state machine and the CLI."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from alert_helpers import LINE, defect_run, drain, publish, raise_one_alert
from typer.testing import CliRunner

from alerts.cli import app as alerts_app
from alerts.service import AlertService
from alerts.store import AlertNotFound, IllegalTransition, RedisAlertStore, connect
from alerts.webhooks import signature, verify_signature
from schemas.alert import AlertState

SECRET = "s3cret-for-tests"


class Receiver:
    """A tiny webhook receiver on 127.0.0.1 that answers 500 to the first ``fail_first`` requests."""

    def __init__(self, fail_first: int, status_when_failing: int = 500) -> None:
        self.requests: list[tuple[dict[str, str], bytes, float]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body, time.monotonic()))
                failing = len(receiver.requests) <= fail_first
                self.send_response(status_when_failing if failing else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory():
    made = []

    def make(fail_first: int, status: int = 500) -> Receiver:
        made.append(Receiver(fail_first, status))
        return made[-1]

    yield make
    for r in made:
        r.close()


def wait_for(check, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_signature_verification():
    body = b'{"event":"raised"}'
    ts = str(int(time.time()))
    sig = signature(SECRET, ts, body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert verify_signature(SECRET, ts, body, sig)
    assert not verify_signature("other-secret", ts, body, sig)
    assert not verify_signature(SECRET, ts, body + b" ", sig)
    assert not verify_signature(SECRET, str(int(ts) + 1), body, sig)
    # an old (replayed) request fails even with a valid signature
    old = str(int(time.time()) - 3600)
    assert not verify_signature(SECRET, old, body, signature(SECRET, old, body), tolerance_s=300)
    assert not verify_signature(SECRET, "not-a-number", body, sig)


def test_webhook_is_signed_retried_and_failures_are_recorded(alert_config, receiver_factory):
    flaky = receiver_factory(fail_first=2)
    dead = receiver_factory(fail_first=10**6)
    hooks = [
        {"url": flaky.url, "secret": SECRET, "max_attempts": 4, "retry_initial_s": 0.05, "timeout_s": 2},
        {"url": dead.url, "secret": "other", "max_attempts": 3, "retry_initial_s": 0.05, "timeout_s": 2},
    ]
    cfg = alert_config(alerts={"webhooks": hooks})
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    results = defect_run(first=0, frames=5)
    publish(cfg, results)
    with AlertService(cfg, "t1") as service:
        drain(service, len(results))
        assert wait_for(lambda: len(flaky.requests) >= 3 and store.failed_deliveries())
        (alert,) = store.list_alerts(LINE)
        # the operator acknowledges: that event is delivered too
        store.acknowledge(alert.alert_id, "alice")
        assert wait_for(lambda: len(flaky.requests) >= 4)
        assert service.metrics.webhooks.labels("retried")._value.get() >= 2 + 2

    assert len(flaky.requests) == 4  # 2 failures + raised + acknowledged
    times = [t for _, _, t in flaky.requests[:3]]
    assert times[1] - times[0] >= 0.05 and times[2] - times[1] >= 0.1  # backoff doubles
    for headers, body, _ in flaky.requests:
        assert verify_signature(SECRET, headers["X-Patchsight-Timestamp"], body, headers["X-Patchsight-Signature"])
    raised = json.loads(flaky.requests[2][1])
    assert raised["event"] == "raised" and raised["alert"]["alert_id"] == alert.alert_id
    assert flaky.requests[2][0]["X-Patchsight-Delivery"] == raised["id"]
    acked = json.loads(flaky.requests[3][1])
    assert (acked["event"], acked["by"], acked["alert"]["state"]) == ("acknowledged", "alice", "acknowledged")

    failed = store.failed_deliveries()
    assert {f["url"] for f in failed} == {dead.url}
    raised_failure = [f for f in failed if f["event_id"] == raised["id"]][0]
    assert raised_failure["attempts"] == "3" and raised_failure["error"] == "HTTP 500"
    assert raised_failure["alert_id"] == alert.alert_id


def test_a_4xx_answer_is_not_retried(alert_config, receiver_factory):
    refusing = receiver_factory(fail_first=10**6, status=403)
    cfg = alert_config(alerts={"webhooks": [{"url": refusing.url, "secret": SECRET, "retry_initial_s": 0.05}]})
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    results = defect_run(first=0, frames=4)
    publish(cfg, results)
    with AlertService(cfg, "t1") as service:
        drain(service, len(results))
        assert wait_for(lambda: store.failed_deliveries())
    assert len(refusing.requests) == 1 and store.failed_deliveries()[0]["error"] == "HTTP 403"


@pytest.fixture
def raised_alert(alert_config):
    cfg = alert_config()
    store, alert = raise_one_alert(cfg)
    return cfg, store, alert


def test_state_machine_forward_only_with_who_and_when(raised_alert):
    _, store, alert = raised_alert
    acked = store.acknowledge(alert.alert_id, "alice")
    assert acked.state == AlertState.acknowledged and acked.acknowledged_by == "alice" and acked.acknowledged_ns
    with pytest.raises(IllegalTransition, match="is acknowledged; it cannot become acknowledged"):
        store.acknowledge(alert.alert_id, "bob")
    resolved = store.resolve(alert.alert_id, "bob")
    assert resolved.state == AlertState.resolved and resolved.resolved_by == "bob"
    stored = store.get_alert(alert.alert_id)
    assert stored == resolved
    with pytest.raises(IllegalTransition, match=r"is resolved; it cannot become acknowledged .*final state"):
        store.acknowledge(alert.alert_id, "carol")
    with pytest.raises(IllegalTransition):
        store.resolve(alert.alert_id, "carol")
    with pytest.raises(AlertNotFound):
        store.resolve("0" * 20, "carol")
    assert store.list_alerts(LINE) == []  # resolved alerts leave the open list
    assert store.list_alerts() == []
    # and stay in the full lists, of the line and of every line
    assert [a.alert_id for a in store.list_alerts(LINE, unresolved_only=False)] == [alert.alert_id]
    assert [a.alert_id for a in store.list_alerts(unresolved_only=False)] == [alert.alert_id]
    assert [e.event for e in store.events(LINE)] == ["raised", "acknowledged", "resolved"]
    assert store.get_alert(alert.alert_id).acknowledged_by == "alice"  # the failed moves changed nothing


def test_open_alert_can_be_resolved_directly(raised_alert):
    _, store, alert = raised_alert
    assert store.resolve(alert.alert_id, "dave").state == AlertState.resolved


def test_cli_ack_resolve_list(raised_alert, tmp_path, monkeypatch):
    cfg, store, alert = raised_alert
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    runner = CliRunner()
    listed = runner.invoke(alerts_app, ["list", "--config", str(path)], env={"COLUMNS": "80"})
    assert listed.exit_code == 0 and alert.alert_id in listed.output
    assert "…" not in listed.output  # narrow: cells fold instead of being cut
    ok = runner.invoke(alerts_app, ["ack", alert.alert_id, "--config", str(path), "--by", "erin"])
    assert ok.exit_code == 0, ok.output
    assert store.get_alert(alert.alert_id).acknowledged_by == "erin"
    again = runner.invoke(alerts_app, ["ack", alert.alert_id, "--config", str(path), "--by", "erin"])
    assert again.exit_code == 1 and "cannot become acknowledged" in again.output
    done = runner.invoke(alerts_app, ["resolve", alert.alert_id, "--config", str(path)])
    assert done.exit_code == 0 and store.get_alert(alert.alert_id).state == AlertState.resolved
    missing = runner.invoke(alerts_app, ["resolve", "nope", "--config", str(path)])
    assert missing.exit_code == 1 and "no alert with id" in missing.output


def test_cli_without_redis_says_so_in_one_line_without_the_password(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("redis:\n  url: redis://:hunter2@127.0.0.1:1/0\n")  # nothing listens on port 1
    for command in (["list"], ["ack", "some-id"], ["failed-webhooks"]):
        result = CliRunner().invoke(alerts_app, [*command, "--config", str(path)])
        said = " ".join(result.output.split())
        assert result.exit_code == 1, said
        assert "cannot reach Redis at redis://" in said and "127.0.0.1:1" in said
        assert "hunter2" not in said and "Traceback" not in said


def test_secrets_in_a_webhook_url_are_masked_in_logs_in_redis_and_in_the_cli(
    alert_config, receiver_factory, redis_client, tmp_path, monkeypatch
):
    """Issue #35: logs masked user:password but printed ?apikey= in clear; the Redis record and
    `patchsight alerts failed-webhooks` held the password."""
    import io
    import sys

    import structlog

    from alerts.webhooks import WebhookSender
    from runtime.log import configure_logging
    from schemas.config import Webhook

    refusing = receiver_factory(fail_first=10**6)
    port = refusing.server.server_address[1]
    url = f"http://ops:pw-Hq3-SECRET@127.0.0.1:{port}/hook?apikey=key-Zt8-SECRET&line=a&access_token=tok-Lp2-SECRET"
    masked = f"http://***:***@127.0.0.1:{port}/hook?apikey=***&line=a&access_token=***"
    secrets = ("pw-Hq3-SECRET", "key-Zt8-SECRET", "tok-Lp2-SECRET")
    hook = {"url": url, "secret": SECRET, "max_attempts": 2, "retry_initial_s": 0.01}
    cfg = alert_config(alerts={"webhooks": [hook]})
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)

    logged = io.StringIO()
    saved = structlog.get_config()
    monkeypatch.setattr(sys, "stderr", logged)
    try:
        configure_logging("json", "INFO")
        delivered = WebhookSender(store).deliver(Webhook(**hook), "1-0", "raised", "alert-1", b"{}")
    finally:
        structlog.configure(**saved)
    assert not delivered and len(refusing.requests) == 2  # the receiver really was called, credentials and all
    assert refusing.requests[0][0]["Authorization"].startswith("Basic ")
    lines = [json.loads(line) for line in logged.getvalue().splitlines()]
    assert [entry["url"] for entry in lines if entry["event"].startswith("webhook")] == [masked] * 3

    stored = redis_client.xrange(store.failed_deliveries_key)
    assert [fields[b"url"].decode() for _, fields in stored] == [masked]
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    shown = CliRunner().invoke(alerts_app, ["failed-webhooks", "--config", str(path)])
    assert shown.exit_code == 0 and masked in " ".join(shown.output.split()), shown.output
    for secret in secrets:
        assert secret not in logged.getvalue() and secret not in shown.output
        assert all(secret.encode() not in value for _, fields in stored for value in fields.values())
