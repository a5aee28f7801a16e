import time

import numpy as np
import pytest

from ingest.publisher import encode_jpeg
from ingest.record import record_camera, record_topic
from ingest.recording import FrameTruth, Recording, RecordingError, RecordingMeta, RecordingWriter, find_recordings
from ingest.replay import replay
from ingest_helpers import consume, write_images
from runtime.topics import ensure_topics
from schemas.config import CameraConfig, CameraSource
from schemas.frame import FrameMessage, FrameMode


def make_recording(path, camera="cam-r", frames=6, fps=20.0, seed=0):
    rng = np.random.default_rng(seed)
    meta = RecordingMeta(line_id="line-r", camera_id=camera, fps=fps, width=32, height=24, source="test")
    with RecordingWriter(path, meta) as writer:
        for i in range(frames):
            image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            truth = FrameTruth(part_id=i, defects=["scratch"] if i % 2 else [], answers={"scratch": bool(i % 2)})
            writer.append(i, 1_000_000_000 + i * round(1e9 / fps), encode_jpeg(image, 80), truth)
    return path


def with_topic(config, suffix):
    topics = config.kafka.topics.model_copy(update={"frames": f"{config.kafka.topics.frames}-{suffix}"})
    return config.model_copy(update={"kafka": config.kafka.model_copy(update={"topics": topics})})


def identity(record, *, with_time=False):
    headers = tuple((k, v) for k, v in record.headers if with_time or k != "ps-capture-ns")
    return record.key, record.value, headers


def test_two_replays_publish_identical_records(make_config, tmp_path):
    recordings = [make_recording(tmp_path / "a", "cam-a", seed=1), make_recording(tmp_path / "b", "cam-b", seed=2)]
    config = make_config()
    runs = {}
    for name, timestamps in (("first", "publish"), ("second", "publish"), ("recorded", "recorded")):
        cfg = with_topic(config, name)
        ensure_topics(cfg.kafka, [cfg.kafka.topics.frames])
        result = replay(recordings, cfg, timestamps=timestamps)
        assert result.frames == 12 and result.counters["published"] == 12 and result.counters["failed"] == 0
        records = consume(cfg.kafka, cfg.kafka.topics.frames, 12)
        runs[name] = sorted(records, key=lambda r: (r.key, r.offset))
    first, second = ([identity(r) for r in runs[n]] for n in ("first", "second"))
    assert len(first) == 12 and first == second
    frames = [FrameMessage.from_record(r.key, r.value, r.headers) for r in runs["first"]]
    assert all(f.mode is FrameMode.replay for f in frames)
    assert [f.seq for f in frames if f.camera_id == "cam-a"] == list(range(6))
    assert [e.seq for e in Recording(recordings[0]).entries] == list(range(6))
    assert [f.payload for f in frames if f.camera_id == "cam-a"] == [j for _, j in Recording(recordings[0]).frames()]
    # publish-time stamps make latency measurable; recorded stamps reproduce the recording exactly
    assert all(f.capture_ns > time.time_ns() - 60e9 for f in frames)
    recorded = [FrameMessage.from_record(r.key, r.value, r.headers) for r in runs["recorded"]]
    assert [f.capture_ns for f in recorded if f.camera_id == "cam-a"] == [
        e.capture_ns for e in Recording(recordings[0]).entries]


def test_looping_keeps_seq_increasing_deterministically(make_config, tmp_path):
    recording = make_recording(tmp_path / "a", frames=4)
    config = make_config()
    ensure_topics(config.kafka, [config.kafka.topics.frames])
    result = replay([recording], config, loop=3, timestamps="recorded")
    assert result.counters["published"] == 12
    frames = [FrameMessage.from_record(r.key, r.value, r.headers)
              for r in consume(config.kafka, config.kafka.topics.frames, 12)]
    assert [f.seq for f in frames] == list(range(12))  # seq = loop * 4 + i
    payloads = [j for _, j in Recording(recording).frames()]
    assert [f.payload for f in frames] == payloads * 3
    period = 4 * round(1e9 / 20.0)
    assert frames[4].capture_ns - frames[0].capture_ns == period


def test_speed_paces_the_replay(make_config, tmp_path):
    # 2 s of frames: long enough that the producer's own start and flush (0.4 s once in CI) cannot
    # hide the pacing, and a replay that ignored the speed would take the whole 2 s again.
    recording = make_recording(tmp_path / "a", frames=21, fps=10.0)
    config = make_config()
    ensure_topics(config.kafka, [config.kafka.topics.frames])
    started = time.monotonic()
    replay([recording], config, speed=1.0)
    original = time.monotonic() - started
    started = time.monotonic()
    replay([recording], config, speed=5.0)
    fast = time.monotonic() - started
    assert original >= 2.0
    assert fast < original / 2


def test_replay_refuses_a_broken_recording_before_publishing(make_config, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordingError):
        replay([tmp_path / "empty"], make_config())


def test_a_recording_cut_short_keeps_its_whole_frames_and_says_how_many_are_lost(tmp_path):
    from structlog.testing import capture_logs

    path = make_recording(tmp_path / "cut", frames=6)
    whole = Recording(path)
    data = path / "frames.bin"
    data.write_bytes(data.read_bytes()[: whole.entries[2].offset + 10])  # frame 2 is torn
    with capture_logs() as logs:
        cut = Recording(path)
    assert [e.seq for e in cut.entries] == [0, 1]
    assert [cut.read(e) for e in cut.entries] == [whole.read(e) for e in whole.entries[:2]]
    warned = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warned) == 1 and warned[0]["readable"] == 2 and warned[0]["unreadable"] == 4


def test_find_recordings_takes_recordings_and_folders_of_them(tmp_path):
    single = make_recording(tmp_path / "single")
    nested = [make_recording(tmp_path / "set" / name, frames=1) for name in ("b", "a")]
    assert find_recordings([single, tmp_path / "set"]) == [single, nested[1], nested[0]]
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordingError, match="no recordings"):
        find_recordings([tmp_path / "empty"])


def test_record_from_a_camera_then_from_the_topic(make_config, tmp_path):
    config = make_config()
    camera = CameraConfig(id="cam-x", source=CameraSource(images=write_images(tmp_path / "imgs", 3)), fps=50.0)
    written = record_camera("line-x", camera, config, tmp_path / "cam-rec", frames=8)
    rec = Recording(tmp_path / "cam-rec")
    assert written == 8 and [e.seq for e in rec.entries] == list(range(8))
    assert (rec.meta.line_id, rec.meta.camera_id, rec.meta.width, rec.meta.height) == ("line-x", "cam-x", 64, 48)
    assert all(b.capture_ns > a.capture_ns for a, b in zip(rec.entries, rec.entries[1:]))

    ensure_topics(config.kafka, [config.kafka.topics.frames])
    replay([tmp_path / "cam-rec", make_recording(tmp_path / "synthetic", "cam-y")], config)
    counts = record_topic(config, tmp_path / "from-topic", idle_timeout_s=2.0)
    assert counts == {"cam-x": 8, "cam-y": 6}
    again = Recording(tmp_path / "from-topic" / "cam-x")
    assert [j for _, j in again.frames()] == [j for _, j in rec.frames()]
    assert [e.seq for e in again.entries] == list(range(8))
    assert again.meta.source.startswith("topic ")
