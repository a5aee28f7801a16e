"""The operator dashboard: token protection, API, and a real headless browser."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time

import httpx
import pytest
import uvicorn
from alert_helpers import CAMERA, LINE, defect_run, drain, part_run, publish, raise_one_alert
from fastapi.testclient import TestClient

from alerts.dashboard import create_app
from alerts.service import AlertService
from alerts.store import RedisAlertStore, connect
from schemas.alert import AlertState

TOKEN = "dash-token-123"


@pytest.fixture
def with_alert(alert_config):
    cfg = alert_config(dashboard={"token": TOKEN})
    store, alert = raise_one_alert(cfg)
    return cfg, store, alert


def test_token_is_required_everywhere_but_healthz(with_alert):
    cfg, _, alert = with_alert
    client = TestClient(create_app(cfg))
    for path in ("/", "/api/lines", "/api/alerts", f"/api/alerts/{alert.alert_id}/thumbnail.jpg", "/api/events"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
    assert client.post(f"/api/alerts/{alert.alert_id}/acknowledge").status_code == 401
    assert client.get("/healthz").status_code == 200
    assert client.get("/", params={"token": TOKEN}).status_code == 200
    assert client.get("/api/lines", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_api_lists_acknowledges_and_refuses_illegal_moves(with_alert):
    cfg, store, alert = with_alert
    client = TestClient(create_app(cfg), headers={"Authorization": f"Bearer {TOKEN}"})
    info = client.get("/api/lines").json()
    assert LINE in info["lines"] and info["counts"][LINE] == {"scratch": 1}
    (camera,) = info["cameras"]
    assert camera["camera_id"] == CAMERA and camera["fps"] == pytest.approx(10, abs=1) and camera["healthy"]
    assert [a["alert_id"] for a in client.get("/api/alerts", params={"line": LINE}).json()] == [alert.alert_id]
    assert client.get("/api/alerts", params={"line": "other-line"}).json() == []
    thumb = client.get(f"/api/alerts/{alert.alert_id}/thumbnail.jpg")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    acked = client.post(f"/api/alerts/{alert.alert_id}/acknowledge", json={"by": "frank"})
    assert acked.status_code == 200 and acked.json()["acknowledged_by"] == "frank"
    again = client.post(f"/api/alerts/{alert.alert_id}/acknowledge", json={"by": "frank"})
    assert again.status_code == 409 and "cannot become acknowledged" in again.json()["detail"]
    assert client.post("/api/alerts/nope/resolve").status_code == 404
    # a misspelt or foreign body is refused, not read as the dashboard's own action (issue #35)
    for body in ({"operator": "frank"}, {"by": "frank", "note": "seen"}):
        refused = client.post(f"/api/alerts/{alert.alert_id}/resolve", json=body)
        assert refused.status_code == 422 and refused.json()["detail"][0]["msg"] == "Extra inputs are not permitted"
    assert store.get_alert(alert.alert_id).state == AlertState.acknowledged
    assert store.get_alert(alert.alert_id).state == AlertState.acknowledged


def two_parts(camera: str = "cam-2") -> list:
    """A tracked camera: a part with a scratch and a missing screw, then a clean one."""
    return part_run([("p-1", [(0.9, 0.8)] * 3), ("p-2", [(0.1, 0.1)] * 3), (None, [(0.1, 0.1)])], camera=camera)


def test_api_shows_the_lines_parts_and_each_alerts_part_and_findings(alert_config):
    cfg = alert_config()
    results = two_parts()
    publish(cfg, results)
    with AlertService(cfg, "t1") as service:
        drain(service, len(results))
    client = TestClient(create_app(cfg))
    info = client.get("/api/lines").json()
    assert info["parts"][LINE] == {"inspected": 2, "passed": 1, "flagged": 1, "unscored": 0, "yield_pct": 50.0}
    (alert,) = client.get("/api/alerts", params={"line": LINE}).json()
    assert alert["part_id"] == "p-1" and alert["schema_version"] == 2
    assert [(f["question_id"], f["camera_id"]) for f in alert["findings"]] == [("scratch", "cam-2"),
                                                                               ("missing-screw", "cam-2")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
def test_alert_appears_live_in_the_browser_and_ack_reaches_redis(alert_config):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium + chromedriver are not installed (make system)")
    cfg = alert_config(dashboard={"token": TOKEN})
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)

    profile = tempfile.mkdtemp(prefix="ps-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        # the page re-renders a row when its alert changes: a row found just before is then stale, so look again
        wait = WebDriverWait(driver, 30, ignored_exceptions=(StaleElementReferenceException,))
        # without the token the page is refused
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 401
        driver.get(f"http://127.0.0.1:{port}/?token={TOKEN}")
        wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
        assert driver.find_elements(By.CSS_SELECTOR, "tr.alert") == []

        # a defect flows through Kafka and the service while the page is open: no reload
        results = defect_run(first=0, frames=4)
        publish(cfg, results)
        with AlertService(cfg, "t1") as service:
            drain(service, len(results))
        (alert,) = store.list_alerts(LINE)
        row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-alert-id="{alert.alert_id}"]')))
        assert row.get_attribute("data-state") == "open" and "scratch" in row.text
        src = row.find_element(By.CSS_SELECTOR, "img.thumb").get_attribute("src")
        assert httpx.get(src).content == store.thumbnail(alert.alert_id)  # the img carries the token
        wait.until(ec.text_to_be_present_in_element((By.ID, "cameras"), CAMERA))
        # the line filter hides it, and shows it again
        driver.find_element(By.CSS_SELECTOR, f'#line-filter option[value="{LINE}"]').click()
        assert driver.find_elements(By.CSS_SELECTOR, f'tr[data-alert-id="{alert.alert_id}"]')

        driver.find_element(By.ID, "operator").clear()
        driver.find_element(By.ID, "operator").send_keys("grace")
        driver.find_element(By.CSS_SELECTOR, f'tr[data-alert-id="{alert.alert_id}"] button.ack').click()
        deadline = time.monotonic() + 15
        while store.get_alert(alert.alert_id).state != AlertState.acknowledged and time.monotonic() < deadline:
            time.sleep(0.1)
        stored = store.get_alert(alert.alert_id)
        assert stored.state == AlertState.acknowledged and stored.acknowledged_by == "grace"
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-alert-id="{alert.alert_id}"]')
                   .get_attribute("data-state") == "acknowledged")

        # parts of a tracked camera: the line's counts and yield, and the part's alert with every finding
        results = two_parts()
        publish(cfg, results)
        with AlertService(cfg, "t2") as service:
            drain(service, len(results))
        part_alert = next(a for a in store.list_alerts(LINE) if a.part_id == "p-1")
        selector = f'tr[data-alert-id="{part_alert.alert_id}"]'
        row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, selector)))
        assert row.find_element(By.CSS_SELECTOR, "td.part").text == "p-1"
        assert [li.text.split()[0] for li in row.find_elements(By.CSS_SELECTOR, "ul.findings li")] == [
            "scratch", "missing_screw"]
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, f'#parts tr[data-line="{LINE}"] td.yield'),
                                                     "50.0 %"))
        counts = driver.find_element(By.CSS_SELECTOR, f'#parts tr[data-line="{LINE}"]')
        assert [counts.find_element(By.CSS_SELECTOR, f"td.{name}").text for name in ("inspected", "passed", "flagged")
                ] == ["2", "1", "1"]
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


def test_without_redis_the_api_and_healthz_answer_503(make_config):
    cfg = make_config(redis={"url": "redis://127.0.0.1:1/0"})  # nothing listens on port 1
    client = TestClient(create_app(cfg), raise_server_exceptions=False)
    assert client.get("/").status_code == 200  # the page itself needs no store
    for path in ("/healthz", "/api/alerts", "/api/lines"):
        response = client.get(path)
        assert response.status_code == 503, path
        assert "alert store (Redis) is unavailable" in response.json()["detail"]
        assert response.headers["retry-after"] == "2"
    assert client.post("/api/alerts/some-id/acknowledge").status_code == 503
