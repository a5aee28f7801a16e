"""The review sample of passed parts: one per slot (N per line and clock hour), the nearest a threshold,
with its peak frame kept as evidence, and operators' verdicts on it through the dashboard API."""

from __future__ import annotations

import time

import pytest
from alert_helpers import LINE, T0, drain, part_run, publish
from fastapi.testclient import TestClient
from test_evidence import publish_frames, settled, with_frames
from test_notifications import wait_for

from alerts.dashboard import create_app
from alerts.review import review_slot
from alerts.service import AlertService
from alerts.store import RedisAlertStore, ReviewNotFound, connect
from schemas.feedback import ReviewItem, VerdictSubject, review_id_for


def test_slots_cut_each_clock_hour_into_n():
    hour = 3600 * 10**9
    assert [review_slot(t, 6) for t in (0, 599 * 10**9, 600 * 10**9, hour - 1, hour)] == [0, 0, 1, 5, 6]
    # over a day, every clock hour holds exactly N slots
    for per_hour in (1, 6, 7, 3600):
        per_clock_hour: dict[int, set[int]] = {}
        for second in range(0, 86_400, 1 if per_hour == 3600 else 13):
            now_s = T0 // 10**9 // 3600 * 3600 + second  # from the top of an hour
            per_clock_hour.setdefault(now_s // 3600, set()).add(review_slot(now_s * 10**9, per_hour))
        assert {len(slots) for slots in per_clock_hour.values()} == {per_hour}, per_hour


def candidate(n: int, closeness: float) -> ReviewItem:
    return ReviewItem(
        review_id=review_id_for(f"part{n}", "cam-1"),
        line_id=LINE,
        camera_id="cam-1",
        part_id=f"p-{n}",
        source="tracker",
        part_key=f"part{n}",
        closeness=closeness,
        scores={"scratch": closeness * 0.6},
        thresholds={"scratch": 0.6},
        first_seq=n,
        last_seq=n,
        first_capture_ns=T0,
        model_id="m",
        sampled_ns=T0 + n,
    )


def test_one_review_per_slot_and_it_is_the_nearest_a_threshold(alert_config):
    cfg = alert_config()
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    offers = [(100, 0.5), (100, 0.9), (100, 0.7), (101, 0.2), (101, 0.1), (102, 0.3), (102, 0.95)]
    outcomes = [store.offer_review(candidate(n, c), LINE, slot) for n, (slot, c) in enumerate(offers)]
    assert [o for o, _ in outcomes] == ["candidate", "candidate", "kept", "candidate", "kept", "candidate", "candidate"]
    # a slot's candidate becomes a review item when a later slot's first part arrives
    assert [p for _, p in outcomes] == [
        None,
        None,
        None,
        candidate(1, 0).review_id,
        None,
        candidate(3, 0).review_id,
        None,
    ]
    assert store.offer_review(candidate(9, 0.99), LINE, 99) == ("late", None)
    assert store.offer_review(None, LINE, 102) == ("kept", None)  # the slot has not ended
    assert store.offer_review(None, LINE, 103) == ("closed", candidate(6, 0).review_id)
    assert store.offer_review(None, LINE, 104) == ("closed", None)  # nothing held
    reviews = store.list_reviews(LINE)
    assert sorted(r.part_id for r in reviews) == ["p-1", "p-3", "p-6"]
    assert {r.closeness for r in reviews} == {0.9, 0.2, 0.95}
    assert store.get_review(candidate(1, 0).review_id) == candidate(1, 0.9)


def test_passed_parts_through_the_service_are_sampled_within_the_cap(alert_config):
    cfg = alert_config(alerts={"review_max_per_hour": 3600})  # one-second slots, so the test sees several
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    # twelve passed parts; each part's scratch peaks on its second frame
    parts = [(f"p-{i}", [(0.1, 0.1), (0.2 + 0.02 * i, 0.1), (0.1, 0.1)]) for i in range(12)]
    results = part_run([*parts, (None, [(0.1, 0.1)])])
    refs, payloads = publish_frames(cfg, "cam-1", range(len(results)))
    publish(cfg, with_frames(results, refs))
    started = time.time_ns()
    with AlertService(cfg, "t1") as service:
        drain(service, len(results))
        decided = time.time_ns()
        # the sweep closes the last slot once it has ended
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and review_slot(time.time_ns(), 3600) <= review_slot(decided, 3600) + 1:
            service.process_batch(timeout_ms=200)
        service.process_batch(timeout_ms=200)
        assert wait_for(lambda: settled(store))
        reviews = store.list_reviews(LINE)
        assert service.metrics.reviews.labels(LINE)._value.get() == len(reviews)
    assert store.list_alerts(LINE) == []
    slots = [review_slot(r.sampled_ns, 3600) for r in reviews]
    spanned = review_slot(decided, 3600) - review_slot(started, 3600) + 1
    assert 1 <= len(reviews) <= spanned and len(set(slots)) == len(slots)  # at most one per slot
    for r in reviews:
        i = int(r.part_id.split("-")[1])
        assert r.closeness == pytest.approx(max((0.2 + 0.02 * i + 0.2) / 3 / 0.6, 0.1 / 0.5))
        peak = 3 * i + 1
        assert r.evidence[0].seq == peak
        # its frames, the peak first
        assert [f.seq for f in r.evidence] == [peak, peak - 1, peak + 1]
        assert store.evidence_frames(VerdictSubject.review, r.review_id) == [f"cam-1:{s}" for s in range(peak - 1, peak + 2)]
        for seq in range(peak - 1, peak + 2):
            assert store.evidence(VerdictSubject.review, r.review_id, f"cam-1:{seq}") == payloads[seq]

    client = TestClient(create_app(cfg))
    listed = client.get("/api/reviews", params={"line": LINE}).json()
    assert sorted(r["review_id"] for r in listed) == sorted(r.review_id for r in reviews)
    first = reviews[0]
    frame = client.get(f"/api/reviews/{first.review_id}/evidence/cam-1/{first.evidence[0].seq}.jpg")
    assert frame.status_code == 200 and frame.content == payloads[first.evidence[0].seq]
    given = client.post(
        f"/api/reviews/{first.review_id}/verdict", json={"verdict": "defective", "defect_type": "dent", "by": "ivan"}
    )
    assert given.status_code == 200 and given.json()["label"] == "defective"
    assert store.verdict(VerdictSubject.review, first.review_id).defect_type == "dent"
    assert first.review_id not in [r["review_id"] for r in client.get("/api/reviews").json()]  # reviewed
    assert client.post("/api/reviews/nope/verdict", json={"verdict": "good"}).status_code == 404
    assert client.post(f"/api/reviews/{first.review_id}/verdict", json={"verdict": "confirmed"}).status_code == 422
    with pytest.raises(ReviewNotFound):
        store.record_review_verdict("nope", False, "ivan")
