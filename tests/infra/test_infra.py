"""`patchsight infra up | status | down` against a second, private broker and Redis.

The suite's shared servers are left alone: this test runs its own on other
ports with its own state folder, exactly as a user would from the CLI.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from infra_helpers import cli, free_port_pair
from kafka import KafkaConsumer, KafkaProducer

from schemas import FrameMessage


@pytest.mark.slow
def test_up_round_trip_status_down(tmp_path: Path) -> None:
    kafka_port, redis_port = free_port_pair(), free_port_pair()
    env = dict(
        os.environ,
        PATCHSIGHT_HOME=str(tmp_path / "state"),
        KAFKA_BOOTSTRAP=f"127.0.0.1:{kafka_port}",
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        PATCHSIGHT_LOG_FORMAT="json",
    )
    try:
        up = cli("infra", "up", env=env)
        assert up.returncode == 0, up.stderr + up.stdout
        assert (tmp_path / "state" / "kafka" / "data" / "meta.properties").exists()

        status = cli("infra", "status", env=env)
        assert status.returncode == 0 and status.stdout.count("running") == 2, status.stdout

        # a frame message produced and consumed through the broker that `up` started
        bootstrap = env["KAFKA_BOOTSTRAP"]
        msg = FrameMessage(line_id="l", camera_id="c", seq=1, capture_ns=1, width=2, height=2, payload=b"\xff\xd8x")
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        key, value, headers = msg.to_record()
        producer.send("frames", value=value, key=key, headers=headers).get(timeout=30)
        producer.close()
        consumer = KafkaConsumer("frames", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                 consumer_timeout_ms=15_000)
        got = next(iter(consumer))
        consumer.close()
        assert FrameMessage.from_record(got.key, got.value, got.headers) == msg

        again = cli("infra", "up", env=env)  # idempotent: finds them running
        assert again.returncode == 0 and again.stdout.count("running") == 2

        # pointed elsewhere, `up` must not start a second server on the same data: it says so instead
        for name, moved in (("Kafka broker", {"KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port_pair()}"}),
                            ("Redis", {"REDIS_URL": f"redis://127.0.0.1:{free_port_pair()}/0"})):
            second = cli("infra", "up", env={**env, **moved})
            assert second.returncode == 1, second.stdout
            assert f"the {name} that patchsight started" in second.stderr and "infra down" in second.stderr
        still = cli("infra", "status", env=env)
        assert still.returncode == 0 and still.stdout.count("running") == 2, still.stdout
    finally:
        plant = tmp_path / "plant.yaml"  # `down` takes -c as `up` does; what it stops is the state folder's
        plant.write_text(f"kafka: {{bootstrap: '{env['KAFKA_BOOTSTRAP']}'}}\n")
        down = cli("infra", "down", "-c", str(plant), env=env)
    assert "kafka" in down.stdout and "redis" in down.stdout
    time.sleep(0.5)
    after = cli("infra", "status", env=env)
    assert after.returncode == 1 and after.stdout.count("stopped") == 2


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    env = dict(os.environ, PATCHSIGHT_HOME=str(tmp_path), KAFKA_BOOTSTRAP=f"127.0.0.1:{port}")
    try:
        out = cli("infra", "up", env=env, timeout=60)
    finally:
        squatter.close()
    assert out.returncode == 1
    assert f"port {port}" in out.stderr and "taken" in out.stderr


def test_an_unreachable_remote_cluster_is_not_started_locally(tmp_path: Path) -> None:
    env = dict(os.environ, PATCHSIGHT_HOME=str(tmp_path), KAFKA_BOOTSTRAP="kafka.invalid:9092")
    out = cli("infra", "up", env=env, timeout=60)
    assert out.returncode == 1 and "does not answer" in out.stderr
    assert not (tmp_path / "kafka").exists()


def test_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("inference: {max_batch: -1}\n")
    out = cli("config", "check", "--config", str(bad), env=dict(os.environ))
    assert out.returncode == 2 and "inference.max_batch" in out.stderr
