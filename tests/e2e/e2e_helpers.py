"""What the end-to-end tests share: the worker and the alert service run in threads, and waiting on the topics."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from kafka import KafkaConsumer, TopicPartition

from alerts.service import AlertService
from inference.worker import Worker
from model.bundle import Bundle
from schemas.config import PatchsightConfig
from schemas.result import InspectionResult


@contextmanager
def services(cfg: PatchsightConfig, bundle: Bundle) -> Iterator[None]:
    stop = threading.Event()
    worker = Worker(cfg, bundle, worker_id="e2e")
    alerts = AlertService(cfg, "e2e").start()
    threads = [threading.Thread(target=worker.run, args=(stop,)), threading.Thread(target=alerts.run, args=(stop,))]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        alerts.close()
    assert not any(t.is_alive() for t in threads), "a service did not stop"


def read_results(cfg: PatchsightConfig) -> list[InspectionResult]:
    consumer = KafkaConsumer(**cfg.kafka.client_kwargs(), enable_auto_commit=False, consumer_timeout_ms=1000)
    topic = cfg.kafka.topics.results
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out = [InspectionResult.from_record(r.value, r.headers) for r in consumer]
    consumer.close()
    return out


def alerts_caught_up(cfg: PatchsightConfig) -> bool:
    """The alert service has committed every result on the topic."""
    topic = cfg.kafka.topics.results
    group = KafkaConsumer(**cfg.kafka.client_kwargs(), group_id=cfg.alerts.group_id, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in group.partitions_for_topic(topic) or []]
        ends = group.end_offsets(parts)
        return all((group.committed(tp) or 0) >= ends[tp] for tp in parts)
    finally:
        group.close()


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return condition()
