"""Dynamic batching, as Triton does it: pure scheduling, no model, no Kafka.

A batch closes when it holds ``max_batch`` items or when its oldest item has
waited ``max_delay_s``, whichever comes first. ``max_delay_s=0`` never waits:
a batch is whatever is queued when the model asks (still more than one frame
when frames pile up while the model is busy). ``max_delay_s=math.inf`` is a
fixed-size batcher, the baseline the benchmark compares against.

The clock is injectable so the policy is tested deterministically; the model
thread blocks in ``next_batch`` while decode threads ``put`` frames.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Generic, Literal, TypeVar

T = TypeVar("T")

CloseReason = Literal["size", "delay", "drain"]


@dataclass(frozen=True)
class Batch(Generic[T]):
    items: list[T]
    queue_s: list[float]  # how long each item waited in the batcher
    closed_by: CloseReason

    def __len__(self) -> int:
        return len(self.items)


class DynamicBatcher(Generic[T]):
    """A thread-safe FIFO that hands out batches by size or by the oldest item's age."""

    def __init__(self, max_batch: int, max_delay_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_delay_s < 0 or math.isnan(max_delay_s):
            raise ValueError(f"max_delay_s must be >= 0, got {max_delay_s}")
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._clock = clock
        self._queue: deque[tuple[float, T]] = deque()
        self._cond = threading.Condition()
        self._draining = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def put(self, item: T) -> None:
        with self._cond:
            self._queue.append((self._clock(), item))
            self._cond.notify()

    def drain(self) -> None:
        """From now on, hand out what is queued without waiting (shutdown, rebalance)."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()

    def discard(self, predicate: Callable[[T], bool]) -> list[T]:
        """Remove and return the queued items that match (e.g. frames of revoked partitions)."""
        with self._cond:
            dropped = [item for _, item in self._queue if predicate(item)]
            self._queue = deque(entry for entry in self._queue if not predicate(entry[1]))
            return dropped

    def ready(self) -> Batch[T] | None:
        """The next batch if one is due now, else None. Never blocks."""
        with self._cond:
            return self._take(self._clock())

    def next_batch(self, timeout: float | None = None) -> Batch[T] | None:
        """Block until a batch is due (return it) or ``timeout`` seconds pass (return None)."""
        with self._cond:
            give_up = None if timeout is None else self._clock() + timeout
            while True:
                now = self._clock()
                batch = self._take(now)
                if batch is not None:
                    return batch
                wake = self._due_at()
                if give_up is not None:
                    wake = min(wake, give_up)
                    if now >= give_up:
                        return None
                self._cond.wait(None if math.isinf(wake) else max(wake - now, 0.0))

    def _due_at(self) -> float:
        """When the oldest queued item's delay runs out (inf when the queue is empty)."""
        if not self._queue:
            return math.inf
        return self._queue[0][0] + self.max_delay_s

    def _take(self, now: float) -> Batch[T] | None:
        if not self._queue:
            return None
        if len(self._queue) >= self.max_batch:
            reason: CloseReason = "size"
        elif self._draining:
            reason = "drain"
        elif now >= self._due_at():
            reason = "delay"
        else:
            return None
        count = min(self.max_batch, len(self._queue))
        taken = [self._queue.popleft() for _ in range(count)]
        return Batch([item for _, item in taken], [max(now - t, 0.0) for t, _ in taken], reason)
