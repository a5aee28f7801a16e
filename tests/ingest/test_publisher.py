import threading
import time

import numpy as np
import pytest
from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError
from kafka.future import Future

from ingest.publisher import FramePublisher, FrameTooLarge, IngestCounters, encode_jpeg, fit_frame, record_size
from ingest_helpers import consume, numbered_image
from runtime.topics import ensure_topics
from schemas.frame import FrameMessage


def noisy_jpeg(width=640, height=480, seed=0) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encode_jpeg(image, 95)


def frame(camera="cam-a", seq=0, payload=None, width=64, height=48) -> FrameMessage:
    payload = payload or encode_jpeg(numbered_image(seq), 85)
    return FrameMessage(line_id="line-1", camera_id=camera, seq=seq, capture_ns=1, width=width, height=height,
                        payload=payload)


def test_encode_jpeg_resizes():
    import cv2

    data = encode_jpeg(numbered_image(1), 80, (32, 24))
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (24, 32, 3)


def test_fit_frame_downscales_under_the_limit_or_rejects():
    big = frame(payload=noisy_jpeg(), width=640, height=480)
    assert record_size(big) > 100_000
    small, downscaled = fit_frame(big, 50_000, "downscale")
    assert downscaled and record_size(small) <= 50_000
    assert small.width < 640 and small.height < 480
    assert small.width / small.height == pytest.approx(640 / 480, rel=0.05)
    with pytest.raises(FrameTooLarge, match="reject"):
        fit_frame(big, 50_000, "reject")
    unchanged, downscaled = fit_frame(frame(), 50_000, "downscale")
    assert not downscaled and unchanged.payload == frame().payload


def test_frames_of_each_camera_arrive_in_order_keyed_by_camera(make_config):
    config = make_config()
    ensure_topics(config.kafka, [config.kafka.topics.frames])
    counters = IngestCounters()
    publisher = FramePublisher(config.kafka, config.ingest, counters, client_id="test-order")
    for seq in range(40):
        for camera in ("cam-a", "cam-b", "cam-c"):
            assert publisher.publish(frame(camera, seq))
    publisher.close()
    assert counters.get("published") == 120 and counters.get("failed") == 0
    records = consume(config.kafka, config.kafka.topics.frames, 120)
    assert len(records) == 120
    by_camera: dict[str, list[int]] = {}
    partitions: dict[str, set[int]] = {}
    for record in records:
        parsed = FrameMessage.from_record(record.key, record.value, record.headers)
        assert record.key == parsed.camera_id.encode()
        by_camera.setdefault(parsed.camera_id, []).append(parsed.seq)
        partitions.setdefault(parsed.camera_id, set()).add(record.partition)
    assert by_camera == {c: list(range(40)) for c in ("cam-a", "cam-b", "cam-c")}
    assert all(len(p) == 1 for p in partitions.values())


@pytest.mark.parametrize("policy", ["downscale", "reject"])
def test_oversize_frames_are_handled_before_sending(make_config, policy):
    config = make_config(ingest={"max_message_bytes": 20_000, "oversize": policy})
    ensure_topics(config.kafka, [config.kafka.topics.frames])
    counters = IngestCounters()
    # max_request_size is the same 20 000 bytes: a frame that slipped past the check would raise
    publisher = FramePublisher(config.kafka, config.ingest, counters, client_id="test-oversize")
    sent = publisher.publish(frame(seq=0, payload=noisy_jpeg(), width=640, height=480))
    assert publisher.publish(frame(seq=1))  # a normal frame after it still goes through
    publisher.close()
    # same key, same partition: a wrongly sent seq 0 would arrive before seq 1
    records = consume(config.kafka, config.kafka.topics.frames, 2 if policy == "downscale" else 1)
    seqs = [FrameMessage.from_record(r.key, r.value, r.headers).seq for r in records]
    if policy == "downscale":
        assert sent and seqs == [0, 1]
        shrunk = FrameMessage.from_record(records[0].key, records[0].value, records[0].headers)
        assert len(shrunk.payload) < 20_000
        assert shrunk.width < 640
        assert counters.snapshot()["downscaled"] == 1 and counters.get("rejected") == 0
    else:
        assert not sent and seqs == [1]
        assert counters.get("rejected") == 1 and counters.get("downscaled") == 0
    assert counters.get("failed") == 0


def test_connect_keeps_retrying_an_unreachable_broker_until_stopped(make_config):
    config = make_config(kafka={"bootstrap": "127.0.0.1:1"}, ingest={"reconnect_initial_s": 0.05, "reconnect_max_s": 0.2})
    stop = threading.Event()
    publisher = FramePublisher(config.kafka, config.ingest, IngestCounters(), client_id="test-down", stop=stop)
    threading.Timer(1.0, stop.set).start()
    assert publisher.connect() is False
    assert not publisher.connected


class SilentProducer:
    """Plays the kafka-python producer seen stuck once after a broker restart (docs/operations.md).

    It takes every send and acknowledges none, which is what the camera saw; the real stall
    could not be brought about on purpose. Like kafka-python's force-close, closing it fails
    the sends still pending.
    """

    def __init__(self) -> None:
        self.futures: list[Future] = []
        self.closed = False

    def send(self, _topic: str, **_record: object) -> Future:
        self.futures.append(Future())
        return self.futures[-1]

    def flush(self, timeout: float | None = None) -> None:
        if any(not f.is_done for f in self.futures):
            raise KafkaTimeoutError("nothing acknowledged")

    def close(self, timeout: float | None = None) -> None:
        for future in self.futures:
            if not future.is_done:
                future.failure(KafkaTimeoutError("producer closed"))
        self.closed = True


def publish_in_background(publisher: FramePublisher, count: int) -> tuple[threading.Thread, list[bool]]:
    """Publish frames 0..count-1 on a thread; the list fills with publish()'s answers as they come."""
    sent: list[bool] = []

    def publish_all() -> None:
        for seq in range(count):
            sent.append(publisher.publish(frame(seq=seq)))

    pump = threading.Thread(target=publish_all, daemon=True)
    pump.start()
    return pump, sent


def silent_then_real(made: list):
    def factory(**settings: object):
        made.append(SilentProducer() if not made else KafkaProducer(**settings))
        return made[-1]

    return factory


# Long enough that the real producer's first acknowledgement (connection, producer id, metadata) never
# passes for a stall on a loaded CI machine.
STALL_S = 3.0


def test_a_live_publisher_replaces_a_producer_that_acknowledges_nothing(make_config):
    config = make_config(ingest={"buffer_frames": 8})
    ensure_topics(config.kafka, [config.kafka.topics.frames])
    counters = IngestCounters()
    made: list = []
    publisher = FramePublisher(config.kafka, config.ingest, counters, client_id="test-stall", stall_s=STALL_S,
                               producer_factory=silent_then_real(made))
    pump, sent = publish_in_background(publisher, 20)
    pump.join(30)
    assert not pump.is_alive(), "publishing stayed blocked behind a producer that acknowledges nothing"
    publisher.close()
    assert sent == [True] * 20
    deadline = time.monotonic() + 10
    while not made[0].closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(made) == 2 and made[0].closed, "the silent producer was not replaced and closed"
    # the 8 frames in flight on the silent producer are failed and counted; the rest arrive, in order
    assert counters.get("producer_stalls") == 1
    assert counters.get("failed") == 8 and counters.get("published") == 12
    records = consume(config.kafka, config.kafka.topics.frames, 12)
    assert [FrameMessage.from_record(r.key, r.value, r.headers).seq for r in records] == list(range(8, 20))


def test_a_publisher_without_a_stall_limit_keeps_waiting_for_its_producer(make_config):
    # replay's publisher: it must never give up frames, so it waits on the same silent producer until stopped
    config = make_config(ingest={"buffer_frames": 8})
    stop = threading.Event()
    made: list = []
    publisher = FramePublisher(config.kafka, config.ingest, IngestCounters(), client_id="test-no-stall", stop=stop,
                               producer_factory=silent_then_real(made))
    pump, sent = publish_in_background(publisher, 9)
    pump.join(STALL_S + 1.0)  # longer than the other test's stall limit
    assert pump.is_alive() and sent == [True] * 8 and len(made) == 1 and not made[0].closed
    stop.set()
    pump.join(5)
    assert not pump.is_alive() and sent == [True] * 8 + [False]
