"""Create the project's topics when they are missing.

Every service calls ``ensure_topics`` at start, so a fresh cluster works
without manual set-up; an existing topic is left exactly as it is.
"""

from __future__ import annotations

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from schemas.config import KafkaSettings


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
