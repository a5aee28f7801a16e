"""The frame message survives a real Kafka record, and malformed records raise typed errors."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer

from runtime.topics import ensure_topics
from schemas import FrameMessage, FrameMode, MalformedMessage, UnsupportedSchemaVersion

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"


def frame(**changes: object) -> FrameMessage:
    fields: dict[str, object] = dict(
        line_id="line-a", camera_id="cam-1", seq=7, capture_ns=1_700_000_000_000_000_000,
        width=640, height=480, mode=FrameMode.replay, payload=JPEG,
    )
    fields.update(changes)
    return FrameMessage(**fields)  # type: ignore[arg-type]


def test_round_trip_through_a_real_kafka_record(kafka_settings, unique) -> None:
    topic = unique("frames")
    ensure_topics(kafka_settings, [topic], partitions=1)
    sent = [frame(seq=i) for i in range(3)]
    producer = KafkaProducer(**kafka_settings.client_kwargs(), acks="all")
    for msg in sent:
        key, value, headers = msg.to_record()
        producer.send(topic, key=key, value=value, headers=headers)
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        topic, **kafka_settings.client_kwargs(), auto_offset_reset="earliest", consumer_timeout_ms=10_000
    )
    received = []
    deadline = time.monotonic() + 20
    for record in consumer:
        received.append(FrameMessage.from_record(record.key, record.value, record.headers))
        if len(received) == len(sent) or time.monotonic() > deadline:
            break
    consumer.close()
    assert received == sent
    assert received[0].payload == JPEG and received[0].mode is FrameMode.replay


def test_headers_are_plain_strings_any_client_can_write() -> None:
    key, value, headers = frame().to_record()
    assert key == b"cam-1" and value == JPEG
    assert dict(headers)["ps-seq"] == b"7" and dict(headers)["ps-schema"] == b"1"
    # a record built by hand, as another language's client would
    rebuilt = FrameMessage.from_record(key, value, [(k, v) for k, v in headers])
    assert rebuilt == frame()


@pytest.mark.parametrize(
    "mutate, error, field",
    [
        (lambda h: {**h, "ps-schema": b"2"}, UnsupportedSchemaVersion, "ps-schema"),
        (lambda h: {k: v for k, v in h.items() if k != "ps-schema"}, MalformedMessage, "ps-schema"),
        (lambda h: {k: v for k, v in h.items() if k != "ps-line"}, MalformedMessage, "ps-line"),
        (lambda h: {**h, "ps-seq": b"-1"}, MalformedMessage, "ps-seq"),
        (lambda h: {**h, "ps-seq": b"seven"}, MalformedMessage, "ps-seq"),
        (lambda h: {**h, "ps-width": b"99999999"}, MalformedMessage, "width"),
        (lambda h: {**h, "ps-camera": b"cam 1; DROP"}, MalformedMessage, "camera_id"),
        (lambda h: {**h, "ps-encoding": b"png"}, MalformedMessage, "encoding"),
        (lambda h: {**h, "ps-line": b"\xff\xfe"}, MalformedMessage, "ps-line"),
        (lambda h: {**h, "ps-line": b"x" * 10_000}, MalformedMessage, "ps-line"),
    ],
)
def test_malformed_headers_raise_typed_errors_naming_the_field(mutate, error, field) -> None:
    key, value, headers = frame().to_record()
    bad = list(mutate(dict(headers)).items())
    with pytest.raises(error) as caught:
        FrameMessage.from_record(key, value, bad)
    assert caught.value.field == field


def test_empty_payload_and_mismatched_key_are_rejected() -> None:
    key, value, headers = frame().to_record()
    with pytest.raises(MalformedMessage, match="empty payload"):
        FrameMessage.from_record(key, b"", headers)
    with pytest.raises(MalformedMessage, match="key"):
        FrameMessage.from_record(b"cam-2", value, headers)
