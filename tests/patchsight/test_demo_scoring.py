"""How the demo scores alerts against the synthetic line's ground truth."""

import json
from pathlib import Path

import pytest

from ingest.recording import FrameTruth, Recording, RecordingMeta, RecordingWriter
from patchsight.demo import DefectEvent, _summary, part_report_from_alerts, score_alerts
from schemas.alert import DefectAlert, Finding
from schemas.config import PatchsightConfig
from training.parts import REPORT_KEYS


def alert(first_seq: int, last_seq: int, last_defect_seq: int | None, camera: str = "cam1") -> DefectAlert:
    return DefectAlert(alert_id=f"a{first_seq}", line_id="line-a", camera_id=camera, question_id="missing_screw",
                       question="Is a screw missing?", defect_type="missing_screw", score=0.9, threshold=0.7,
                       first_seq=first_seq, last_seq=last_seq, last_defect_seq=last_defect_seq, first_capture_ns=0,
                       trigger_capture_ns=0, raised_ns=0, model_id="m")


EVENT = DefectEvent("line-a", "cam1", "missing_screw", part_id=13, seqs=(192, 204))


def counts(alerts: list[DefectAlert]) -> tuple[int, int, int, int]:
    """(caught, duplicates, false alerts, missed) of the one event."""
    s = score_alerts(alerts, [EVENT], {"missing_screw": "missing_screw"})["missing_screw"]
    return s.caught, s.duplicates, s.false_alerts, s.missed


def test_an_alert_held_open_into_a_defective_part_catches_it():
    assert counts([alert(182, 185, 215)]) == (1, 0, 0, 0)


def test_an_alert_that_ended_before_the_part_is_false_and_the_part_missed():
    assert counts([alert(170, 173, 180)]) == (0, 0, 1, 1)


def test_a_second_alert_on_a_caught_part_is_a_duplicate_and_another_camera_never_matches():
    assert counts([alert(190, 194, 200), alert(201, 203, 204), alert(192, 196, 204, camera="cam2")]) == (1, 1, 1, 0)


# --- per part: alerts with findings against the recordings' parts -------------------------------

QUESTIONS = ["scratch", "crack"]
TYPES = {"scratch": "scratch", "crack": "crack"}
# one camera: an empty belt between three parts; part 2 has a scratch, parts 1 and 3 are good
LAYOUT = [(0, 2, None, False), (3, 9, 1, False), (10, 12, None, False), (13, 19, 2, True), (20, 22, None, False),
          (23, 29, 3, False)]


@pytest.fixture()
def recording(tmp_path) -> Path:
    path = tmp_path / "line-a" / "line-a-cam1"
    meta = RecordingMeta(line_id="line-a", camera_id="line-a-cam1", fps=10, width=64, height=48, source="test",
                         labelled=True)
    with RecordingWriter(path, meta) as writer:
        for first, last, part, scratch in LAYOUT:
            for seq in range(first, last + 1):
                truth = FrameTruth(part_id=part, answers={"scratch": scratch, "crack": False})
                writer.append(seq, seq * 100_000_000, b"not a jpeg, never decoded", truth)
    return path


def part_alert(first_seq: int, last_seq: int, *questions: str, camera: str = "line-a-cam1") -> DefectAlert:
    findings = [Finding(question_id=q, question=f"{q}?", defect_type=TYPES[q], score=0.9, threshold=0.5, camera_id=camera)
                for q in questions]
    return DefectAlert(alert_id=f"p{first_seq}-{'-'.join(questions)}", line_id="line-a", camera_id=camera,
                       part_id=f"{camera}.{first_seq}", findings=findings, question_id=questions[0],
                       question=f"{questions[0]}?", defect_type=TYPES[questions[0]], score=0.9, threshold=0.5,
                       first_seq=first_seq, last_seq=last_seq, first_capture_ns=0, trigger_capture_ns=0, raised_ns=0,
                       model_id="m")


def overall(alerts: list[DefectAlert], recording: Path) -> dict:
    return part_report_from_alerts(alerts, [Recording(recording)], QUESTIONS, TYPES).report["overall"]


def test_without_alerts_every_part_is_counted_and_none_flagged(recording):
    o = overall([], recording)
    assert (o["parts"], o["defective"], o["good"], o["caught"], o["flagged"]) == (3, 1, 2, 0, 0)
    assert o["detection_rate"] == 0.0 and o["false_alarm_rate"] == 0.0


def test_a_clean_part_with_an_alert_counts_as_flagged(recording):
    seen = part_report_from_alerts([part_alert(3, 9, "crack")], [Recording(recording)], QUESTIONS, TYPES)
    o = seen.report["overall"]
    assert (o["good"], o["flagged"], o["false_alarm_rate"]) == (2, 1, 0.5)
    assert seen.report["by_defect_type"]["crack"]["flagged"] == 1 and seen.report["by_defect_type"]["scratch"]["flagged"] == 0


def test_a_defective_part_with_an_alert_for_its_defect_is_caught(recording):
    o = overall([part_alert(13, 19, "scratch")], recording)
    assert (o["defective"], o["caught"], o["missed"], o["detection_rate"], o["flagged"]) == (1, 1, 0, 1.0, 0)


def test_two_alerts_on_one_part_count_once(recording):
    alerts = [part_alert(13, 16, "scratch"), part_alert(17, 19, "scratch", "crack"),
              part_alert(23, 26, "crack"), part_alert(27, 29, "scratch")]
    report = part_report_from_alerts(alerts, [Recording(recording)], QUESTIONS, TYPES).report
    o = report["overall"]
    assert (o["caught"], o["defective"], o["flagged"], o["good"]) == (1, 1, 1, 2)
    assert report["by_defect_type"]["scratch"]["caught"] == 1 and report["by_defect_type"]["crack"]["defective"] == 0


def test_a_defective_part_alerted_for_another_defect_is_missed_for_the_wrong_defect(recording):
    o = overall([part_alert(13, 19, "crack")], recording)
    assert (o["caught"], o["missed"], o["wrong_defect"], o["flagged"]) == (0, 1, 1, 0)


def test_an_alert_maps_to_the_parts_its_frames_show_on_its_camera_whatever_its_part_id(recording):
    # spans the empty belt into part 3: both parts touched; another camera's alert touches nothing here
    seen = part_report_from_alerts([part_alert(8, 24, "crack"), part_alert(0, 2, "crack"),
                                    part_alert(3, 9, "crack", camera="line-a-cam2")],
                                   [Recording(recording)], QUESTIONS, TYPES)
    o = seen.report["overall"]
    assert (o["flagged"], o["wrong_defect"]) == (2, 1)
    assert (seen.alerts_on_several_parts, seen.alerts_without_part) == (1, 2)


def test_each_finding_of_a_part_alert_is_scored_on_its_own():
    ev = DefectEvent("line-a", "cam1", "scratch", part_id=2, seqs=(13, 19))
    a = part_alert(13, 19, "scratch", "crack", camera="cam1")
    scores = score_alerts([a], [ev], TYPES)
    assert (scores["scratch"].caught, scores["crack"].false_alerts) == (1, 1)


def test_the_summary_json_carries_the_per_part_report(recording, tmp_path):
    cfg = PatchsightConfig.model_validate({"lines": [{
        "id": "line-a", "cameras": [{"id": "line-a-cam1"}],
        "questions": [{"id": q, "text": f"Is there a {q}?", "defect_type": q} for q in QUESTIONS]}]})
    alerts = [part_alert(13, 19, "scratch"), part_alert(23, 29, "crack")]
    _summary(cfg, [recording], alerts, 30, 30, 0, 0, 0, 1.0, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    parts = summary["parts"]
    assert set(parts) == {"overall", "by_defect_type"} and set(parts["by_defect_type"]) == set(QUESTIONS)
    for row in [parts["overall"], *parts["by_defect_type"].values()]:
        assert set(row) == set(REPORT_KEYS)
    assert (parts["overall"]["caught"], parts["overall"]["flagged"]) == (1, 1)
    assert summary["by_defect_type"]["scratch"]["caught"] == 1 and summary["by_defect_type"]["crack"]["false_alerts"] == 1
