"""A guard against a stalled kafka-python 3.0.12 IO loop.

kafka-python 3 runs each client's network I/O on its own thread, and threads
that need it (``KafkaConsumer.poll`` among them) hand it work and wait. When
that loop has nothing scheduled it sleeps in ``select()`` with no timeout, and
relies on a wake-up byte to notice new work. On this project's machines a
consumer was seen waiting forever inside ``poll()`` (py-spy: ``Fetcher.fetch_records``
-> ``NetworkSelector.run``) while its IO thread slept: the wake-up was lost.
Waking the loop a few times a second costs nothing and turns such a loss into a
delay of at most ``interval_s``. On clients without that loop it does nothing.
"""

from __future__ import annotations

import threading
from typing import Any


def keep_awake(consumer: Any, stop: threading.Event, interval_s: float = 0.2) -> threading.Thread | None:
    """Start a daemon thread that wakes ``consumer``'s IO loop until ``stop`` is set."""
    net = getattr(getattr(consumer, "_client", None), "_net", None)
    wakeup = getattr(net, "wakeup", None)
    if wakeup is None:
        return None

    def nudge() -> None:
        while not stop.wait(interval_s):
            wakeup()

    thread = threading.Thread(target=nudge, name="kafka-io-wakeup", daemon=True)
    thread.start()
    return thread
