"""The per-part decision on its own: pure, no Redis or Kafka."""

from __future__ import annotations

import itertools

import pytest
from alert_helpers import CAMERA, LINE, T0, line_section, part_result, part_run
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.parts import PartRecord, PartState, decide_part, decide_timeout, merge_part, thumbnail_field
from schemas.alert import part_alert_id
from schemas.config import LineConfig
from schemas.part import aggregate_scores
from schemas.result import FrameRef, ResultStatus

SECOND = 1_000_000_000
LINE_CFG = LineConfig.model_validate(line_section({"part_timeout_s": 5}))
CLEAN, SCRATCHED = (0.1, 0.1), (0.9, 0.1)


def feed(results, state: PartState | None = None, line: LineConfig | None = LINE_CFG, seen_ns: int = T0):
    """Apply results in order; return (decisions, final state)."""
    state = state or PartState()
    decisions = []
    for r in results:
        d = decide_part(state, r, line, seen_ns)
        decisions.append(d)
        state = d.state
    return decisions, state


def verdicts(decisions):
    return [d.ended for d in decisions if d.ended is not None]


def test_a_part_is_decided_once_on_the_mean_of_its_frames_when_the_next_part_comes():
    results = part_run([("cam-1.1", [(0.9, 0.1), (0.7, 0.2), (0.5, 0.3)]), ("cam-1.2", [CLEAN])])
    decisions, state = feed(results)
    assert [d.ended is None for d in decisions] == [True, True, True, False]
    (v,) = verdicts(decisions)
    assert v.part_id == "cam-1.1" and v.ended_by == "next-part" and v.verdict == "flagged"
    assert v.part_key == part_alert_id(LINE, "cam-1.1", 0)
    assert (v.first_seq, v.last_seq, v.frames) == (0, 2, 3)
    assert v.scores["scratch"] == pytest.approx(0.7) and v.scores["missing-screw"] == pytest.approx(0.2)
    # the configured scratch threshold (0.6) overrides the worker's 0.5; missing-screw keeps the worker's
    (finding,) = v.findings
    assert (finding.question_id, finding.threshold, finding.camera_id) == ("scratch", 0.6, CAMERA)
    assert finding.question == "Is there a scratch on the lid?" and finding.defect_type == "scratch"
    assert state.part is not None and state.part.part_id == "cam-1.2"


@pytest.mark.parametrize("method", ["mean", "top3", "noisy_or"])
def test_the_part_aggregate_is_the_one_the_result_names(method):
    frames = [0.2, 0.35, 0.3, 0.1, 0.25]
    results = [part_result(i, "p1", scratch=s, aggregate=method) for i, s in enumerate(frames)]
    (v,) = verdicts(feed(results + [part_result(len(frames), None)])[0])
    assert v.scores["scratch"] == pytest.approx(aggregate_scores(frames, method))
    assert v.verdict == ("flagged" if aggregate_scores(frames, method) >= 0.6 else "passed")


def test_one_noisy_frame_does_not_flag_a_part_whose_other_frames_are_clean():
    results = part_run([("p1", [CLEAN, CLEAN, (0.95, 0.1), CLEAN, CLEAN]), (None, [CLEAN])])
    (v,) = verdicts(feed(results)[0])
    assert v.verdict == "passed" and v.findings == () and v.ended_by == "no-part"


def test_an_empty_belt_ends_the_part_and_a_stale_skip_does_not():
    results = part_run([("p1", [SCRATCHED, SCRATCHED])])
    stale = part_result(2, None, skip_reason="stale: 3.1s old, live limit 2s")
    decisions, state = feed(results + [stale])
    assert verdicts(decisions) == [] and state.part is not None and state.part.part_id == "p1"
    decisions, state = feed([part_result(3, "p1", 0.9), part_result(4, None)], state)
    (v,) = verdicts(decisions)
    assert v.ended_by == "no-part" and (v.first_seq, v.last_seq, v.frames) == (0, 3, 3) and state.part is None


def test_a_camera_that_goes_quiet_ends_its_part_after_the_timeout():
    _, state = feed(part_run([("p1", [SCRATCHED, SCRATCHED])]), seen_ns=T0)
    assert decide_timeout(state, LINE_CFG, LINE, CAMERA, T0 + 4 * SECOND) is None  # part_timeout_s is 5
    d = decide_timeout(state, LINE_CFG, LINE, CAMERA, T0 + 5 * SECOND)
    assert d is not None and d.state.part is None and d.state.rev == state.rev + 1
    assert d.ended.ended_by == "timeout" and d.ended.verdict == "flagged"
    assert d.state.last_seq == state.last_seq  # no frame was consumed
    assert decide_timeout(d.state, LINE_CFG, LINE, CAMERA, T0 + 60 * SECOND) is None  # nothing left in view
    # a frame of the same part after the timeout starts a new pass of it (merged into the same record)
    later = decide_part(d.state, part_result(2, "p1", 0.9), LINE_CFG, T0 + 6 * SECOND)
    assert later.ended is None and later.state.part.first_seq == 2


def test_several_questions_over_threshold_make_one_alert_listing_all_strongest_first():
    results = part_run([("p1", [(0.7, 0.9), (0.8, 0.95)]), (None, [CLEAN])])
    (v,) = verdicts(feed(results)[0])
    merged = merge_part(PartRecord(), None, v, now_ns=T0)
    assert merged.event == "raised" and merged.counts == {"flagged": 1, "inspected": 1}
    alert = merged.alert
    assert alert.alert_id == v.part_key and alert.part_id == "p1"
    assert [(f.question_id, f.score) for f in alert.findings] == [
        ("missing-screw", pytest.approx(0.925)), ("scratch", pytest.approx(0.75))]
    assert (alert.question_id, alert.defect_type) == ("missing-screw", "missing_screw")
    assert alert.score == alert.findings[0].score
    assert alert.threshold == 0.5 and (alert.first_seq, alert.last_seq) == (0, 1)
    assert merged.new_defect_types == ["missing_screw", "scratch"]


def test_a_clean_part_passes_and_a_part_with_no_scored_frame_is_unscored():
    (clean,) = verdicts(feed(part_run([("p1", [CLEAN, CLEAN]), (None, [CLEAN])]))[0])
    merged = merge_part(PartRecord(), None, clean, T0)
    assert clean.verdict == "passed" and merged.alert is None and merged.counts == {"passed": 1, "inspected": 1}
    skipped_part = part_result(0, "p2").model_copy(
        update={"status": ResultStatus.skipped, "scores": [], "skip_reason": "x"})
    (unseen,) = verdicts(feed([skipped_part, part_result(1, None)])[0])
    assert unseen.verdict == "unscored" and merge_part(PartRecord(), None, unseen, T0).counts == {"unscored": 1}


def decide_pass(camera: str, part: str, frames: list[tuple[float, float]], first: int = 0):
    results = part_run([(part, frames), (None, [CLEAN])], camera=camera, first=first, source="header")
    (v,) = verdicts(feed(results)[0])
    return v


def apply_all(verdicts_in_order):
    record, alert, counts, events = PartRecord(), None, {}, []
    for v in verdicts_in_order:
        merged = merge_part(record, alert, v, T0)
        record = merged.record
        if merged.alert is not None:
            alert = merged.alert
            events.append(merged.event)
        for name, delta in merged.counts.items():
            counts[name] = counts.get(name, 0) + delta
    return alert, {k: v for k, v in counts.items() if v}, events, record


def test_a_header_part_seen_by_two_cameras_is_one_alert_and_one_part_in_either_order():
    top = decide_pass("cam-1", "plc-77", [SCRATCHED, SCRATCHED])
    side = decide_pass("cam-2", "plc-77", [(0.1, 0.8), (0.1, 0.9)], first=40)
    assert top.part_key == side.part_key == part_alert_id(LINE, "plc-77")  # line-scoped: no camera, no epoch
    results = [apply_all(order) for order in ([top, side], [side, top])]
    for alert, counts, events, record in results:
        assert events == ["raised", "updated"]
        assert counts == {"flagged": 1, "inspected": 1}
        assert sorted((f.question_id, f.camera_id) for f in alert.findings) == [("missing-screw", "cam-2"),
                                                                                 ("scratch", "cam-1")]
        assert record.cameras == ["cam-1", "cam-2"] and record.verdict == "flagged"
    assert results[0][0].findings == results[1][0].findings  # the merge does not depend on the order
    assert results[0][0].camera_id == "cam-1" and results[1][0].camera_id == "cam-2"  # the camera that raised it


def test_a_header_part_passed_by_one_camera_and_flagged_by_the_other_moves_from_passed_to_flagged():
    passed = decide_pass("cam-2", "plc-78", [CLEAN, CLEAN])
    flagged = decide_pass("cam-1", "plc-78", [SCRATCHED, SCRATCHED])
    first = merge_part(PartRecord(), None, passed, T0)
    assert first.counts == {"passed": 1, "inspected": 1}
    second = merge_part(first.record, None, flagged, T0)
    assert second.counts == {"passed": -1, "flagged": 1} and second.event == "raised"
    # and flagged first: the clean pass changes nothing but the cameras
    third = merge_part(second.record, second.alert, passed, T0)
    assert third.counts == {} and third.alert is None and third.record.cameras == ["cam-1", "cam-2"]


def test_a_verdict_merged_twice_changes_nothing_the_second_time():
    v = decide_pass("cam-1", "plc-79", [SCRATCHED, (0.8, 0.9)])
    once = merge_part(PartRecord(), None, v, T0)
    twice = merge_part(once.record, once.alert, v, T0 + SECOND)
    assert twice.counts == {} and twice.alert is None and twice.event is None and twice.promote_thumbnail is None


def test_a_seq_restart_ends_the_part_and_tracked_ids_of_the_new_epoch_are_new_parts():
    _, state = feed(part_run([("cam-1.1", [SCRATCHED] * 3)], first=100))
    restarted = part_result(0, "cam-1.1", 0.9, capture_ns=T0 + 200 * 100_000_000)
    d = decide_part(state, restarted, LINE_CFG, T0)
    assert not d.redelivery and d.ended is not None and d.ended.ended_by == "seq-restart"
    assert d.ended.part_key == part_alert_id(LINE, "cam-1.1", 0) and d.state.epoch == 1
    (v,) = verdicts(feed([part_result(1, None, capture_ns=T0 + 201 * 100_000_000)], d.state)[0])
    assert v.part_key == part_alert_id(LINE, "cam-1.1", 1) != d.ended.part_key and v.first_seq == 0
    # header ids stay line-scoped across epochs
    _, hstate = feed(part_run([("plc-1", [SCRATCHED])], first=100, source="header"))
    h = decide_part(hstate, part_result(0, "plc-2", source="header", capture_ns=T0 + 10**12), LINE_CFG, T0)
    assert h.ended.part_key == part_alert_id(LINE, "plc-1")


def test_a_redelivered_result_is_recognised_and_changes_nothing():
    results = part_run([("p1", [SCRATCHED, SCRATCHED]), ("p2", [CLEAN])])
    _, state = feed(results)
    for r in results:
        d = decide_part(state, r, LINE_CFG, T0 + SECOND)
        assert d.redelivery and d.state is state and d.ended is None


def test_the_thumbnail_is_the_best_frame_of_the_flagged_questions_and_the_others_are_dropped():
    results = [
        part_result(0, "p1", scratch=0.7, screw=0.2),   # best scratch so far
        part_result(1, "p1", scratch=0.2, screw=0.55),  # best screw (not flagged in the end)
        part_result(2, "p1", scratch=0.95, screw=0.2),  # best scratch: frame 0 is no one's best any more
        part_result(3, "p1", scratch=0.8, screw=0.1),
    ]
    decisions, state = feed(results)
    assert [d.keep_thumbnail for d in decisions] == ["0:0", "0:1", "0:2", None]
    assert [d.drop_thumbnails for d in decisions] == [[], [], ["0:0"], []]
    end = decide_part(state, part_result(4, None), LINE_CFG, T0)
    v = end.ended
    assert [f.question_id for f in v.findings] == ["scratch"]
    assert (v.thumbnail, v.thumbnail_score) == (thumbnail_field(0, 2), 0.95)
    assert end.drop_thumbnails == ["0:1", "0:2"]  # every frame the part held; the store promotes first
    merged = merge_part(PartRecord(), None, v, T0)
    assert merged.promote_thumbnail == "0:2" and merged.record.thumbnail_score == 0.95
    # a second camera's better frame replaces it, a worse one does not
    better = decide_pass("cam-2", "p1", [(0.99, 0.1)])
    assert merge_part(merged.record, merged.alert, better, T0).promote_thumbnail == thumbnail_field(0, 0)
    worse = decide_pass("cam-2", "p1", [(0.9, 0.1)])
    assert merge_part(merged.record, merged.alert, worse, T0).promote_thumbnail is None


def located(results):
    """The results with where each frame lies on the frames topic (offset = seq)."""
    return [r.model_copy(update={"frame": FrameRef(topic="frames", partition=0, offset=r.seq)}) for r in results]


def test_the_evidence_is_every_scored_frame_led_by_the_flagged_questions_peaks():
    # scratch peaks on frame 2, missing-screw (not flagged) on frame 0
    results = located(part_run([("cam-1.1", [(0.6, 0.4), (0.7, 0.2), (0.9, 0.1), (0.8, 0.1)]), ("cam-1.2", [CLEAN])]))
    (v,) = verdicts(feed(results)[0])
    assert [f.seq for f in v.evidence] == [2, 0, 1, 3]
    assert {(f.topic, f.partition, f.offset) for f in v.evidence} == {("frames", 0, s) for s in range(4)}


def test_a_part_held_long_in_view_keeps_at_most_the_cap_spread_over_its_pass():
    results = located(part_run([("cam-1.1", [CLEAN] * 100), ("cam-1.2", [CLEAN])]))
    state, ended = PartState(), None
    for r in results:
        d = decide_part(state, r, LINE_CFG, T0, evidence_frames=8)
        state, ended = d.state, d.ended or ended
        assert state.part is None or len(state.part.frames) <= 8
    seqs = sorted(f.seq for f in ended.evidence)
    assert len(seqs) >= 4 and seqs[0] == 0 and seqs[-1] >= 64  # from the start to late in the pass, evenly
    assert len({b - a for a, b in zip(seqs, seqs[1:])}) == 1


def test_without_a_line_config_the_workers_thresholds_decide():
    (v,) = verdicts(feed(part_run([("p1", [(0.55, 0.1)] * 2), (None, [CLEAN])]), line=None)[0])
    assert v.verdict == "flagged" and v.findings[0].threshold == 0.5 and v.findings[0].question == "scratch"


def test_state_round_trips_through_json():
    _, state = feed(part_run([("p1", [SCRATCHED, (0.3, 0.7)])]))
    assert PartState.from_json(state.to_json()) == state
    assert PartState.from_json(None) == PartState()


frames = st.lists(st.tuples(st.sampled_from([None, "a", "b", "c"]), st.floats(0, 1), st.floats(0, 1)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(frames)
def test_any_stream_gives_the_same_verdicts_twice_and_a_replay_none(stream):
    results = [part_result(i, p, s, w) for i, (p, s, w) in enumerate(stream)]
    first, state = feed(results)
    again, _ = feed(results)
    assert [d.ended for d in first] == [d.ended for d in again]
    replay, replayed = feed(results, state)
    assert all(d.redelivery for d in replay) and replayed == state
    # every part shown is decided exactly once when the belt empties: one verdict per run of frames
    tail = decide_part(state, part_result(len(results), None), LINE_CFG, T0)
    ended = verdicts(first) + ([tail.ended] if tail.ended else [])
    runs = [p for p, _ in itertools.groupby(p for p, _, _ in stream)]
    assert [v.part_id for v in ended] == [p for p in runs if p is not None]
