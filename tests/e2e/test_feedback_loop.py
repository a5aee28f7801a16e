"""From operator feedback to fewer false alarms (issue 33), end to end on the real broker and Redis.

The shipped bundle, calibrated on one line's own recordings; then one question's part threshold
is set far too low (stain, as a hand-set or badly calibrated threshold would be), so a replay of
the line flags many good parts. An operator gives a verdict on every alert (the recordings'
truth stands in for the operator's eye), ``feedback export`` writes the verdicts and the
alerts' evidence frames as a labelled recording, ``model calibrate`` refits the thresholds on
the line's recordings and the feedback, and the same replay again flags fewer good parts and
misses no defective part.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from e2e_helpers import alerts_caught_up, read_results, services, wait_for

from alerts.store import RedisAlertStore, connect
from ingest.recording import Recording, find_recordings
from ingest.replay import replay
from ingest.synth import write_recordings
from model.bundle import load_bundle
from patchsight.demo import DEFAULT_CONFIG, REPO_ROOT, PartsSeen, findings_of, part_report_from_alerts
from patchsight.feedback import export_feedback
from runtime.topics import ensure_topics
from schemas.alert import DefectAlert
from schemas.config import PatchsightConfig
from training.calibrate import calibrate

LINE = "line-a"
FRAMES = 240  # per camera
BROKEN = "stain"


@pytest.fixture(scope="module")
def line_recordings(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """The line's calibration recordings and the recordings replayed (other seeds, never used for training)."""
    out = tmp_path_factory.mktemp("loop-recordings")
    calibration = write_recordings(out / "calibration", lines=1, cameras=2, frames=FRAMES, seed=3101, defect_rate=0.3)
    replayed = write_recordings(out / "replayed", lines=1, cameras=2, frames=FRAMES, seed=3102, defect_rate=0.3)
    return calibration, replayed


@pytest.fixture(scope="module")
def line_bundle(tmp_path_factory: pytest.TempPathFactory, line_recordings) -> Path:
    """The shipped bundle calibrated on the line's recordings, with the stain threshold then set far too low:
    at the median score of the line's frames, where about half of the good parts' means lie above it."""
    path = tmp_path_factory.mktemp("loop-bundle") / "bundle"
    shutil.copytree(REPO_ROOT / "models" / "default", path)
    calibrate(path, line_recordings[0], cache_dir=path.parent / "cache", log=lambda m: None,
              max_false_alarm_rate=0.02)
    spec = json.loads((path / "bundle.json").read_text())
    edges = spec["score_reference"]["questions"][BROKEN]["edges"]  # the deciles of its scores on these recordings
    spec["parts"]["thresholds"][BROKEN] = edges[len(edges) // 2]
    (path / "bundle.json").write_text(json.dumps(spec, indent=2))
    return path


def line_config(make_config, unique, bundle: Path, recordings: list[Path], round_: int) -> PatchsightConfig:
    """The demo's line-a with the recordings' cameras; each round its own topics, groups and Redis keys."""
    demo = yaml.safe_load(DEFAULT_CONFIG.read_text())
    line = next(section for section in demo["lines"] if section["id"] == LINE)
    cameras = [{"id": Recording(r).meta.camera_id, "fps": 10.0} for r in recordings]
    return make_config(
        model={"bundle": str(bundle)},
        lines=[{**line, "cameras": cameras, "alert_policy": {"part_timeout_s": 1.0}}],
        kafka={"topics": {"frames": unique(f"frames-{round_}"), "results": unique(f"results-{round_}"),
                          "dead_letter": unique(f"dlq-{round_}"), "partitions": 2}},
        inference={"group_id": unique(f"infer-{round_}"), "metrics_port": 0},
        alerts={"group_id": unique(f"alerts-{round_}"), "key_prefix": unique(f"ps-{round_}"), "metrics_port": 0,
                "review_max_per_hour": 0},
    )


def run_line(cfg: PatchsightConfig, bundle: Path, recordings: list[Path]) -> tuple[RedisAlertStore, list[DefectAlert]]:
    """Replay the recordings through a worker and the alert service; every part decided, every frame kept."""
    ensure_topics(cfg.kafka)
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    frames = sum(len(Recording(r).entries) for r in recordings)
    with services(cfg, load_bundle(bundle, device="cpu")):
        assert replay(recordings, cfg, speed=None, timestamps="recorded").frames == frames
        assert wait_for(lambda: len(read_results(cfg)) >= frames, 300), "some frames have no result"
        assert wait_for(lambda: alerts_caught_up(cfg), 60)
        # the last part of each camera is decided when its camera has been quiet for part_timeout_s
        assert wait_for(lambda: not store.wanted_evidence() and all(
            store.load_part_state(LINE, Recording(r).meta.camera_id).part is None for r in recordings), 60)
    return store, store.list_alerts(LINE, unresolved_only=False)


def report(alerts: list[DefectAlert], recordings: list[Path], cfg: PatchsightConfig) -> PartsSeen:
    questions = cfg.line(LINE).questions
    return part_report_from_alerts(alerts, [Recording(r) for r in recordings], [q.id for q in questions],
                                   {q.id: q.defect_type for q in questions})


def judge(store: RedisAlertStore, alerts: list[DefectAlert], recordings: list[Path], cfg: PatchsightConfig) -> int:
    """An operator's verdict on every alert, from what the part really has; returns how many were false alarms."""
    defect_type_of = {q.id: q.defect_type for q in cfg.line(LINE).questions}
    truth = {Recording(r).meta.camera_id: {e.seq: e.truth for e in Recording(r).entries} for r in recordings}
    false_alarms = 0
    for alert in alerts:
        shown = [t for seq, t in truth[alert.camera_id].items()
                 if alert.first_seq <= seq <= alert.last_seq and t is not None and t.part_id is not None]
        has = {d for t in shown for d in t.defects}
        alerted = {defect_type_of[q] for q in findings_of(alert)}
        seen = sorted(has & alerted)
        if seen:  # the operator names the defect seen, so a finding for another one labels nothing
            store.record_verdict(alert.alert_id, True, "ann", defect_type=seen[0])
        else:
            store.record_verdict(alert.alert_id, False, "ann")
            false_alarms += 1
    return false_alarms


@pytest.mark.slow
def test_verdicts_on_a_replay_recalibrate_the_line_to_fewer_false_alarms(
    make_config, unique, line_bundle: Path, line_recordings, tmp_path: Path
) -> None:
    calibration, replayed = line_recordings
    cfg = line_config(make_config, unique, line_bundle, replayed, 1)
    store, alerts = run_line(cfg, line_bundle, replayed)
    before = report(alerts, replayed, cfg).report
    stain_flagged = before["by_defect_type"][BROKEN]["flagged"]
    assert stain_flagged >= 3, f"the broken threshold should flag good parts: {before['overall']}"

    assert judge(store, alerts, replayed, cfg) >= stain_flagged
    exported = export_feedback(store, cfg.line(LINE), tmp_path / "feedback")
    assert exported.parts["good"] >= stain_flagged and exported.skipped_no_evidence == 0
    # every alert's part comes whole: its scored frames, each with the box the tracker drew on it
    feedback = find_recordings([tmp_path / "feedback"])
    entries = [e for r in feedback for e in Recording(r).entries]
    assert len(entries) > 3 * len(alerts) and all(e.truth.part_box is not None for e in entries)

    too_low = json.loads((line_bundle / "bundle.json").read_text())["parts"]["thresholds"][BROKEN]
    calibrate(line_bundle, [*calibration, *feedback], cache_dir=line_bundle.parent / "cache", log=lambda m: None,
              max_false_alarm_rate=0.02)
    assert json.loads((line_bundle / "bundle.json").read_text())["parts"]["thresholds"][BROKEN] > too_low

    again_cfg = line_config(make_config, unique, line_bundle, replayed, 2)
    _, again = run_line(again_cfg, line_bundle, replayed)
    after = report(again, replayed, again_cfg).report
    print("before", before["overall"], "\nafter", after["overall"])
    assert after["overall"]["flagged"] < before["overall"]["flagged"], (before["overall"], after["overall"])
    assert after["by_defect_type"][BROKEN]["flagged"] < stain_flagged
    assert after["overall"]["caught"] >= before["overall"]["caught"], (before["overall"], after["overall"])
