"""Score drift in the alert service, against the real Kafka broker and Redis: a clean replay stays quiet,
drifted scores raise one drift event, and it clears when the scores come back."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from alert_helpers import CAMERA, LINE, drain, live_messages, publish, result

from alerts.drift import ScoreWindow, load_reference
from alerts.service import AlertService
from schemas.drift import DriftEvent, DriftReference, ScoreReference

WINDOW = 200
THRESHOLD = 0.5


def clean_scores(rng: np.random.Generator, n: int) -> np.ndarray:
    """What the calibration frames looked like: mostly low scores, a few defects above the threshold."""
    return rng.beta(2, 8, size=n)


def drifted_scores(rng: np.random.Generator, n: int) -> np.ndarray:
    """The same line under a lighting change: every score pushed up."""
    return rng.beta(4, 5, size=n)


def write_bundle(directory: Path, model_id: str = "test-model", with_reference: bool = True) -> Path:
    """A bundle.json as `model calibrate` leaves it (the alert service reads nothing else of a bundle)."""
    rng = np.random.default_rng(0)
    spec: dict = {"format": 1, "model_id": model_id}
    if with_reference:
        spec["score_reference"] = DriftReference(source="test", questions={
            q: ScoreReference.from_scores(clean_scores(rng, 4000).tolist(), THRESHOLD)
            for q in ("scratch", "missing-screw")}).model_dump(mode="json")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bundle.json").write_text(json.dumps(spec))
    return directory


def replay(scratch: np.ndarray, screw: np.ndarray, first: int = 0, camera: str = CAMERA) -> list:
    return [result(first + i, scratch=float(a), screw=float(b), camera=camera)
            for i, (a, b) in enumerate(zip(scratch, screw))]


def drift_config(alert_config, bundle: Path, sections: dict | None = None, **drift: object):
    return alert_config(model={"bundle": str(bundle)}, alerts={"drift": {"window_frames": WINDOW, **drift}},
                        **(sections or {}))


def drift_events(redis_client, prefix: str, line: str = LINE) -> list[DriftEvent]:
    return [DriftEvent.from_json(fields[b"event"]) for _, fields in redis_client.xrange(f"{prefix}:drift:events:{line}")]


def scrape(service: AlertService) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def test_a_clean_replay_raises_no_drift_event(alert_config, redis_client, tmp_path):
    cfg = drift_config(alert_config, write_bundle(tmp_path / "bundle"))
    rng = np.random.default_rng(1)
    results = replay(clean_scores(rng, 3 * WINDOW), clean_scores(rng, 3 * WINDOW))
    publish(cfg, results)
    with AlertService(cfg, "t1") as service:
        assert service.drift.watching
        assert drain(service, len(results)) == len(results)
        metrics = scrape(service)

    prefix = cfg.alerts.key_prefix
    assert drift_events(redis_client, prefix) == []
    assert redis_client.hgetall(f"{prefix}:drift:active:{LINE}") == {}
    status = {k.decode(): json.loads(v) for k, v in redis_client.hgetall(f"{prefix}:drift:status:{LINE}").items()}
    assert set(status) == {f"{CAMERA}/scratch", f"{CAMERA}/missing-screw"}
    for measures in status.values():
        assert measures["window_frames"] == WINDOW and measures["psi"] < cfg.alerts.drift.psi_bound / 2
    assert f'patchsight_drift_active{{camera="{CAMERA}",line="{LINE}",question="scratch"}} 0.0' in metrics
    assert 'patchsight_drift_psi{camera="cam-1",line="line-a",question="scratch"}' in metrics


def test_drifted_scores_raise_one_event_per_condition_and_clear_when_they_return(alert_config, redis_client, tmp_path):
    cfg = drift_config(alert_config, write_bundle(tmp_path / "bundle"))
    prefix = cfg.alerts.key_prefix
    live = redis_client.pubsub()
    live.subscribe(f"{prefix}:drift:live:{LINE}")
    rng = np.random.default_rng(2)
    # a clean window, the scratch scores drift for three windows, then come back; the screw stays clean
    scratch = np.concatenate([clean_scores(rng, WINDOW), drifted_scores(rng, 3 * WINDOW), clean_scores(rng, 2 * WINDOW)])
    results = replay(scratch, clean_scores(rng, len(scratch)))
    publish(cfg, results)
    with AlertService(cfg, "t1") as service:
        assert drain(service, len(results)) == len(results)
        metrics = scrape(service)

    events = drift_events(redis_client, prefix)
    assert [(e.event, e.camera_id, e.question_id) for e in events] == [
        ("raised", CAMERA, "scratch"), ("cleared", CAMERA, "scratch")]
    raised, cleared = events
    bounds = cfg.alerts.drift
    # the first window past a bound raised it, and its reasons name the bounds it passed
    passed = {"PSI": raised.psi > bounds.psi_bound,
              "above-threshold rate": raised.above_threshold_rate - raised.reference_above_threshold_rate > bounds.rate_bound}
    assert any(passed.values()) and raised.model_id == "test-model"
    assert [r.split(" ")[0] for r in raised.reasons] == [name.split(" ")[0] for name, hit in passed.items() if hit]
    assert cleared.psi < cfg.alerts.drift.psi_bound * cfg.alerts.drift.clear_ratio and cleared.ts_ns > raised.ts_ns
    assert redis_client.hgetall(f"{prefix}:drift:active:{LINE}") == {}
    assert f'patchsight_drift_events_total{{event="raised",line="{LINE}",question="scratch"}} 1.0' in metrics
    # the live channel carried both, with their stream ids
    messages = live_messages(live, 2)
    live.close()
    assert [m["event"] for m in messages] == ["raised", "cleared"] and all(m["id"] for m in messages)


def test_a_restarted_service_does_not_raise_the_same_drift_again(alert_config, redis_client, tmp_path):
    cfg = drift_config(alert_config, write_bundle(tmp_path / "bundle"))
    prefix = cfg.alerts.key_prefix
    rng = np.random.default_rng(3)
    results = replay(drifted_scores(rng, 2 * WINDOW), clean_scores(rng, 2 * WINDOW))
    publish(cfg, results)
    with AlertService(cfg, "t1") as service:
        assert drain(service, len(results)) == len(results)
    assert [e.event for e in drift_events(redis_client, prefix)] == ["raised"]
    active = redis_client.hgetall(f"{prefix}:drift:active:{LINE}")
    assert list(active) == [f"{CAMERA}/scratch".encode()]

    # a new instance (own consumer group: it reads every result again) finds the condition already raised
    again = cfg.model_copy(update={"alerts": cfg.alerts.model_copy(update={"group_id": cfg.alerts.group_id + "-b"})})
    with AlertService(again, "t2") as service:
        assert drain(service, len(results)) == len(results)
    assert [e.event for e in drift_events(redis_client, prefix)] == ["raised"]


def test_results_of_another_model_are_not_compared(alert_config, redis_client, tmp_path):
    cfg = drift_config(alert_config, write_bundle(tmp_path / "bundle", model_id="calibrated-model"))
    rng = np.random.default_rng(4)
    results = replay(drifted_scores(rng, 2 * WINDOW), drifted_scores(rng, 2 * WINDOW))  # model_id "test-model"
    publish(cfg, results)
    with AlertService(cfg, "t1") as service:
        assert drain(service, len(results)) == len(results)
    assert drift_events(redis_client, cfg.alerts.key_prefix) == []
    assert not redis_client.exists(f"{cfg.alerts.key_prefix}:drift:status:{LINE}")


@pytest.mark.parametrize("content, reason", [
    (None, "does not exist"),
    ("{not json", "JSONDecodeError"),
    ('{"format": 1, "model_id": "m"}', "has no score_reference"),
    ('{"model_id": "m", "score_reference": {"questions": {"q": {"edges": [0.5], "shares": [1.0], '
     '"threshold": 0.5, "above_threshold_rate": 0, "frames": 1}}}}', "invalid at questions.q"),
])
def test_a_bundle_without_a_usable_reference_turns_drift_off_and_says_why(content, reason, tmp_path):
    if content is not None:
        (tmp_path / "bundle.json").write_text(content)
    loaded = load_reference(tmp_path)
    assert isinstance(loaded, str) and loaded.startswith("no reference") and reason in loaded


def test_the_window_slides_and_counts_only_its_last_frames():
    reference = ScoreReference.from_scores([i / 100 for i in range(100)], threshold=0.5)
    window = ScoreWindow(reference, size=50)
    for _ in range(50):
        window.add(0.9)
    assert window.full and window.above_threshold_rate() == 1.0 and window.psi() > 1.0
    for i in range(50):
        window.add(i / 50)  # one window of scores spread like the reference's
    assert window.above_threshold_rate() == pytest.approx(0.5) and window.psi() < 0.05
    assert sum(window.counts) == 50


def test_a_service_without_a_reference_keeps_raising_alerts(alert_config, redis_client, tmp_path):
    cfg = drift_config(alert_config, write_bundle(tmp_path / "bundle", with_reference=False))
    rng = np.random.default_rng(5)
    results = replay(drifted_scores(rng, WINDOW + 10), clean_scores(rng, WINDOW + 10))
    publish(cfg, results)
    with AlertService(cfg, "t1") as service:
        assert not service.drift.watching and "has no score_reference" in service.drift.off_reason
        assert drain(service, len(results)) == len(results)
        assert service.store.list_alerts(LINE)  # the drifted scratch scores still cross the threshold
    assert not redis_client.keys(f"{cfg.alerts.key_prefix}:drift:*")


def test_drift_monitoring_can_be_switched_off(alert_config, tmp_path):
    cfg = drift_config(alert_config, write_bundle(tmp_path / "bundle"), enabled=False)
    service = AlertService(cfg, "t1")
    try:
        assert not service.drift.watching and "enabled is false" in service.drift.off_reason
    finally:
        service.redis.close()


def drifted_line(alert_config, redis_client, tmp_path):
    """A line whose scratch scores drifted, through the service: its config, with the condition active."""
    cfg = drift_config(alert_config, write_bundle(tmp_path / "bundle"), {"dashboard": {"token": "t0k"}})
    rng = np.random.default_rng(6)
    results = replay(drifted_scores(rng, 2 * WINDOW), clean_scores(rng, 2 * WINDOW))
    publish(cfg, results)
    with AlertService(cfg, "t1") as service:
        assert drain(service, len(results)) == len(results)
    return cfg


def test_the_dashboard_api_shows_each_windows_measures_and_the_active_drift(alert_config, redis_client, tmp_path):
    from fastapi.testclient import TestClient

    from alerts.dashboard import create_app

    cfg = drifted_line(alert_config, redis_client, tmp_path)
    client = TestClient(create_app(cfg))
    assert client.get("/api/drift").status_code == 401
    body = client.get("/api/drift", headers={"Authorization": "Bearer t0k"}).json()
    line = body[LINE]
    assert set(line["status"]) == {f"{CAMERA}/scratch", f"{CAMERA}/missing-screw"}
    assert line["status"][f"{CAMERA}/scratch"]["psi"] > cfg.alerts.drift.psi_bound
    assert line["status"][f"{CAMERA}/missing-screw"]["psi"] < cfg.alerts.drift.psi_bound
    assert list(line["active"]) == [f"{CAMERA}/scratch"] and line["active"][f"{CAMERA}/scratch"]["event"] == "raised"
    assert [(e["event"], e["question_id"]) for e in line["events"]] == [("raised", "scratch")]
    assert client.get("/api/drift?recent=0&token=t0k").json()[LINE]["events"] == []
    assert client.get("/api/drift?line=nowhere&token=t0k").json() == {"nowhere": {"status": {}, "active": {}, "events": []}}


def test_the_dashboard_page_marks_the_drifted_question(alert_config, redis_client, tmp_path):
    import shutil
    import socket
    import tempfile
    import threading

    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from alerts.dashboard import create_app

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium + chromedriver are not installed (make system)")
    cfg = drifted_line(alert_config, redis_client, tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    profile = tempfile.mkdtemp(prefix="ps-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        driver.get(f"http://127.0.0.1:{port}/?token=t0k")
        wait = WebDriverWait(driver, 30)
        row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-drift="{CAMERA}/scratch"]')))
        state = row.find_element(By.CSS_SELECTOR, "td.state")
        assert state.text.startswith("drifted: PSI") and "bad" in state.get_attribute("class")
        calm = driver.find_element(By.CSS_SELECTOR, f'tr[data-drift="{CAMERA}/missing-screw"] td.state')
        assert calm.text == "ok"
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


def test_the_drift_command_lists_the_windows_and_exits_3_while_a_question_has_drifted(alert_config, redis_client,
                                                                                      tmp_path):
    from typer.testing import CliRunner

    from alerts.cli import app as alerts_app

    cfg = drifted_line(alert_config, redis_client, tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    shown = CliRunner().invoke(alerts_app, ["drift", "--config", str(path)], env={"COLUMNS": "200"})
    assert shown.exit_code == 3, shown.output
    rows = {line.split("│")[2].strip(): line for line in shown.output.splitlines() if "line-a/cam-1" in line}
    assert set(rows) == {"scratch", "missing-screw"}
    assert "drifted: PSI" in rows["scratch"] and "ok" in rows["missing-screw"]

    redis_client.delete(f"{cfg.alerts.key_prefix}:drift:active:{LINE}")  # as if the drift had cleared
    assert CliRunner().invoke(alerts_app, ["drift", "--config", str(path)]).exit_code == 0
