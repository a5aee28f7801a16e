"""The bounded buffer between capture and the producer.

Two policies, because the two kinds of input want opposite things when Kafka is slow:

* ``drop_oldest`` (live cameras): capture never waits; when the buffer is full the oldest
  frame is thrown away, so what does get published is as fresh as possible. Drops are
  counted and logged at most once per ``log_every_s``.
* ``block`` (replay): ``put`` waits for room, so every frame of a recording is delivered.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, Literal, TypeVar

from runtime.log import get_logger

T = TypeVar("T")
BufferPolicy = Literal["drop_oldest", "block"]


class FrameBuffer(Generic[T]):
    def __init__(self, capacity: int, policy: BufferPolicy, *, log_every_s: float = 10.0, name: str = "") -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.policy = policy
        self.dropped = 0
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._log_every_s = log_every_s
        self._last_log = 0.0
        self._dropped_at_log = 0
        self.log = get_logger("ingest.buffer", buffer=name, policy=policy)

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Add an item. ``block``: wait for room (False on timeout or close). ``drop_oldest``: never waits."""
        with self._cond:
            if self._closed:
                return False
            if len(self._items) >= self.capacity:
                if self.policy == "drop_oldest":
                    self._items.popleft()
                    self.dropped += 1
                    self._maybe_log_drops()
                else:
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while len(self._items) >= self.capacity and not self._closed:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            return False
                        self._cond.wait(left)
                    if self._closed:
                        return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """Take the oldest item; ``None`` on timeout, or once closed and empty."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                if self._closed:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """No more puts; ``get`` drains what is left, then returns ``None``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def _maybe_log_drops(self) -> None:
        now = time.monotonic()
        if now - self._last_log >= self._log_every_s:
            self.log.warning(
                "buffer full, dropping oldest frames",
                dropped_since_last_log=self.dropped - self._dropped_at_log,
                dropped_total=self.dropped,
                capacity=self.capacity,
            )
            self._last_log = now
            self._dropped_at_log = self.dropped
