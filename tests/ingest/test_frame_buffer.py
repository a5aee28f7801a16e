import threading
import time

from ingest.buffer import FrameBuffer


def test_drop_oldest_keeps_the_newest_frames_and_counts_drops():
    buffer: FrameBuffer[int] = FrameBuffer(3, "drop_oldest")
    for i in range(10):
        assert buffer.put(i)
    assert buffer.dropped == 7
    assert [buffer.get(timeout=0) for _ in range(4)] == [7, 8, 9, None]


def test_block_waits_for_room_and_loses_nothing():
    buffer: FrameBuffer[int] = FrameBuffer(2, "block")
    got: list[int] = []

    def slow_consumer():
        while (item := buffer.get(timeout=2)) is not None:
            got.append(item)
            time.sleep(0.01)

    consumer = threading.Thread(target=slow_consumer)
    consumer.start()
    for i in range(20):
        assert buffer.put(i)
    buffer.close()
    consumer.join()
    assert got == list(range(20))
    assert buffer.dropped == 0


def test_block_put_times_out_when_nobody_takes():
    buffer: FrameBuffer[int] = FrameBuffer(1, "block")
    assert buffer.put(1)
    started = time.monotonic()
    assert not buffer.put(2, timeout=0.1)
    assert time.monotonic() - started >= 0.1
    assert len(buffer) == 1


def test_close_drains_then_ends():
    buffer: FrameBuffer[int] = FrameBuffer(4, "block")
    buffer.put(1)
    buffer.close()
    assert not buffer.put(2)
    assert buffer.get(timeout=0) == 1
    assert buffer.get() is None  # closed and empty: returns at once instead of waiting
