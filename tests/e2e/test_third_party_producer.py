"""A third-party client, following only the docs: confluent-kafka (librdkafka) publishes frames as
docs/wire-format.md says (headers, key, partitioner), a worker and the alert service run, and the
alert is read back with plain Redis commands as docs/redis-keys.md says. If the docs and the code
part ways, this fails (issue #35).

The ids are config/demo.yaml's line-a and its camera; a PLC-style ``ps-part-id`` names the part,
and the first question is made always above threshold so the part is flagged whatever the tiny
random model says.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import cv2
import numpy as np
import redis
import yaml
from confluent_kafka import Producer
from kafka.partitioner.default import murmur2

from model.bundle import Bundle
from runtime.topics import ensure_topics
from schemas.alert import part_alert_id
from tests.e2e.test_pipeline import bundle, services  # noqa: F401  (bundle: a fixture)
from tests.inference.test_worker import read_topic

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PART = "P-0412-0042"
FRAMES = 6


def demo_line() -> dict:
    """config/demo.yaml's line-a: its ids, cameras and questions; thresholds set so the part is flagged."""
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    line = next(line for line in demo["lines"] if line["id"] == "line-a")
    for i, question in enumerate(line["questions"]):
        question["threshold"] = 0.0 if i == 0 else 1.0
    line["alert_policy"] = {**line.get("alert_policy", {}), "part_timeout_s": 1.0}
    return line


def documented_fields(key_pattern: str) -> str:
    """The contents column of docs/redis-keys.md's row for ``key_pattern``."""
    for row in (DOCS / "redis-keys.md").read_text().splitlines():
        if row.startswith(f"| `{key_pattern}` |"):
            return row.split("|")[3]
    raise AssertionError(f"docs/redis-keys.md has no row for {key_pattern}")


def assert_documented(fields: set[str], key_pattern: str) -> None:
    row = documented_fields(key_pattern)
    missing = sorted(f for f in fields if not re.search(rf"(?<![\w/]){re.escape(f)}(?!\w)", row))
    assert not missing, f"docs/redis-keys.md does not list {missing} for {key_pattern}"


def frame_headers(line: str, camera: str, seq: int, width: int, height: int, part: str | None) -> list:
    """docs/wire-format.md's header table, in its order; ps-mode=replay so a slow test machine skips none."""
    headers = [("ps-schema", b"1"), ("ps-line", line.encode()), ("ps-camera", camera.encode()),
               ("ps-seq", str(seq).encode()), ("ps-capture-ns", str(time.time_ns()).encode()),
               ("ps-encoding", b"jpeg"), ("ps-width", str(width).encode()), ("ps-height", str(height).encode()),
               ("ps-mode", b"replay")]
    return headers + ([("ps-part-id", part.encode())] if part else [])


def test_the_wire_format_doc_gives_these_headers_and_the_partitioner() -> None:
    doc = (DOCS / "wire-format.md").read_text()
    table = re.findall(r"^\| `(ps-[a-z-]+)` \| (?:yes|no)", doc, re.M)
    assert table == [name for name, _ in frame_headers("l", "c", 0, 1, 1, PART)]
    assert "-X partitioner=murmur2_random" in doc and '"partitioner": "murmur2_random"' in doc


def test_murmur2_random_puts_each_camera_where_kafka_python_does_and_the_default_does_not(
    make_config, unique
) -> None:
    """The doc's reason for the partitioner setting, on a real topic of 12 partitions and 24 camera ids."""
    cfg = make_config()
    topic = unique("partitioner")
    ensure_topics(cfg.kafka, [topic], partitions=12)
    cameras = [f"line-a-cam{i}".encode() for i in range(24)]
    kafka_python = [(murmur2(key) & 0x7FFFFFFF) % 12 for key in cameras]  # DefaultPartitioner's choice

    def partitions(settings: dict) -> list[int]:
        producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap, **settings})
        placed: dict[bytes, int] = {}
        for key in cameras:
            producer.produce(topic, key=key, value=b"x",
                             on_delivery=lambda err, msg: placed.setdefault(msg.key(), msg.partition()))
        assert producer.flush(30) == 0
        return [placed[key] for key in cameras]

    assert partitions({"partitioner": "murmur2_random"}) == kafka_python
    assert partitions({}) != kafka_python, "librdkafka's default (CRC32) would split producers' cameras"


def test_confluent_kafka_frames_become_an_alert_read_with_plain_redis_commands(
    make_config, unique, bundle: Bundle, redis_client: redis.Redis  # noqa: F811
) -> None:
    line = demo_line()
    camera = line["cameras"][0]["id"]
    assert (line["id"], camera) == ("line-a", "line-a-cam1"), "docs/wire-format.md's example ids"
    cfg = make_config(lines=[line], inference={"group_id": unique("infer"), "metrics_port": 0, "decode_threads": 1},
                      alerts={"group_id": unique("alerts")})
    ensure_topics(cfg.kafka)
    prefix = cfg.alerts.key_prefix

    # As docs/wire-format.md's confluent-kafka example: key = camera id, murmur2_random partitioner.
    producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap, "partitioner": "murmur2_random",
                         "acks": "all", "enable.idempotence": True})
    delivered: list = []
    jpeg = cv2.imencode(".jpg", np.random.default_rng(35).integers(0, 256, (120, 160, 3), dtype=np.uint8))[1]
    # first a frame with ids of no configured line (the doc's old example): dead-lettered, not inspected
    producer.produce(cfg.kafka.topics.frames, key=b"cam-1", value=jpeg.tobytes(),
                     headers=frame_headers("line-1", "cam-1", 0, 160, 120, None),
                     on_delivery=lambda err, msg: delivered.append((err, msg)))
    for seq in range(FRAMES):
        producer.produce(cfg.kafka.topics.frames, key=camera.encode(), value=jpeg.tobytes(),
                         headers=frame_headers(line["id"], camera, seq, 160, 120, PART),
                         on_delivery=lambda err, msg: delivered.append((err, msg)))
    assert producer.flush(30) == 0
    assert [err for err, _ in delivered] == [None] * (FRAMES + 1)
    # murmur2_random puts the camera where kafka-python (patchsight's own publisher) puts it
    partitions = cfg.kafka.topics.partitions
    expected = (murmur2(camera.encode()) & 0x7FFFFFFF) % partitions
    assert {msg.partition() for _, msg in delivered[1:]} == {expected}

    alert_id = part_alert_id(line["id"], PART)
    with services(cfg, bundle):
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not redis_client.execute_command(
                "ZRANGE", f"{prefix}:alerts:line:{line['id']}", 0, -1):
            time.sleep(0.2)
        letters = read_topic(cfg, cfg.kafka.topics.dead_letter, lambda rs: len(rs) >= 1, timeout=10)

    assert [dict(r.headers)["ps-dlq-reason"] for r in letters] == [b"unknown-line"]
    # docs/redis-keys.md, read with plain commands
    assert redis_client.execute_command("ZRANGE", f"{prefix}:alerts:line:{line['id']}", 0, -1) == [alert_id.encode()]
    assert redis_client.execute_command("ZRANGE", f"{prefix}:alerts:unresolved", 0, -1) == [alert_id.encode()]
    alert = {k.decode(): v.decode() for k, v in
             redis_client.execute_command("HGETALL", f"{prefix}:alert:{alert_id}").items()}
    assert (alert["line_id"], alert["camera_id"], alert["part_id"], alert["state"]) == (
        line["id"], camera, PART, "open")
    assert alert["schema_version"] == "2" and alert["question_id"] == line["questions"][0]["id"]
    assert [f["question_id"] for f in json.loads(alert["findings"])] == [line["questions"][0]["id"]]
    assert_documented(set(alert), "{p}:alert:{alert_id}")

    cameras = redis_client.execute_command("SMEMBERS", f"{prefix}:cameras:{line['id']}")
    assert set(cameras) == {camera.encode()}
    health = {k.decode(): v.decode() for k, v in
              redis_client.execute_command("HGETALL", f"{prefix}:camera:{line['id']}:{camera}").items()}
    assert (health["line_id"], health["camera_id"], health["last_seq"]) == (line["id"], camera, str(FRAMES - 1))
    assert_documented(set(health), "{p}:camera:{line}:{camera}")

    events = redis_client.execute_command("XRANGE", f"{prefix}:events:{line['id']}", "-", "+")
    raised = [fields for _, fields in events]  # redis-py hands each entry's fields over as a dict
    assert [(e[b"event"], e[b"alert_id"]) for e in raised] == [(b"raised", alert_id.encode())]
    assert json.loads(raised[0][b"data"])["alert"]["alert_id"] == alert_id
    # no webhooks configured: the stream has no consumer group (docs/redis-keys.md)
    assert redis_client.execute_command("XINFO", "GROUPS", f"{prefix}:events:{line['id']}") == []
    counts = redis_client.execute_command("HGETALL", f"{prefix}:partcounts:{line['id']}")
    assert {k.decode(): int(v) for k, v in counts.items()}["flagged"] == 1
