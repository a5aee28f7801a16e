"""The dashboard's feedback in a real headless browser: verdict buttons on an alert, its evidence frames, and
the review sample of passed parts with its good / defective buttons, all reaching the real Redis."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import httpx
import pytest
import uvicorn
from alert_helpers import LINE, drain, part_run, publish
from test_dashboard import TOKEN, free_port
from test_evidence import publish_frames, settled, with_frames
from test_notifications import wait_for

from alerts.dashboard import create_app
from alerts.review import review_slot
from alerts.service import AlertService
from alerts.store import RedisAlertStore, connect
from schemas.config import PatchsightConfig
from schemas.feedback import VerdictSubject


@contextmanager
def page_in_chromium(cfg: PatchsightConfig) -> Iterator[tuple[object, int]]:
    """The dashboard served on a free port and a headless Chromium on it: (driver, port)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium + chromedriver are not installed (make system)")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started, 10)
    profile = tempfile.mkdtemp(prefix="ps-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        yield driver, port
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.browser
def test_verdict_buttons_evidence_and_review_sample_in_the_browser(alert_config):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    cfg = alert_config(dashboard={"token": TOKEN}, alerts={"review_max_per_hour": 3600})
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    with page_in_chromium(cfg) as (driver, port):
        wait = WebDriverWait(driver, 30, ignored_exceptions=(StaleElementReferenceException,))
        driver.get(f"http://127.0.0.1:{port}/?token={TOKEN}")
        wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
        driver.find_element(By.ID, "operator").clear()
        driver.find_element(By.ID, "operator").send_keys("grace")

        # a flagged part and a passed one go through the broker and the service while the page is open
        # (p-2's scratch peaks on its middle frame, the one its review shows)
        results = part_run([("p-1", [(0.9, 0.8)] * 3), ("p-2", [(0.3, 0.2), (0.35, 0.2), (0.3, 0.2)]),
                            (None, [(0.1, 0.1)])])
        refs, payloads = publish_frames(cfg, "cam-1", range(len(results)))
        publish(cfg, with_frames(results, refs))
        with AlertService(cfg, "t1") as service:
            drain(service, len(results))
            decided = review_slot(time.time_ns(), 3600)
            # until the slot has ended: the sweep then turns its candidate into a review item
            assert wait_for(lambda: service.process_batch(timeout_ms=100) >= 0 and store.list_reviews(LINE), 10)
            assert review_slot(time.time_ns(), 3600) > decided
            assert wait_for(lambda: settled(store))
        (alert,) = store.list_alerts(LINE)
        (review,) = store.list_reviews(LINE)

        # the alert's row links the part's full-resolution frames (read back after the alert was raised)
        row = f'tr[data-alert-id="{alert.alert_id}"]'
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, f"{row} a.evidence")) == 3)
        links = driver.find_elements(By.CSS_SELECTOR, f"{row} a.evidence")
        assert [link.text for link in links] == ["#0", "#1", "#2"]
        assert "full frames cam-1:" in driver.find_element(By.CSS_SELECTOR, f"{row} .evidence-frames").text
        for seq, link in enumerate(links):
            assert httpx.get(link.get_attribute("href")).content == payloads[seq]  # the link carries the token

        def stored(subject: VerdictSubject, subject_id: str) -> tuple | None:
            """The stored verdict's label, defect and who gave it."""
            v = store.verdict(subject, subject_id)
            return (v.label, v.defect_type, v.by) if v else None

        driver.find_element(By.CSS_SELECTOR, f"{row} button.false-alarm").click()
        assert wait_for(lambda: stored(VerdictSubject.alert, alert.alert_id) == ("false_alarm", None, "grace"), 15)
        wait.until(
            ec.text_to_be_present_in_element((By.CSS_SELECTOR, f"{row} td.verdict .given"), "false alarm by grace")
        )
        # corrected: confirmed, naming the defect seen from the line's defect types
        Select(driver.find_element(By.CSS_SELECTOR, f"{row} select.defect")).select_by_value("missing_screw")
        driver.find_element(By.CSS_SELECTOR, f"{row} button.confirm").click()
        assert wait_for(
            lambda: stored(VerdictSubject.alert, alert.alert_id) == ("confirmed", "missing_screw", "grace"), 15
        )
        wait.until(
            ec.text_to_be_present_in_element(
                (By.CSS_SELECTOR, f"{row} td.verdict .given"), "confirmed (missing_screw) by grace"
            )
        )
        assert [e.event for e in store.events(LINE)][-2:] == ["verdict", "verdict"]

        # the passed part to review: its peak frame, and the operator's verdict on it
        review_row = f'tr[data-review-id="{review.review_id}"]'
        img = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"{review_row} img.thumb")))
        peak = review.evidence[0].seq
        assert peak == 4
        assert httpx.get(img.get_attribute("src")).content == payloads[peak]
        assert driver.find_element(By.CSS_SELECTOR, f"{review_row} td.part").text == "p-2"
        driver.find_element(By.CSS_SELECTOR, f"{review_row} button.good").click()
        assert wait_for(lambda: stored(VerdictSubject.review, review.review_id) == ("good", None, "grace"), 15)
        wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, review_row)))
        assert store.list_reviews(LINE) == []
