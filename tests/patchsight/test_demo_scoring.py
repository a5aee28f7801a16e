"""How the demo scores alerts against the synthetic line's ground truth."""

from patchsight.demo import DefectEvent, score_alerts
from schemas.alert import DefectAlert


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
