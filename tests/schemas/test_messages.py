"""JSON messages: round trips, version checks, and dead-letter records."""

from __future__ import annotations

import pytest

from schemas import (
    DeadLetter, DefectAlert, InspectionResult, MalformedMessage, QuestionScore, UnsupportedSchemaVersion,
    alert_id_for,
)
from schemas.dead_letter import record_size
from schemas.result import FrameRef


def result() -> InspectionResult:
    return InspectionResult(
        line_id="line-a", camera_id="cam-1", seq=3, capture_ns=10, model_id="m1", worker_id="w1",
        scores=[QuestionScore(question_id="scratch", score=0.9, threshold=0.5, defect_type="scratch",
                              above_threshold=True)],
    )


def test_result_round_trip_and_key() -> None:
    key, value, headers = result().to_record()
    assert key == b"cam-1" and ("ps-kind", b"inspection-result") in headers
    assert InspectionResult.from_record(value, headers) == result()


def test_future_and_past_versions_are_refused_before_parsing() -> None:
    _, value, _ = result().to_record()
    current = InspectionResult.SCHEMA_VERSION
    for other in (current + 1, current - 1):
        with pytest.raises(UnsupportedSchemaVersion):
            InspectionResult.from_record(value, [("ps-schema", str(other).encode())])
        body = value.replace(f'"schema_version":{current}'.encode(), f'"schema_version":{other}'.encode())
        assert body != value
        with pytest.raises(UnsupportedSchemaVersion):
            InspectionResult.from_json(body)


def test_a_result_names_where_its_frame_lies() -> None:
    with_frame = result().model_copy(update={"frame": FrameRef(topic="frames", partition=2, offset=1234)})
    _, value, headers = with_frame.to_record()
    assert InspectionResult.from_record(value, headers).frame == FrameRef(topic="frames", partition=2, offset=1234)
    for bad in ('{"topic":"frames","partition":-1,"offset":0}', '{"topic":"","partition":0,"offset":0}',
                '{"topic":"frames","partition":0}'):
        with pytest.raises(MalformedMessage):
            InspectionResult.from_json(value.replace(b'"frame":{"topic":"frames","partition":2,"offset":1234}',
                                                     bad.encode()))


@pytest.mark.parametrize("value", [b"", b"{", b"[]", b'{"line_id": 3}', b"\xff" * 10])
def test_garbage_is_a_typed_error(value: bytes) -> None:
    with pytest.raises(MalformedMessage):
        InspectionResult.from_json(value)


def test_scores_must_be_probabilities() -> None:
    with pytest.raises(ValueError):
        QuestionScore(question_id="q", score=1.5, threshold=0.5, defect_type="d", above_threshold=True)


def test_alert_id_depends_only_on_the_cause() -> None:
    a = alert_id_for("line-a", "cam-1", "scratch", 40)
    assert a == alert_id_for("line-a", "cam-1", "scratch", 40)
    assert len({a, alert_id_for("line-a", "cam-1", "scratch", 41), alert_id_for("line-a", "cam-2", "scratch", 40)}) == 3
    alert = DefectAlert(
        alert_id=a, line_id="line-a", camera_id="cam-1", question_id="scratch", question="Is there a scratch?",
        defect_type="scratch", score=0.9, threshold=0.5, first_seq=40, last_seq=42, first_capture_ns=1,
        trigger_capture_ns=2, raised_ns=3, model_id="m1",
    )
    assert DefectAlert.from_json(alert.to_json()) == alert


def test_dead_letter_keeps_the_original_record() -> None:
    original = [("ps-schema", b"9"), ("ps-camera", b"cam-1")]
    dl = DeadLetter(reason="unsupported-version", error="v9", source_topic="frames", source_partition=2,
                    source_offset=17, service="inference/w1", key=b"cam-1", value=b"jpeg", headers=original)
    key, value, headers = dl.to_record(max_bytes=10_000)
    assert key == b"cam-1" and value == b"jpeg" and headers[:2] == original
    back = DeadLetter.from_record(key, value, headers)
    assert (back.reason, back.source_topic, back.source_partition, back.source_offset) == (
        "unsupported-version", "frames", 2, 17)
    assert back.headers == original


def test_part_scores_aggregate_like_the_formulas() -> None:
    from schemas.part import PartScores, aggregate_scores

    scores = [0.1, 0.9, 0.5, 0.7]
    assert aggregate_scores(scores, "mean") == pytest.approx(0.55)
    assert aggregate_scores(scores, "top3") == pytest.approx((0.9 + 0.7 + 0.5) / 3)
    assert aggregate_scores(scores, "noisy_or") == pytest.approx(1 - 0.9 * 0.1 * 0.5 * 0.3)
    # the running form survives a JSON round trip (the alert service keeps it in Redis)
    acc = PartScores.of(scores[:2])
    acc = PartScores.model_validate_json(acc.model_dump_json())
    for s in scores[2:]:
        acc.add(s)
    assert acc.value("top3") == pytest.approx(aggregate_scores(scores, "top3"))
    assert aggregate_scores([], "mean") == 0.0


def test_a_frame_carries_a_part_id_from_its_header() -> None:
    from schemas.frame import FrameMessage

    frame = FrameMessage(line_id="l", camera_id="c", seq=1, capture_ns=1, width=2, height=2, payload=b"x",
                         part_id="lot7-0042")
    key, value, headers = frame.to_record()
    assert ("ps-part-id", b"lot7-0042") in headers
    assert FrameMessage.from_record(key, value, headers).part_id == "lot7-0042"
    bad = [(n, v) if n != "ps-part-id" else (n, b"no spaces allowed") for n, v in headers]
    with pytest.raises(MalformedMessage):
        FrameMessage.from_record(key, value, bad)


def test_a_dead_letter_for_a_consumed_record_keeps_its_key_value_and_non_null_headers() -> None:
    from types import SimpleNamespace

    record = SimpleNamespace(topic="frames", partition=1, offset=42, key=b"cam-1", value=b"jpeg",
                             headers=[("ps-line", b"line-a"), ("ps-empty", None)])
    dl = DeadLetter.for_record(record, "undecodable", "not a JPEG", service="inference/w1")
    assert (dl.source_topic, dl.source_partition, dl.source_offset, dl.service) == ("frames", 1, 42, "inference/w1")
    assert (dl.key, dl.value, dl.headers, dl.reason, dl.error) == (
        b"cam-1", b"jpeg", [("ps-line", b"line-a")], "undecodable", "not a JPEG")
    assert DeadLetter.for_record(SimpleNamespace(**{**vars(record), "headers": None}), "r", "e", "s").headers == []


def _kafka_python_estimate(key: bytes | None, value: bytes, headers: list) -> int:
    from kafka.record.default_records import DefaultRecordBatchBuilder

    return DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)


def test_record_size_is_never_below_what_kafka_python_counts() -> None:
    for key, value, headers in [(None, b"", []), (b"k" * 300, b"v" * 70_000, [("h" * 200, b"x" * 20_000)] * 3),
                                (b"cam-1", b"\xff" * 1_048_250, [(f"ps-{i}", b"1" * 129) for i in range(12)])]:
        assert record_size(key, value, headers) >= _kafka_python_estimate(key, value, headers)


def test_a_dead_letter_too_big_keeps_a_cut_value_with_the_original_size_and_digest() -> None:
    import hashlib

    value = bytes(range(256)) * 4096  # 1 MiB
    original = [("ps-camera", b"cam-1"), ("ps-line", b"line-a")]
    dl = DeadLetter(reason="undecodable", error="e" * 5000, source_topic="frames", source_partition=0,
                    source_offset=7, service="inference/w1", key=b"cam-1", value=value, headers=original)
    limit = 1_000_000
    key, cut, headers = dl.to_record(max_bytes=limit)
    assert record_size(key, cut, headers) <= limit and _kafka_python_estimate(key, cut, headers) <= limit
    assert record_size(key, cut, headers) > limit - 64, "the cut keeps as much of the value as fits"
    assert key == b"cam-1" and value.startswith(cut) and headers[:2] == original
    back = DeadLetter.from_record(key, cut, headers)
    assert back.truncated == ("value",) and back.original_size == len(value)
    assert back.original_sha256 == hashlib.sha256(value).hexdigest()
    assert (back.reason, back.source_offset, back.headers) == ("undecodable", 7, original)
    whole = DeadLetter.from_record(*dl.to_record(max_bytes=2 * limit))
    assert whole.value == value and whole.truncated == () and whole.original_size is None


def test_a_dead_letter_of_huge_headers_or_key_drops_them_until_it_fits() -> None:
    huge_headers = [("ps-camera", b"cam-1"), *[(f"junk-{i}", b"j" * 100_000) for i in range(10)]]
    dl = DeadLetter(reason="malformed", error="header too long", source_topic="frames", source_partition=0,
                    source_offset=1, service="s", key=b"cam-1", value=b"jpeg", headers=huge_headers)
    key, value, headers = dl.to_record(max_bytes=250_000)
    assert record_size(key, value, headers) <= 250_000
    back = DeadLetter.from_record(key, value, headers)
    # as many of the original headers as fit, in order, then as much of the value as fits
    assert back.truncated == ("headers",) and back.headers == huge_headers[:3] and value == b"jpeg"
    huge_key = dl.model_copy(update={"key": b"k" * 300_000, "headers": [], "value": b"v" * 100})
    key, value, headers = huge_key.to_record(max_bytes=250_000)
    assert record_size(key, value, headers) <= 250_000 and b"k" * 200_000 in key
    assert DeadLetter.from_record(key, value, headers).truncated == ("value", "key")
