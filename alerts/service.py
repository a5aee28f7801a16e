"""The alert service: inspection results from Kafka -> alerts in Redis, one per defective part
(alerts/parts.py) or, for cameras without part tracking, debounced k-of-n (alerts/policy.py).

One pass of the loop: poll a batch, and for each result decode -> decide ->
write (one atomic Redis call) ; then commit the batch's offsets. Offsets are
committed only after Redis has everything the batch caused, so a crash or a
Redis outage loses nothing: the uncommitted results come again, and the
debounce and part states and the alert ids (all in Redis) make the repeat harmless.
After each batch (at most once a second) the parts of cameras that have gone quiet
for their line's ``part_timeout_s`` are decided, and the review sample's ended slots are
closed (alerts/review.py). Beside the loop, two threads the loop never waits for: the
webhook dispatcher and the evidence collector, which reads alerts' frames back from Kafka
(alerts/evidence.py).

Several instances may share the consumer group; results are keyed by camera, so
a camera's frames stay in order on one partition and one instance.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import socket
import threading
import time
from typing import Any, Callable

import redis
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from alerts.drift import DriftMonitor, load_reference
from alerts.evidence import EvidenceCollector, FrameReader
from alerts.parts import decide_part, decide_timeout
from alerts.policy import DebounceState, decide
from alerts.review import review_candidate, review_slot
from alerts.store import PART_COUNTERS, PartStep, RedisAlertStore, StateConflict, connect
from alerts.webhooks import WebhookDispatcher, WebhookSender
from runtime.health import HealthServer, Reply
from runtime.kafka_wakeup import keep_awake
from runtime.log import get_logger
from runtime.topics import dead_letter_max_bytes, ensure_topics, subscribe_when_known
from schemas.alert import DefectAlert, Finding
from schemas.config import AlertPolicy, PatchsightConfig
from schemas.dead_letter import DeadLetter
from schemas.errors import SchemaError
from schemas.result import InspectionResult, ResultStatus

log = get_logger("alerts.service")

REDIS_RETRY_INITIAL_S = 0.1
REDIS_RETRY_MAX_S = 5.0
COMMIT_TIMEOUT_MS = 5_000  # a stalled commit must not hold the loop for the client's 30 s request timeout
PART_SWEEP_INTERVAL_S = 1.0  # how often the loop looks for parts whose camera went quiet


class AlertServiceError(RuntimeError):
    """The service cannot start; the message says what to change."""


class Stopped(Exception):
    """Stop was requested while waiting for Redis; the current record stays uncommitted."""


class ServiceMetrics:
    def __init__(self) -> None:
        # A registry per service: tests run several services in one process.
        self.registry = CollectorRegistry()
        r = self.registry
        self.results = Counter("patchsight_alerts_results", "Results consumed, by outcome", ["outcome"], registry=r)
        self.raised = Counter("patchsight_alerts_raised", "Alerts raised", ["line", "defect_type"], registry=r)
        self.redis_up = Gauge("patchsight_alerts_redis_up", "1 while Redis answers", registry=r)
        self.redis_retries = Counter("patchsight_alerts_redis_retries", "Redis writes retried", registry=r)
        self.conflicts = Counter("patchsight_alerts_state_conflicts", "Debounce state moved by another writer", registry=r)
        self.webhooks = Counter("patchsight_alerts_webhook_deliveries", "Webhook attempts", ["outcome"], registry=r)
        self.commits_failed = Counter("patchsight_alerts_commits_failed", "Offset commits that failed or timed out",
                                      registry=r)
        self.dead_letters_failed = Counter("patchsight_alerts_dead_letters_failed",
                                           "Undecodable results whose dead letter the broker did not take (logged, "
                                           "then passed over)", registry=r)
        self.polls_failed = Counter("patchsight_alerts_polls_failed", "Polls that failed (the broker unreachable)",
                                    registry=r)
        self.part_verdicts = Counter("patchsight_alerts_part_verdicts",
                                     "Parts decided by a camera (one per part and camera), by verdict",
                                     ["line", "verdict"], registry=r)
        self.evidence = Counter("patchsight_alerts_evidence_frames",
                                "Evidence frames asked for, by outcome: kept, done (kept already), missing (no longer "
                                "on Kafka), too-large (bigger than the line's whole bound), evicted (on arrival: its "
                                "alert is older than all kept)", ["line", "outcome"],
                                registry=r)
        self.evidence_evicted = Counter("patchsight_alerts_evidence_evicted",
                                        "Alerts and review items whose evidence was evicted, oldest first, to stay "
                                        "within alerts.evidence_max_bytes_per_line", ["line"], registry=r)
        self.evidence_evicted_bytes = Counter("patchsight_alerts_evidence_evicted_bytes",
                                              "Bytes of evidence evicted", ["line"], registry=r)
        self.reviews = Counter("patchsight_alerts_reviews_sampled", "Passed parts kept for operators to review",
                               ["line"], registry=r)
        self.latency = Histogram(
            "patchsight_alerts_process_seconds",
            "Decide + write time per result",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=r,
        )
        self.redis_up.set(1)

    def count_parts_from(self, store: RedisAlertStore, lines: Any) -> None:
        """patchsight_parts{line,verdict}: the lines' part counters, read from Redis at each scrape.

        The line totals live in Redis (a part passed by one camera can be flagged by the next, which
        moves it from passed to flagged, so no process can count it alone).
        """

        def samples(line: str) -> list[tuple[list[str], float]]:
            counts = store.part_counts(line)
            return [([line, verdict], counts[verdict]) for verdict in PART_COUNTERS]

        self.registry.register(_LineGauge("patchsight_parts", "Parts of the line by verdict (inspected = passed + "
                                          "flagged)", ["line", "verdict"], samples, store, lines))

    def count_evidence_from(self, store: RedisAlertStore, lines: Any) -> None:
        """patchsight_alerts_evidence_bytes{line}: the evidence each line keeps, read from Redis at each scrape
        (every instance keeps and evicts into the one bound per line)."""
        self.registry.register(_LineGauge(
            "patchsight_alerts_evidence_bytes",
            "Bytes of evidence frames the line keeps (at most alerts.evidence_max_bytes_per_line)", ["line"],
            lambda line: [([line], store.evidence_bytes(line))], store, lines))


class _LineGauge:
    """A gauge per line read from Redis at each scrape: every instance reports the same figures."""

    def __init__(self, name: str, documentation: str, labels: list[str],
                 samples: Callable[[str], list[tuple[list[str], float]]], store: RedisAlertStore, lines: Any) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.samples, self.store, self.lines = samples, store, lines

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labels)

    def describe(self) -> list:
        return [self._family()]

    def collect(self) -> Any:
        family = self._family()
        try:
            for line in sorted(set(self.lines()) | set(self.store.lines())):
                for labels, value in self.samples(line):
                    family.add_metric(labels, value)
        except redis.RedisError:
            pass  # patchsight_alerts_redis_up says why
        yield family


class _ForgetOnRevoke(ConsumerRebalanceListener):
    def __init__(self, service: "AlertService") -> None:
        self.service = service

    def on_partitions_revoked(self, revoked: Any) -> None:
        # Another instance may now move these cameras' state on; our copies would be stale.
        self.service._states.clear()
        self.service._partitions.clear()
        self.service.drift.forget()
        # and their offsets are the new owner's to commit
        for tp in revoked:
            self.service._uncommitted.pop(tp, None)

    def on_partitions_assigned(self, assigned: Any) -> None:
        pass


class AlertService:
    def __init__(self, config: PatchsightConfig, instance_id: str | None = None) -> None:
        self.config = config
        self.settings = config.alerts
        self.instance_id = instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.lines = {line.id: line for line in config.lines}
        self.redis = connect(config.redis)
        self.store = RedisAlertStore(self.redis, config.alerts)
        self.metrics = ServiceMetrics()
        self.metrics.count_parts_from(self.store, lambda: self.lines)
        self.drift = DriftMonitor(config.alerts.drift, load_reference(config.model.bundle), self.redis,
                                  config.alerts.key_prefix, config.alerts.stream_maxlen, self.metrics.registry)
        self.metrics.count_evidence_from(self.store, lambda: self.lines)
        self.redis_down_since: float | None = None
        self.metrics_port: int | None = None
        self._states: dict[tuple[str, str], DebounceState] = {}  # cache; Redis holds the truth
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._http: HealthServer | None = None
        self._webhook_stop = threading.Event()
        self._webhook_thread: threading.Thread | None = None
        self._evidence_thread: threading.Thread | None = None
        self._warned_lines: set[str] = set()
        self._uncommitted: dict[TopicPartition, int] = {}  # handled, stored, and not yet committed
        self._partitions: dict[str, int] = {}  # camera -> partition of the results it was seen on
        self._next_sweep = 0.0

    # --- lifecycle ---

    def start(self) -> "AlertService":
        kafka = self.config.kafka
        self._start_http()  # first: a port in use fails before anything joins the group
        ensure_topics(kafka, [kafka.topics.results, kafka.topics.dead_letter])
        self._consumer = KafkaConsumer(
            **kafka.client_kwargs(),
            client_id=f"{kafka.client_id_prefix}-alerts-{self.instance_id}",
            group_id=self.settings.group_id,
            enable_auto_commit=False,
            # A new group starts at the oldest retained result: missing a defect is worse than a late alert.
            auto_offset_reset="earliest",
            max_poll_records=500,
            metadata_max_age_ms=30_000,
        )
        subscribe_when_known(self._consumer, kafka.topics.results, listener=_ForgetOnRevoke(self))
        self._awake = threading.Event()
        keep_awake(self._consumer, self._awake)
        if self.settings.webhooks:
            sender = WebhookSender(self.store, on_outcome=lambda o: self.metrics.webhooks.labels(o).inc())
            dispatcher = WebhookDispatcher(self.store, self.settings.webhooks, self.instance_id, sender)
            self._webhook_thread = threading.Thread(
                target=dispatcher.run, args=(self._webhook_stop,), name="webhooks", daemon=True
            )
            self._webhook_thread.start()
        self._start_evidence_collector()
        log.info("alert service started", instance=self.instance_id, topic=kafka.topics.results,
                 group=self.settings.group_id, metrics_port=self.metrics_port,
                 drift=self.drift.off_reason or f"watching {self.config.model.bundle}")
        return self

    def _start_evidence_collector(self) -> None:
        kafka = self.config.kafka
        reader = FrameReader(kafka, f"{kafka.client_id_prefix}-alerts-evidence-{self.instance_id}")
        collector = EvidenceCollector(self.store, reader, self._count_evidence)
        # stops with the webhooks: both are background work the results loop never waits for
        self._evidence_thread = threading.Thread(target=collector.run, args=(self._webhook_stop,), name="evidence",
                                                 daemon=True)
        self._evidence_thread.start()

    def _count_evidence(self, line: str, outcome: str, evicted: int, freed_bytes: int) -> None:
        self.metrics.evidence.labels(line, outcome).inc()
        if evicted:
            self.metrics.evidence_evicted.labels(line).inc(evicted)
            self.metrics.evidence_evicted_bytes.labels(line).inc(freed_bytes)

    def close(self) -> None:
        self._webhook_stop.set()
        if self._webhook_thread:
            self._webhook_thread.join(timeout=30)
        if self._evidence_thread:
            self._evidence_thread.join(timeout=30)
        if self._consumer:
            self._awake.set()
            self._consumer.close(autocommit=False)
        if self._producer:
            self._producer.close(timeout=5)
        if self._http:
            self._http.stop()
        self.drift.publish_status(force=True)
        self.redis.close()

    def __enter__(self) -> "AlertService":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def healthy(self) -> bool:
        return self.redis_down_since is None

    # --- the loop ---

    def run(self, stop: threading.Event, max_idle_s: float | None = None) -> None:
        """Process batches until ``stop`` is set (or nothing arrived for ``max_idle_s``)."""
        idle_since = time.monotonic()
        while not stop.is_set():
            if self.process_batch(stop=stop):
                idle_since = time.monotonic()
            elif max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                return

    def process_batch(self, timeout_ms: int = 500, stop: threading.Event | None = None) -> int:
        """Poll once, handle every record, commit what was handled. Returns records handled."""
        assert self._consumer is not None, "call start() first"
        stop = stop or threading.Event()
        try:
            batch = self._consumer.poll(timeout_ms=timeout_ms)
        except (KafkaError, OSError) as exc:
            # A broker outage surfaces here now and then (connection refused mid-fetch); the consumer
            # reconnects by itself, so the service waits and polls again instead of ending its thread.
            self.metrics.polls_failed.inc()
            log.warning("poll failed; polling again", error=f"{type(exc).__name__}: {exc}")
            stop.wait(timeout_ms / 1000)
            return 0
        done: dict[TopicPartition, int] = {}
        try:
            for tp, records in batch.items():
                for record in records:
                    self._handle(record, stop)
                    done[tp] = record.offset + 1
        except Stopped:
            log.info("stopping with part of a batch unhandled; it stays uncommitted", handled=sum(done.values()))
        self._commit(done)
        self.drift.publish_status()
        if not stop.is_set():
            self._sweep_part_timeouts()
        return sum(len(r) for r in batch.values())

    def _handle(self, record: Any, stop: threading.Event) -> None:
        try:
            result = InspectionResult.from_record(record.value, record.headers)
        except SchemaError as exc:
            self._dead_letter(record, exc)
            return
        started = time.perf_counter()
        self._partitions[result.camera_id] = record.partition
        self._with_redis_retry(lambda: self._decide_and_store(result), stop)
        self.drift.observe(result)
        self._with_redis_retry(self.drift.flush, stop)
        self.metrics.latency.observe(time.perf_counter() - started)

    def _decide_and_store(self, result: InspectionResult) -> None:
        key = (result.line_id, result.camera_id)
        line = self.lines.get(result.line_id)
        if line is None and result.line_id not in self._warned_lines:
            self._warned_lines.add(result.line_id)
            log.warning("result for a line not in the configuration; using the default policy", line=result.line_id)
        if self._tracks_parts(result):
            self._decide_part(result)
            return
        for _ in range(5):
            state = self._states.get(key)
            if state is None:
                state = self.store.load_debounce(*key)
            decision = decide(state, result, line)
            if decision.redelivery:
                self._states[key] = state
                self.metrics.results.labels("redelivery").inc()
                return
            now_ns = time.time_ns()
            alerts = [
                DefectAlert(
                    alert_id=r.alert_id,
                    line_id=result.line_id,
                    camera_id=result.camera_id,
                    question_id=r.question_id,
                    question=r.question,
                    defect_type=r.defect_type,
                    score=r.score,
                    threshold=r.threshold,
                    first_seq=r.first_seq,
                    last_seq=r.last_seq,
                    last_defect_seq=r.last_seq,
                    first_capture_ns=r.first_capture_ns,
                    trigger_capture_ns=r.trigger_capture_ns,
                    raised_ns=now_ns,
                    model_id=result.model_id,
                    findings=[Finding(question_id=r.question_id, question=r.question, defect_type=r.defect_type,
                                      score=r.score, threshold=r.threshold, camera_id=result.camera_id)],
                )
                for r in decision.raised
            ]
            try:
                thumbnail = self._thumbnail(result, bool(alerts))
                created = self.store.apply(result, state, decision, alerts, thumbnail, now_ns)
            except StateConflict as exc:
                self.metrics.conflicts.inc()
                log.info("debounce state moved on elsewhere; deciding again", detail=str(exc))
                self._states.pop(key, None)
                continue
            except redis.RedisError:
                self._states.pop(key, None)  # the write may or may not have happened
                raise
            self._states[key] = decision.state
            self.metrics.results.labels(result.status.value).inc()
            for alert in (a for a in alerts if a.alert_id in created):
                self.metrics.raised.labels(alert.line_id, alert.defect_type).inc()
                log.info("alert raised", line=alert.line_id, camera=alert.camera_id, question=alert.question_id,
                         alert_id=alert.alert_id, first_seq=alert.first_seq, seq=alert.last_seq, score=alert.score)
            return
        raise RuntimeError(f"debounce state of {key} keeps changing under us")

    # --- the part path (alerts/parts.py) ---

    def _tracks_parts(self, result: InspectionResult) -> bool:
        """Results that show a part, and skips that may say the part left, are decided per part;
        the rest (cameras with ``track_parts: false``, results without a part) with the k-of-n debounce."""
        line = self.lines.get(result.line_id)
        camera = next((c for c in line.cameras if c.id == result.camera_id), None) if line else None
        if camera is not None and not camera.track_parts:
            return False
        return result.part is not None or result.status == ResultStatus.skipped

    def _decide_part(self, result: InspectionResult) -> None:
        line = self.lines.get(result.line_id)
        thumbnail = self._thumbnail(result, wanted=result.part is not None)
        now_ns = time.time_ns()
        step = self.store.step_part(
            result.line_id, result.camera_id,
            lambda state: decide_part(state, result, line, now_ns, has_thumbnail=thumbnail is not None,
                                      evidence_frames=self.settings.evidence_frames_per_part),
            now_ns, result, thumbnail)
        if step.decision is not None and step.decision.redelivery:
            self.metrics.results.labels("redelivery").inc()
            return
        self.metrics.results.labels(result.status.value).inc()
        self._count_part_step(step)
        self._offer_for_review(step, now_ns)

    def _offer_for_review(self, step: PartStep, now_ns: int) -> None:
        """A passed part may become the line's review sample of the current slot (alerts/review.py)."""
        per_hour = self.settings.review_max_per_hour
        ended = step.decision.ended if step.decision is not None else None
        if not per_hour or ended is None or step.merge is None:
            return
        item = review_candidate(ended, step.merge.record.verdict, now_ns)
        if item is None:
            return
        try:
            self._count_review(ended.line_id, self.store.offer_review(item, ended.line_id, review_slot(now_ns, per_hour)))
        except redis.RedisError as exc:
            # the part itself is stored, so a retry of the result would find it done: the sample skips it
            log.warning("passed part not offered for review", line=ended.line_id, part=ended.part_id, error=str(exc))

    def _close_review_slots(self, now_ns: int) -> None:
        per_hour = self.settings.review_max_per_hour
        if not per_hour:
            return
        for line_id in sorted(set(self.lines) | set(self.store.lines())):
            self._count_review(line_id, self.store.offer_review(None, line_id, review_slot(now_ns, per_hour)))

    def _count_review(self, line_id: str, offered: tuple[str, str | None]) -> None:
        if offered[1] is not None:
            self.metrics.reviews.labels(line_id).inc()
            log.info("passed part kept for review", line=line_id, review_id=offered[1])

    def _sweep_part_timeouts(self) -> None:
        """Decide the parts whose camera has sent nothing for the line's ``part_timeout_s``.

        Only cameras on this instance's partitions, and only once those partitions are consumed
        to their end: a camera whose results wait in the backlog has not gone quiet.
        """
        if time.monotonic() < self._next_sweep or self._consumer is None or self.redis_down_since is not None:
            return
        self._next_sweep = time.monotonic() + PART_SWEEP_INTERVAL_S
        now_ns = time.time_ns()
        shortest = min([line.alert_policy.part_timeout_s for line in self.lines.values()]
                       + [AlertPolicy().part_timeout_s])
        try:
            quiet = self.store.open_parts(seen_before_ns=now_ns - int(shortest * 1e9))
            for line_id, camera_id in quiet:
                if not self._caught_up(camera_id):
                    continue
                line = self.lines.get(line_id)
                step = self.store.step_part(
                    line_id, camera_id,
                    lambda state, line=line, line_id=line_id, camera_id=camera_id: decide_timeout(
                        state, line, line_id, camera_id, now_ns),
                    now_ns)
                self._count_part_step(step)
                self._offer_for_review(step, now_ns)
            self._close_review_slots(now_ns)
        except (redis.RedisError, StateConflict) as exc:
            log.warning("part timeouts not checked; trying again", error=str(exc))

    def _caught_up(self, camera_id: str) -> bool:
        """Whether this instance owns the camera's results partition and has consumed all of it."""
        assert self._consumer is not None
        topic = self.config.kafka.topics.results
        partition = self._partitions.get(camera_id)
        if partition is None:
            partitions = self._consumer.partitions_for_topic(topic)
            if not partitions:
                return False
            # the producers' default partitioner: murmur2 of the key (the camera id)
            partition = (murmur2(camera_id.encode()) & 0x7FFFFFFF) % len(partitions)
        tp = TopicPartition(topic, partition)
        if tp not in self._consumer.assignment():
            return False
        try:
            end = self._consumer.highwater(tp)
            return end is not None and self._consumer.position(tp) >= end
        except KafkaError:
            return False

    def _count_part_step(self, step: PartStep) -> None:
        if step.conflicts:
            self.metrics.conflicts.inc(step.conflicts)
        ended = step.decision.ended if step.decision is not None else None
        if ended is None:
            return
        self.metrics.part_verdicts.labels(ended.line_id, ended.verdict).inc()
        log.debug("part decided", line=ended.line_id, camera=ended.camera_id, part=ended.part_id,
                  verdict=ended.verdict, ended_by=ended.ended_by, frames=ended.frames)
        if step.event and step.merge is not None and step.merge.alert is not None:
            alert = step.merge.alert
            if step.event == "raised":
                self.metrics.raised.labels(alert.line_id, alert.defect_type).inc()
            log.info(f"part alert {step.event}", line=alert.line_id, camera=ended.camera_id, part=alert.part_id,
                     alert_id=alert.alert_id, findings=[f"{f.question_id}@{f.camera_id}={f.score:.3f}"
                                                        for f in alert.findings])

    def _thumbnail(self, result: InspectionResult, wanted: bool) -> bytes | None:
        if not wanted or not result.thumbnail_jpeg_b64:
            return None
        try:
            return base64.b64decode(result.thumbnail_jpeg_b64, validate=True)
        except (binascii.Error, ValueError):
            log.warning("result thumbnail is not valid base64; alert stored without it",
                        line=result.line_id, camera=result.camera_id, seq=result.seq)
            return None

    def _with_redis_retry(self, write: Any, stop: threading.Event) -> None:
        delay = REDIS_RETRY_INITIAL_S
        while True:
            try:
                write()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if self.redis_down_since is None:
                    self.redis_down_since = time.monotonic()
                    self.metrics.redis_up.set(0)
                    log.error("redis unreachable; holding the batch and retrying", error=str(exc))
                self.metrics.redis_retries.inc()
                if stop.wait(delay):
                    raise Stopped from None
                delay = min(REDIS_RETRY_MAX_S, delay * 2)
                continue
            if self.redis_down_since is not None:
                log.info("redis is back", down_s=round(time.monotonic() - self.redis_down_since, 1))
                self.redis_down_since = None
                self.metrics.redis_up.set(1)
            return

    def _commit(self, done: dict[TopicPartition, int]) -> None:
        """Commit what this batch handled, with what earlier commits could not."""
        self._uncommitted.update(done)
        if not self._uncommitted:
            return
        assert self._consumer is not None
        offsets = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in self._uncommitted.items()}
        try:
            self._consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
        except CommitFailedError as exc:
            # The group rebalanced while we worked (e.g. a long Redis outage): the new owner
            # reprocesses from the last commit, which the debounce state makes harmless.
            self.metrics.commits_failed.inc()
            self._uncommitted.clear()
            log.warning("offset commit refused after a rebalance; results will be redelivered", error=str(exc))
            return
        except KafkaError as exc:
            # A slow or unreachable coordinator: what was handled is stored, so keep going and
            # commit it with the next batch (or on the next idle poll).
            self.metrics.commits_failed.inc()
            log.warning("offset commit failed; retrying with the next poll", error=str(exc),
                        partitions=len(offsets))
            return
        self._uncommitted.clear()

    def _dead_letter(self, record: Any, exc: SchemaError) -> None:
        self.metrics.results.labels("invalid").inc()
        log.warning("undecodable result sent to the dead-letter topic", topic=record.topic,
                    partition=record.partition, offset=record.offset, error=str(exc))
        kafka = self.config.kafka
        if self._producer is None:
            # Not idempotent: kafka-python 3.0.12 makes one record the broker refuses fatal for an
            # idempotent producer, and every later dead letter would fail with it.
            self._producer = KafkaProducer(**kafka.client_kwargs(), client_id=f"{kafka.client_id_prefix}-alerts-dlq",
                                           enable_idempotence=False)
        letter = DeadLetter.for_record(record, exc.reason, str(exc), service=f"alerts/{self.instance_id}")
        key, value, headers = letter.to_record(dead_letter_max_bytes(self._producer, self.config))
        try:
            self._producer.send(kafka.topics.dead_letter, key=key, value=value, headers=headers).get(timeout=30)
        except KafkaError as err:
            # Kafka itself is failing; the record is logged above, do not block the line's alerts on it.
            self.metrics.dead_letters_failed.inc()
            log.error("dead-letter publish failed", error=str(err), offset=record.offset)

    # --- /metrics and /healthz ---

    def _start_http(self) -> None:
        try:
            self._http = HealthServer(self.settings.metrics_port, self.metrics.registry, {"/healthz": self._health},
                                      host=self.settings.metrics_host, name="alerts-http")
        except OSError as exc:
            raise AlertServiceError(f"cannot serve /metrics on port {self.settings.metrics_port}: {exc.strerror} "
                                    "(another alert service on this host? set alerts.metrics_port; 0 picks a free one)"
                                    ) from None
        self.metrics_port = self._http.start().port

    def _health(self) -> Reply:
        report = {"status": "ok" if self.healthy else "unhealthy", "instance": self.instance_id}
        if not self.healthy:
            report["reason"] = "redis unreachable"
        return Reply(200 if self.healthy else 503, json.dumps(report).encode(), "application/json")
