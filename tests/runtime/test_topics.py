"""runtime.topics against the real broker."""

from __future__ import annotations

import time
from typing import Callable

from kafka import KafkaConsumer

from runtime.topics import ensure_topics, subscribe_when_known
from schemas.config import KafkaSettings


def test_a_member_subscribed_when_known_joins_its_group_once(
    kafka_settings: KafkaSettings, unique: Callable[[str], str]
) -> None:
    # kafka-python 3.0.12 joined a second time ~100 ms after the first when the first poll came
    # before the coordinator knew the topic's partitions; after that second join its heartbeats
    # sometimes never started (docs/operations.md). One join means generation 1.
    topic = unique("topics-join")
    ensure_topics(kafka_settings, [topic], partitions=3)
    consumer = KafkaConsumer(**kafka_settings.client_kwargs(), group_id=unique("topics-group"),
                             enable_auto_commit=False)
    try:
        subscribe_when_known(consumer, topic)
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=100)
        assert len(consumer.assignment()) == 3
        settle = time.monotonic() + 2.0  # a second join came within ~150 ms of the first
        while time.monotonic() < settle:
            consumer.poll(timeout_ms=100)
        assert consumer._coordinator._generation.generation_id == 1
    finally:
        consumer.close(autocommit=False)
