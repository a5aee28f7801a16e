"""DynamicBatcher: a batch closes on size or on its oldest item's delay, whichever comes first."""

from __future__ import annotations

import math
import threading
import time

import pytest

from inference.batcher import DynamicBatcher


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_closes_on_size_before_the_delay(clock: FakeClock) -> None:
    batcher = DynamicBatcher[int](max_batch=3, max_delay_s=0.020, clock=clock)
    for i in range(2):
        batcher.put(i)
    assert batcher.ready() is None  # 2 < 3 and nothing has waited 20 ms
    batcher.put(2)
    batch = batcher.ready()
    assert batch is not None and batch.items == [0, 1, 2] and batch.closed_by == "size"
    assert batch.queue_s == [0.0, 0.0, 0.0]


def test_closes_on_the_oldest_items_delay(clock: FakeClock) -> None:
    batcher = DynamicBatcher[str](max_batch=8, max_delay_s=0.020, clock=clock)
    batcher.put("a")
    clock.advance(0.015)
    batcher.put("b")
    assert batcher.ready() is None
    clock.advance(0.005)  # "a" has now waited exactly 20 ms
    batch = batcher.ready()
    assert batch is not None and batch.items == ["a", "b"] and batch.closed_by == "delay"
    assert batch.queue_s == pytest.approx([0.020, 0.005])
    assert len(batcher) == 0


def test_a_full_queue_yields_max_batch_at_a_time_in_fifo_order(clock: FakeClock) -> None:
    batcher = DynamicBatcher[int](max_batch=4, max_delay_s=1.0, clock=clock)
    for i in range(10):
        batcher.put(i)
    assert batcher.ready().items == [0, 1, 2, 3]
    assert batcher.ready().items == [4, 5, 6, 7]
    assert batcher.ready() is None  # two left, younger than the delay
    clock.advance(1.0)
    assert batcher.ready().items == [8, 9]


def test_zero_delay_takes_whatever_is_queued(clock: FakeClock) -> None:
    batcher = DynamicBatcher[int](max_batch=8, max_delay_s=0.0, clock=clock)
    assert batcher.ready() is None
    batcher.put(1)
    batcher.put(2)
    batch = batcher.ready()
    assert batch.items == [1, 2] and batch.closed_by == "delay"


def test_infinite_delay_is_a_fixed_size_batcher_until_drained(clock: FakeClock) -> None:
    batcher = DynamicBatcher[int](max_batch=4, max_delay_s=math.inf, clock=clock)
    for i in range(3):
        batcher.put(i)
    clock.advance(3600)
    assert batcher.ready() is None
    batcher.drain()
    batch = batcher.ready()
    assert batch.items == [0, 1, 2] and batch.closed_by == "drain"


def test_discard_removes_matching_items_and_keeps_order(clock: FakeClock) -> None:
    batcher = DynamicBatcher[int](max_batch=10, max_delay_s=0.0, clock=clock)
    for i in range(6):
        batcher.put(i)
    assert batcher.discard(lambda i: i % 2 == 0) == [0, 2, 4]
    assert batcher.ready().items == [1, 3, 5]


def test_next_batch_times_out_empty_and_rejects_bad_limits(clock: FakeClock) -> None:
    batcher = DynamicBatcher[int](max_batch=2, max_delay_s=0.5, clock=clock)
    assert batcher.next_batch(timeout=0) is None
    with pytest.raises(ValueError):
        DynamicBatcher(max_batch=0, max_delay_s=0.1)
    with pytest.raises(ValueError):
        DynamicBatcher(max_batch=1, max_delay_s=-1)


def test_next_batch_blocks_until_the_delay_runs_out() -> None:
    batcher = DynamicBatcher[int](max_batch=100, max_delay_s=0.05)
    start = time.monotonic()
    batcher.put(1)
    batch = batcher.next_batch(timeout=5)
    waited = time.monotonic() - start
    assert batch.items == [1] and batch.closed_by == "delay"
    assert 0.045 <= waited < 1.0
    assert batch.queue_s[0] >= 0.045


def test_a_put_from_another_thread_completes_a_waiting_batch() -> None:
    batcher = DynamicBatcher[int](max_batch=2, max_delay_s=10.0)
    batcher.put(1)
    threading.Timer(0.05, batcher.put, args=(2,)).start()
    start = time.monotonic()
    batch = batcher.next_batch(timeout=5)
    assert batch.items == [1, 2] and batch.closed_by == "size"
    assert time.monotonic() - start < 2.0  # woke on the put, not the 10 s delay
