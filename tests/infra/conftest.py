"""A secured Kafka broker (SASL_SSL, SCRAM-SHA-512) and Redis (TLS, ACL user), private to this folder's tests.

Started once per session with `patchsight infra up`, configured only through the
environment as a user would, on free ports with their own state folder; the
suite's shared servers are never touched. The secrets are distinctive strings
so the secret tests can grep for them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from infra_helpers import cli, free_port_pair  # noqa: F401  (used by the fixtures below)

from patchsight.infra import REPO_ROOT
from schemas.config import KafkaSettings, RedisSettings

KAFKA_USER, KAFKA_PASSWORD = "alice", 'kpw-7Hq"x\\z-SECRET'
REDIS_USER, REDIS_PASSWORD = "patch", "rpw-Lm2-SECRET"


@dataclass
class Secured:
    home: Path  # PATCHSIGHT_HOME of the secured servers
    env: dict[str, str]  # runs `patchsight` against them with the right secrets
    kafka: KafkaSettings  # what a correctly configured client uses
    redis: RedisSettings
    up: subprocess.CompletedProcess[str]  # the `infra up` that started them


@pytest.fixture(scope="session")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    home = tmp_path_factory.mktemp("secured-state")
    shared_classpath = REPO_ROOT / ".patchsight" / "kafka" / "classpath.txt"
    if shared_classpath.exists():  # saves a Maven run; kafka_classpath re-checks every jar
        (home / "kafka").mkdir()
        shutil.copy(shared_classpath, home / "kafka" / "classpath.txt")
    kafka_port, redis_port = free_port_pair(), free_port_pair()
    env = dict(
        os.environ,
        PATCHSIGHT_HOME=str(home),
        PATCHSIGHT_LOG_FORMAT="json",
        KAFKA_BOOTSTRAP=f"127.0.0.1:{kafka_port}",
        REDIS_URL=f"rediss://127.0.0.1:{redis_port}/0",
        PATCHSIGHT__KAFKA__SECURITY__PROTOCOL="SASL_SSL",
        PATCHSIGHT__KAFKA__SECURITY__SASL_MECHANISM="SCRAM-SHA-512",
        PATCHSIGHT__KAFKA__SECURITY__SASL_USERNAME=KAFKA_USER,
        PATCHSIGHT__KAFKA__SECURITY__SASL_PASSWORD=KAFKA_PASSWORD,
        PATCHSIGHT__REDIS__USERNAME=REDIS_USER,
        PATCHSIGHT__REDIS__PASSWORD=REDIS_PASSWORD,
    )
    up = cli("infra", "up", env=env)
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        ca = home / "tls" / "ca.pem"
        kafka = KafkaSettings(
            bootstrap=env["KAFKA_BOOTSTRAP"],
            security={
                "protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": KAFKA_USER,
                "sasl_password": KAFKA_PASSWORD, "ssl_cafile": ca,
            },
        )
        redis = RedisSettings(url=env["REDIS_URL"], username=REDIS_USER, password=REDIS_PASSWORD, ssl_cafile=ca)
        yield Secured(home, env, kafka, redis, up)
    finally:
        cli("infra", "down", env=env)
