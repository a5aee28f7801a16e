"""Create the project's topics when they are missing, and join a group on one of them.

Every service calls ``ensure_topics`` at start, so a fresh cluster works
without manual set-up; an existing topic is left exactly as it is. Consumers
in a group subscribe through ``subscribe_when_known``. A service that writes dead letters
bounds them with ``dead_letter_max_bytes``.
"""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from schemas.config import KafkaSettings, PatchsightConfig


def ensure_topics(settings: KafkaSettings, names: list[str] | None = None, partitions: int | None = None) -> None:
    wanted = names or [settings.topics.frames, settings.topics.results, settings.topics.dead_letter]
    admin = KafkaAdminClient(**settings.client_kwargs(), client_id=f"{settings.client_id_prefix}-admin")
    try:
        existing = set(admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        if not missing:
            return
        topics = [NewTopic(n, partitions or settings.topics.partitions, 1) for n in missing]
        try:
            admin.create_topics(topics)
        except TopicAlreadyExistsError:
            pass  # another process created it between our list and create
        except KafkaError as exc:
            if "TopicAlreadyExists" not in type(exc).__name__ + str(exc):
                raise
    finally:
        admin.close()


def dead_letter_max_bytes(producer: KafkaProducer, config: PatchsightConfig) -> int:
    """The size ``DeadLetter.to_record`` must keep within for this producer: its ``max_request_size``
    and the broker's limit as configured (``ingest.max_message_bytes``), whichever is less."""
    return min(producer.config["max_request_size"], config.ingest.max_message_bytes)


def subscribe_when_known(consumer: KafkaConsumer, topic: str, listener: Any = None, timeout_s: float = 60.0) -> None:
    """Subscribe ``consumer`` to ``topic`` once its metadata has the topic's partitions.

    A member that joins without them is assigned nothing until its next metadata
    refresh (minutes), however many partitions the topic has.
    """
    deadline = time.monotonic() + timeout_s
    while not consumer.partitions_for_topic(topic) and time.monotonic() < deadline:
        time.sleep(0.1)
    consumer.subscribe([topic], listener=listener)
    _wait_for_group_metadata(consumer, topic, deadline)


def _wait_for_group_metadata(consumer: KafkaConsumer, topic: str, deadline: float) -> None:
    """Wait until the group coordinator's view of the subscription has the topic's partitions.

    kafka-python 3.0.12 snapshots the subscribed topics' partitions only on a metadata
    update. The first poll() after subscribe() joins before that update has arrived, so
    the member joins with no partitions and joins a second time ~100 ms later. After
    that second join its heartbeats sometimes never start: the broker expires the
    member 15 s later and every commit is refused (the stall in docs/operations.md).
    Joining once, with the partitions known, avoids the second join.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
    if coordinator is None or cluster is None or not hasattr(coordinator, "_metadata_snapshot"):
        return  # another client version: nothing to wait for
    cluster.request_update()
    while not coordinator._metadata_snapshot.get(topic) and time.monotonic() < deadline:
        time.sleep(0.05)
