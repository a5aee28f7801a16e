"""JSON messages: round trips, version checks, and dead-letter records."""

from __future__ import annotations

import pytest

from schemas import (
    DeadLetter, DefectAlert, InspectionResult, MalformedMessage, QuestionScore, UnsupportedSchemaVersion,
    alert_id_for,
)
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
    key, value, headers = dl.to_record()
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
