"""End to end: recordings -> replay -> Kafka -> worker -> Kafka -> alert service -> Redis.

Real broker, real Redis, a tiny random-weight model. One line's cameras are judged per part
(the worker's tracker finds each part, the alert service decides once per part), the other's
frame by frame (k-of-n). Checks that every frame gets a result, that the part line raises
exactly one alert per part of the recordings (its always-above question flags every part)
and counts each part once, that the frame line's alerts are exactly those the debounce
policy implies for its results, and that replaying the same recordings again adds no alert
and counts no part twice.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from e2e_helpers import alerts_caught_up, read_results, services, wait_for
from transformers import CLIPModel

from alerts.policy import DebounceState, decide
from alerts.store import RedisAlertStore, connect
from ingest.recording import Recording
from ingest.replay import replay
from ingest.synth import write_recordings
from model.bundle import Bundle, load_bundle
from model.clip_baseline import clip_tokenizer
from model.encoder import EncoderConfig, FrameEncoder, compact_clip_config
from model.head import HeadConfig, MLLMHead, TinyDecoderConfig
from runtime.topics import ensure_topics
from schemas.alert import part_alert_id
from schemas.config import PatchsightConfig
from schemas.result import InspectionResult, ResultStatus

FRAMES = 24  # per camera
QUESTIONS = [
    # threshold 0: every frame is above it, so every part is flagged (k-of-n: each camera raises
    # exactly one alert that never clears)
    {"id": "scratch", "text": "Is there a scratch on the part?", "defect_type": "scratch", "threshold": 0.0},
    # threshold 1: no score reaches it, so this question never alerts
    {"id": "crack", "text": "Is there a crack in the part?", "defect_type": "crack", "threshold": 1.0},
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    torch.manual_seed(0)
    tok = clip_tokenizer(num_merges=500)
    clip = CLIPModel(compact_clip_config(
        image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2, text_width=32,
        text_layers=1, text_heads=2, text_vocab_size=len(tok), text_max_positions=32, projection_dim=16,
    )).eval()
    encoder = FrameEncoder.from_clip(clip, EncoderConfig())
    decoder = TinyDecoderConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_positions=256)
    head = MLLMHead.create(HeadConfig.tiny(decoder=decoder), encoder=encoder, device="cpu")
    path = Bundle.create(encoder, head, "e2e-tiny", clip=clip, clip_tokenizer=tok).save(
        tmp_path_factory.mktemp("bundle"), dtype=torch.float32)
    return load_bundle(path, device="cpu")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("recordings")
    return write_recordings(out, lines=2, cameras=2, frames=FRAMES, seed=7, size=(160, 120))


def expected_alert_ids(cfg: PatchsightConfig, results: list[InspectionResult]) -> set[str]:
    """What the debounce policy implies for these results, camera by camera in seq order."""
    ids: set[str] = set()
    states: dict[str, DebounceState] = {}
    for result in sorted(results, key=lambda r: (r.camera_id, r.seq)):
        if result.part is not None or result.status == ResultStatus.skipped:
            continue
        state = states.get(result.camera_id, DebounceState())
        decision = decide(state, result, cfg.line(result.line_id))
        states[result.camera_id] = decision.state
        ids |= {r.alert_id for r in decision.raised}
    return ids


def truth_parts(recordings: list[Path]) -> dict[tuple[str, str], str]:
    """(line, camera) of each part of the recordings -> the id the tracker gives it: camera.first seq in view."""
    first: dict[tuple[str, str, int], int] = {}
    for r in recordings:
        rec = Recording(r)
        for e in rec.entries:
            if e.truth is not None and e.truth.part_id is not None:
                key = (rec.meta.line_id, rec.meta.camera_id, e.truth.part_id)
                first[key] = min(first.get(key, e.seq), e.seq)
    return {(line, f"{camera}.{seq}"): line for (line, camera, _), seq in first.items()}


@pytest.mark.slow
def test_replay_through_the_whole_pipeline(make_config, unique, bundle: Bundle, recordings: list[Path]) -> None:
    lines = sorted({Recording(r).meta.line_id for r in recordings})
    part_line, frame_line = lines
    cfg = make_config(
        lines=[{"id": line, "cameras": [{"id": Recording(r).meta.camera_id, "track_parts": line == part_line}
                                        for r in recordings if Recording(r).meta.line_id == line],
                "questions": QUESTIONS, "alert_policy": {"part_timeout_s": 1.0}} for line in lines],
        inference={"group_id": unique("infer"), "metrics_port": 0, "decode_threads": 1},
        alerts={"group_id": unique("alerts")},
    )
    ensure_topics(cfg.kafka)
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    frames = {(Recording(r).meta.camera_id, e.seq) for r in recordings for e in Recording(r).entries}
    assert len(frames) == 4 * FRAMES
    parts = {pid for (line, pid) in truth_parts(recordings) if line == part_line}
    assert len(parts) >= 2

    with services(cfg, bundle):
        # recorded timestamps: the second replay below is the very same frames, i.e. a redelivery
        first = replay(recordings, cfg, speed=None, timestamps="recorded")
        assert first.frames == len(frames) and first.counters["published"] == len(frames)
        assert wait_for(lambda: {(r.camera_id, r.seq) for r in read_results(cfg)} >= frames, 120), \
            "some frames have no result"
        assert wait_for(lambda: alerts_caught_up(cfg), 60)
        # the last part of each camera is decided when its camera has been quiet for part_timeout_s
        assert wait_for(lambda: store.part_counts(part_line).get("inspected", 0) >= len(parts), 30)
        results = read_results(cfg)
        alerts = store.list_alerts(unresolved_only=False)

        # every frame has a result; a clean run inspects each once
        assert {(r.camera_id, r.seq) for r in results} == frames
        assert len(results) == len(frames)
        # the part line: frames with a part are scored and name it, the others are not scored
        tracked = [r for r in results if r.line_id == part_line]
        assert {r.part.part_id for r in tracked if r.part is not None} == parts
        assert all(r.status == ResultStatus.skipped for r in tracked if r.part is None)
        # one alert per part, with its one finding; each part counted once
        part_alerts = [a for a in alerts if a.line_id == part_line]
        assert sorted(a.part_id for a in part_alerts) == sorted(parts)
        assert {a.alert_id for a in part_alerts} == {part_alert_id(part_line, pid) for pid in parts}
        assert all([f.question_id for f in a.findings] == ["scratch"] for a in part_alerts)
        assert store.part_counts(part_line) == {**store.part_counts(part_line), "inspected": len(parts),
                                                "flagged": len(parts), "passed": 0}
        # the frame line: exactly the alerts the policy implies, one per camera for the always-above question
        frame_alerts = [a for a in alerts if a.line_id == frame_line]
        assert {a.alert_id for a in frame_alerts} == expected_alert_ids(cfg, results)
        assert sorted((a.camera_id, a.question_id) for a in frame_alerts) == sorted(
            (camera, "scratch") for camera, line in {(r.camera_id, r.line_id) for r in results} if line == frame_line)
        assert all(a.model_id == "e2e-tiny" for a in alerts)

        # the same recordings again: same keys, seqs and capture times, so the alert service sees redeliveries
        second = replay(recordings, cfg, speed=None, timestamps="recorded")
        assert second.counters["published"] == len(frames)
        assert wait_for(lambda: len(read_results(cfg)) >= 2 * len(frames), 120)
        assert wait_for(lambda: alerts_caught_up(cfg), 60)
        time.sleep(2 * cfg.line(part_line).alert_policy.part_timeout_s)
        again = store.list_alerts(unresolved_only=False)
        assert store.part_counts(part_line)["inspected"] == len(parts), "a replay counted a part twice"

    assert sorted(a.alert_id for a in again) == sorted(a.alert_id for a in alerts), "a replay added alerts"
