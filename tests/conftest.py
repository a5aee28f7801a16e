"""Session fixtures: the real Kafka broker and Redis server, started once (or reused).

Set KAFKA_BOOTSTRAP / REDIS_URL to run the suite against servers you already
have. Each test gets its own topic names and key prefixes from ``unique``, so
tests never see each other's data and can share one broker.
"""

from __future__ import annotations

import os
import uuid
from typing import Callable, Iterator

import pytest
import redis as redis_lib

from patchsight import infra
from runtime.log import configure_logging
from schemas.config import KafkaSettings, PatchsightConfig, RedisSettings, Topics, validate_config

configure_logging("console", os.environ.get("PATCHSIGHT_LOG_LEVEL", "WARNING"))


@pytest.fixture(scope="session")
def kafka_settings() -> Iterator[KafkaSettings]:
    settings = KafkaSettings(bootstrap=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    status = infra.kafka_up(settings)
    yield settings
    if status.state == "running" and os.environ.get("PATCHSIGHT_TEST_STOP_INFRA") == "1":
        infra.kafka_down()


@pytest.fixture(scope="session")
def redis_settings() -> Iterator[RedisSettings]:
    settings = RedisSettings(url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    status = infra.redis_up(settings)
    yield settings
    if status.state == "running" and os.environ.get("PATCHSIGHT_TEST_STOP_INFRA") == "1":
        infra.redis_down()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_settings: KafkaSettings) -> str:
    return kafka_settings.bootstrap


@pytest.fixture(scope="session")
def redis_url(redis_settings: RedisSettings) -> str:
    return redis_settings.url


@pytest.fixture
def redis_client(redis_settings: RedisSettings) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_settings.url)
    yield client
    client.close()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """``unique("frames")`` -> ``"frames-3f2a9c1e"``: a name no other test uses."""
    token = uuid.uuid4().hex[:8]
    return lambda base: f"{base}-{token}"


@pytest.fixture
def make_config(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings, unique: Callable[[str], str]
) -> Callable[..., PatchsightConfig]:
    """Build a validated config on the test broker/Redis with this test's own topics and key prefix.

    Keyword arguments are merged into the raw config before validation, e.g.
    ``make_config(lines=[...], inference={"max_batch": 4})``.
    """

    def build(**sections: object) -> PatchsightConfig:
        raw: dict[str, object] = {
            "kafka": {
                "bootstrap": kafka_settings.bootstrap,
                "topics": Topics(
                    frames=unique("frames"), results=unique("results"), dead_letter=unique("dlq"), partitions=2
                ).model_dump(),
            },
            "redis": {"url": redis_settings.url},
            "alerts": {"key_prefix": unique("ps"), "metrics_port": 0},
            "inference": {"metrics_port": 0},
            "dashboard": {"port": 0},
        }
        for name, value in sections.items():
            if isinstance(value, dict) and isinstance(raw.get(name), dict):
                raw[name] = {**raw[name], **value}  # type: ignore[dict-item]
            else:
                raw[name] = value
        return validate_config(raw, source="test config")

    return build
