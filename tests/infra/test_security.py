"""TLS + SASL for Kafka and TLS + ACL users for Redis, against real servers started by `patchsight infra up`.

The secured pair comes from the ``secured`` fixture (tests/infra/conftest.py): Kafka with a
SASL_SSL listener (SCRAM-SHA-512) and Redis TLS-only with an ACL user, both using the
throwaway CA in the state folder. Each refused client must fail, not hang: every one has a
short bootstrap timeout.
"""

from __future__ import annotations

import stat
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import redis as redis_lib
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from patchsight import infra
from runtime.topics import ensure_topics
from schemas import FrameMessage
from schemas.config import KafkaSettings, RedisSettings
from tests.infra.conftest import KAFKA_PASSWORD, REDIS_PASSWORD, REDIS_USER, Secured, free_port_pair

AuthError = redis_lib.AuthenticationError
FAIL_FAST = {"bootstrap_timeout_ms": 3000, "request_timeout_ms": 3000}


def _security(settings: KafkaSettings, **changes: object) -> KafkaSettings:
    return KafkaSettings(
        bootstrap=settings.bootstrap, security={**settings.security.model_dump(), **changes}
    )


def test_infra_up_tells_clients_which_ca_to_trust(secured: Secured) -> None:
    ca = secured.home / "tls" / "ca.pem"
    assert f"PATCHSIGHT__KAFKA__SECURITY__SSL_CAFILE={ca}" in secured.up.stdout
    assert f"PATCHSIGHT__REDIS__SSL_CAFILE={ca}" in secured.up.stdout
    assert secured.up.stdout.count("running") == 2


def test_credential_files_are_private_and_hold_no_client_password(secured: Secured) -> None:
    for name in ("kafka/server.properties", "kafka/broker.secret", "redis/users.acl", "tls/server.key", "tls/ca.key"):
        mode = stat.S_IMODE((secured.home / name).stat().st_mode)
        assert mode & 0o077 == 0, f"{name} is readable by others: {oct(mode)}"
    acl = (secured.home / "redis" / "users.acl").read_text()
    assert f"user {REDIS_USER} on #" in acl and "user default off" in acl
    assert REDIS_PASSWORD not in acl
    assert KAFKA_PASSWORD not in (secured.home / "kafka" / "server.properties").read_text()


def test_frame_round_trip_over_sasl_ssl(secured: Secured) -> None:
    topic = f"frames-{uuid.uuid4().hex[:8]}"
    ensure_topics(secured.kafka, [topic], partitions=1)  # the admin client
    admin = KafkaAdminClient(**secured.kafka.client_kwargs())
    try:
        assert topic in admin.list_topics()
    finally:
        admin.close()

    msg = FrameMessage(line_id="l", camera_id="cam-1", seq=7, capture_ns=1, width=2, height=2, payload=b"\xff\xd8tls")
    key, value, headers = msg.to_record()
    producer = KafkaProducer(**secured.kafka.client_kwargs(), acks="all")
    producer.send(topic, key=key, value=value, headers=headers).get(timeout=30)
    producer.close()

    consumer = KafkaConsumer(
        topic, **secured.kafka.client_kwargs(), group_id=f"g-{topic}", auto_offset_reset="earliest",
        consumer_timeout_ms=20_000,
    )
    try:
        got = next(iter(consumer))
        consumer.commit()  # the group coordinator answers over SASL_SSL too
    finally:
        consumer.close()
    assert FrameMessage.from_record(got.key, got.value, got.headers) == msg


def _librdkafka_send(secured: Secured, topic: str, password: str) -> object:
    """One frame from confluent-kafka (librdkafka) over SASL_SSL/SCRAM; the delivery error, or None."""
    from confluent_kafka import Producer

    sec = secured.kafka.security
    producer = Producer({
        "bootstrap.servers": secured.kafka.bootstrap, "security.protocol": "SASL_SSL",
        "sasl.mechanism": sec.sasl_mechanism, "sasl.username": sec.sasl_username, "sasl.password": password,
        "ssl.ca.location": str(sec.ssl_cafile), "partitioner": "murmur2_random", "message.timeout.ms": 8000,
    })
    outcome: list = []
    key, value, headers = FrameMessage(line_id="l", camera_id="cam-1", seq=0, capture_ns=1, width=2, height=2,
                                       payload=b"\xff\xd8tls").to_record()
    producer.produce(topic, key=key, value=value, headers=headers, on_delivery=lambda err, _: outcome.append(err))
    producer.flush(20)
    assert len(outcome) == 1
    return outcome[0]


def test_a_librdkafka_client_logs_in_with_scram(secured: Secured) -> None:
    """docs/security.md: librdkafka before 2.6.1 fails SCRAM against Kafka 4; the one confluent-kafka bundles works."""
    from confluent_kafka import libversion

    assert libversion()[1] >= 0x020601FF
    topic = f"frames-{uuid.uuid4().hex[:8]}"
    ensure_topics(secured.kafka, [topic], partitions=1)
    assert _librdkafka_send(secured, topic, KAFKA_PASSWORD) is None
    assert _librdkafka_send(secured, topic, "not-the-password") is not None


def _broker_log_refusals(secured: Secured) -> int:
    text = (secured.home / "kafka" / "broker.log").read_text(errors="replace")
    return text.count("due to invalid credentials")


@pytest.mark.parametrize(
    "changes, bad_credentials",
    [
        pytest.param({"sasl_password": "not-the-password"}, True, id="wrong-password"),
        pytest.param({"sasl_username": "mallory"}, True, id="unknown-user"),
        pytest.param({"protocol": "SASL_PLAINTEXT", "ssl_cafile": None}, False, id="sasl-without-tls"),
        pytest.param({"protocol": "PLAINTEXT", "sasl_username": None, "sasl_password": None}, False, id="plaintext"),
        pytest.param({"ssl_cafile": None}, False, id="untrusted-certificate"),
    ],
)
def test_misconfigured_clients_are_refused(secured: Secured, changes: dict[str, object], bad_credentials: bool) -> None:
    bad = _security(secured.kafka, **changes)
    refusals_before = _broker_log_refusals(secured)
    with pytest.raises(KafkaError):
        producer = KafkaProducer(**bad.client_kwargs(), **FAIL_FAST, max_block_ms=3000)
        try:
            producer.send("refused", b"x").get(timeout=5)
        finally:
            producer.close()
    if bad_credentials:  # refused because of the credentials, not because of something else
        assert _broker_log_refusals(secured) > refusals_before


def test_infra_status_reports_a_refused_password(secured: Secured) -> None:
    wrong = _security(secured.kafka, sasl_password="not-the-password")
    status = infra.kafka_status(wrong)
    assert status.state == "stopped" and "bootstrap" in status.detail


# --- Redis ------------------------------------------------------------------------------


def _redis(settings: RedisSettings, **overrides: object) -> redis_lib.Redis:
    kwargs = {**settings.client_kwargs(), "socket_timeout": 3, **overrides}
    return redis_lib.Redis.from_url(settings.url, **{k: v for k, v in kwargs.items() if v is not None})


def test_redis_acl_user_over_tls_works(secured: Secured) -> None:
    client = _redis(secured.redis)
    try:
        key = f"sec-{uuid.uuid4().hex[:8]}"
        client.set(key, b"v", ex=60)
        assert client.get(key) == b"v"
        assert client.acl_whoami() == REDIS_USER
    finally:
        client.close()


# redis-py speaks RESP3, so a missing login is refused at HELLO instead of with NOAUTH,
# and WRONGPASS becomes AuthenticationError("invalid username-password pair ...")
@pytest.mark.parametrize(
    "overrides, error, words",
    [
        pytest.param({"username": None, "password": None}, AuthError, "authenticated", id="no-login"),
        pytest.param({"password": "not-the-password"}, AuthError, "invalid username-password", id="wrong-password"),
        # the default user is off: the right password without the user name is not enough
        pytest.param({"username": None}, AuthError, "invalid username-password", id="default-user"),
        pytest.param({"ssl_ca_certs": None}, redis_lib.ConnectionError, "certificate verify failed", id="untrusted"),
    ],
)
def test_redis_refuses(secured: Secured, overrides: dict[str, object], error: type[Exception], words: str) -> None:
    client = _redis(secured.redis, **overrides)
    try:
        with pytest.raises(error, match=words):
            client.ping()
    finally:
        client.close()


def test_redis_refuses_a_plain_connection(secured: Secured) -> None:
    plain_url = secured.redis.url.replace("rediss://", "redis://")
    plain = RedisSettings(url=plain_url, username=REDIS_USER, password=REDIS_PASSWORD)
    client = _redis(plain)
    try:
        with pytest.raises(redis_lib.ConnectionError):
            client.ping()
    finally:
        client.close()


@pytest.fixture
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("PATCHSIGHT_HOME", str(tmp_path))
    yield tmp_path
    infra.redis_down()


def test_redis_password_without_user_protects_the_default_user(private_home: Path) -> None:
    url = f"redis://127.0.0.1:{free_port_pair()}/0"
    status = infra.redis_up(RedisSettings(url=url, password=REDIS_PASSWORD))
    assert status.state == "running"
    cmdline = Path(f"/proc/{status.pid}/cmdline").read_bytes()
    assert REDIS_PASSWORD.encode() not in cmdline  # an ACL file, not --requirepass
    with pytest.raises(redis_lib.AuthenticationError, match="authenticated"):
        redis_lib.Redis.from_url(url, socket_timeout=3).ping()
    client = redis_lib.Redis.from_url(url, password=REDIS_PASSWORD, socket_timeout=3)
    assert client.ping()
    client.close()
    # the credentials in the URL are what a client sends, so they are what the server gets
    assert infra.redis_answers(RedisSettings(url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:{url.rsplit(':', 1)[1]}"))
