"""Cameras that return garbage or freeze: that camera is reported, the others go on.

(A camera whose source disappears for good is tests/ingest/test_camera.py::
test_supervisor_reports_a_lost_camera_while_the_others_keep_publishing.)
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil
import pytest

from ingest.camera import run_cameras
from runtime.topics import ensure_topics
from schemas.frame import FrameMessage
from tests.ingest.ingest_helpers import consume, write_images

QUESTIONS = [{"id": "q", "text": "Is it broken?", "defect_type": "broken"}]


def supervise(config, until, timeout_s: float) -> tuple[list[str], list[int]]:
    stop = threading.Event()
    dead: list[str] = []
    status: list[int] = []
    supervisor = threading.Thread(
        target=lambda: status.append(run_cameras(config, stop=stop, metrics_port=0, on_dead=dead.append))
    )
    supervisor.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not until(dead) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        supervisor.join(40)
    assert not supervisor.is_alive()
    return dead, status


def good_frames(config) -> list[FrameMessage]:
    records = consume(config.kafka, config.kafka.topics.frames, 10_000, timeout_s=5)
    return [FrameMessage.from_record(r.key, r.value, r.headers) for r in records]


def test_a_camera_returning_garbage_is_reported_and_the_other_keeps_publishing(make_config, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    for i in range(3):  # image names, not images: truncated JPEG, random bytes, empty
        (garbage / f"{i}.jpg").write_bytes([b"\xff\xd8\xff\xe0\x00\x10JFIF", os.urandom(500), b""][i])
    config = make_config(
        ingest={"reconnect_initial_s": 0.05, "reconnect_max_s": 0.1, "reconnect_give_up_s": 1.0},
        lines=[{"id": "line-1", "cameras": [
            {"id": "good", "source": {"images": str(write_images(tmp_path / "imgs", 3))}, "fps": 10.0},
            {"id": "garbage", "source": {"images": str(garbage)}, "fps": 10.0},
        ], "questions": QUESTIONS}],
    )
    ensure_topics(config.kafka, [config.kafka.topics.frames])
    dead, status = supervise(config, lambda dead: bool(dead), timeout_s=30)
    assert dead == ["garbage"] and status == [0]
    frames = good_frames(config)
    assert frames and {f.camera_id for f in frames} == {"good"}  # nothing of the garbage was published
    assert [f.seq for f in frames] == list(range(len(frames)))


def camera_processes() -> set[int]:
    """Pids of this test's camera processes (multiprocessing spawn children)."""
    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.Error:  # exited (or a zombie) between listing and reading: not a running camera
            continue
    return pids


@pytest.mark.slow
def test_a_frozen_camera_is_restarted_while_the_other_keeps_publishing(make_config, tmp_path: Path) -> None:
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    os.mkfifo(frozen / "0.png")  # reading it blocks forever inside OpenCV: a driver call that never returns
    config = make_config(
        # the supervisor calls a camera stalled after reconnect_max_s + 30 s without a heartbeat
        ingest={"reconnect_initial_s": 0.05, "reconnect_max_s": 0.1, "reconnect_give_up_s": 300.0},
        lines=[{"id": "line-1", "cameras": [
            {"id": "good", "source": {"images": str(write_images(tmp_path / "imgs", 3))}, "fps": 10.0},
            {"id": "frozen", "source": {"images": str(frozen)}, "fps": 10.0},
        ], "questions": QUESTIONS}],
    )
    ensure_topics(config.kafka, [config.kafka.topics.frames])
    first: set[int] = set()

    def restarted(_: list[str]) -> bool:
        pids = camera_processes()
        if len(first) < 2:
            first.update(pids)
            return False
        return bool(pids - first)  # a camera process that was not there at the start

    started = time.monotonic()
    dead, status = supervise(config, restarted, timeout_s=60)
    elapsed = time.monotonic() - started
    assert status == [0] and dead == []
    assert elapsed < 50, "the supervisor never restarted the frozen camera"
    frames = good_frames(config)
    # the good camera published all along (~10 fps), and the frozen one never published
    assert {f.camera_id for f in frames} == {"good"} and len(frames) >= 10 * 30 * 0.7
    assert [f.seq for f in frames] == list(range(len(frames)))
    print(f"\nfrozen camera restarted after {elapsed:.1f}s; the good one published {len(frames)} frames meanwhile")
