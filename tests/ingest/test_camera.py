import threading
import time

from ingest.camera import run_camera, run_cameras
from ingest.publisher import IngestCounters
from ingest_helpers import TcpProxy, consume, write_images
from runtime.topics import ensure_topics
from schemas.frame import FrameMessage, FrameMode


def camera_config(make_config, source, *, fps=20.0, buffer_frames=32, **kafka):
    return make_config(
        kafka=kafka or {},
        ingest={"buffer_frames": buffer_frames, "reconnect_initial_s": 0.05, "reconnect_max_s": 0.2,
                "reconnect_give_up_s": 10.0},
        lines=[{"id": "line-1", "cameras": [{"id": "cam-1", "source": source, "fps": fps}],
                "questions": [{"id": "q", "text": "Is it broken?", "defect_type": "broken"}]}],
    )


def run_for(config, seconds, counters=None, until=None):
    line = config.lines[0]
    counters = counters or IngestCounters()
    stop = threading.Event()
    thread = threading.Thread(target=run_camera, args=(line, line.cameras[0], config),
                              kwargs={"counters": counters, "stop": stop})
    thread.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until and until(counters)):
        time.sleep(0.05)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    return counters


def test_camera_publishes_live_frames_in_order_at_its_fps(make_config, tmp_path):
    config = camera_config(make_config, {"images": str(write_images(tmp_path / "imgs", 5))}, fps=20.0)
    ensure_topics(config.kafka, [config.kafka.topics.frames])
    counters = run_for(config, 1.0)
    snap = counters.snapshot()
    assert 12 <= snap["captured"] <= 24  # ~20 fps for one second, paced rather than as fast as possible
    assert snap["published"] == snap["captured"] and snap["dropped"] == 0
    frames = [FrameMessage.from_record(r.key, r.value, r.headers)
              for r in consume(config.kafka, config.kafka.topics.frames, snap["captured"])]
    assert [f.seq for f in frames] == list(range(snap["captured"]))
    assert {(f.line_id, f.camera_id, f.mode, f.width, f.height) for f in frames} == {
        ("line-1", "cam-1", FrameMode.live, 64, 48)}
    assert all(b.capture_ns > a.capture_ns for a, b in zip(frames, frames[1:]))


def test_capture_continues_and_drops_oldest_while_the_broker_is_away_then_resumes(make_config, tmp_path):
    proxy = TcpProxy(("127.0.0.1", 9092))
    config = camera_config(make_config, {"images": str(write_images(tmp_path / "imgs", 3))}, fps=50.0,
                           buffer_frames=4, bootstrap=f"127.0.0.1:{proxy.port}")
    real = config.kafka.model_copy(update={"bootstrap": "127.0.0.1:9092"})
    ensure_topics(real, [config.kafka.topics.frames])
    line = config.lines[0]
    counters = IngestCounters()
    stop = threading.Event()
    thread = threading.Thread(target=run_camera, args=(line, line.cameras[0], config),
                              kwargs={"counters": counters, "stop": stop})
    thread.start()
    try:
        time.sleep(1.0)  # no broker: the producer stalls, capture goes on
        away = counters.snapshot()
        assert away["captured"] >= 20
        assert away["published"] == 0
        # the buffer keeps the newest 4; the publisher holds one more (the first) while it connects
        assert away["dropped"] >= away["captured"] - 4 - 1
        proxy.start()  # the broker comes back
        deadline = time.monotonic() + 15
        while counters.get("published") < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
        proxy.stop()
    assert counters.get("published") >= 10
    frames = [FrameMessage.from_record(r.key, r.value, r.headers)
              for r in consume(real, config.kafka.topics.frames, 10)]
    seqs = [f.seq for f in frames]
    assert seqs == sorted(seqs)
    assert not set(seqs) & set(range(1, away["dropped"] + 1))  # the oldest frames were the ones dropped


def test_camera_reconnects_after_its_source_disappears(make_config, tmp_path):
    folder = write_images(tmp_path / "imgs", 3)
    config = camera_config(make_config, {"images": str(folder)}, fps=20.0)
    ensure_topics(config.kafka, [config.kafka.topics.frames])
    line = config.lines[0]
    counters = IngestCounters()
    stop = threading.Event()
    thread = threading.Thread(target=run_camera, args=(line, line.cameras[0], config),
                              kwargs={"counters": counters, "stop": stop})
    thread.start()
    try:
        time.sleep(0.5)
        folder.rename(tmp_path / "gone")
        time.sleep(0.8)
        during = counters.get("captured")
        time.sleep(0.4)
        assert counters.get("captured") == during  # nothing captured while the source is away
        (tmp_path / "gone").rename(folder)
        deadline = time.monotonic() + 5
        while counters.get("captured") < during + 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
    snap = counters.snapshot()
    assert snap["reconnects"] == 1
    assert snap["captured"] >= during + 5
    seqs = [FrameMessage.from_record(r.key, r.value, r.headers).seq
            for r in consume(config.kafka, config.kafka.topics.frames, snap["captured"])]
    assert seqs == list(range(snap["captured"]))  # numbering continues across the reconnect


def test_supervisor_reports_a_lost_camera_while_the_others_keep_publishing(make_config, tmp_path):
    config = make_config(
        ingest={"reconnect_initial_s": 0.05, "reconnect_max_s": 0.1, "reconnect_give_up_s": 0.5},
        lines=[{"id": "line-1", "cameras": [
            {"id": "good", "source": {"images": str(write_images(tmp_path / "imgs", 3))}, "fps": 10.0},
            {"id": "lost", "source": {"images": str(tmp_path / "missing")}, "fps": 10.0},
        ], "questions": [{"id": "q", "text": "Is it broken?", "defect_type": "broken"}]}],
    )
    ensure_topics(config.kafka, [config.kafka.topics.frames])
    stop = threading.Event()
    dead: list[str] = []
    result: list[int] = []
    supervisor = threading.Thread(
        target=lambda: result.append(run_cameras(config, stop=stop, metrics_port=0, on_dead=dead.append))
    )
    supervisor.start()
    try:
        records = consume(config.kafka, config.kafka.topics.frames, 10, timeout_s=30)
        deadline = time.monotonic() + 20
        while not dead and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        supervisor.join(30)
    assert dead == ["lost"]
    assert result == [0]  # stopped on request; one camera was still alive
    assert len(records) >= 10
    assert {r.key for r in records} == {b"good"}
    seqs = [FrameMessage.from_record(r.key, r.value, r.headers).seq for r in records]
    assert seqs == list(range(len(seqs)))


def test_supervisor_returns_failure_when_every_camera_is_lost(make_config, tmp_path):
    config = make_config(
        ingest={"reconnect_initial_s": 0.05, "reconnect_max_s": 0.1, "reconnect_give_up_s": 0.3},
        lines=[{"id": "line-1", "cameras": [{"id": "lost", "source": {"images": str(tmp_path / "missing")}}],
                "questions": [{"id": "q", "text": "Is it broken?", "defect_type": "broken"}]}],
    )
    started = time.monotonic()
    assert run_cameras(config, stop=threading.Event()) == 1
    assert time.monotonic() - started < 20
