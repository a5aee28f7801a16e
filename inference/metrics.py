"""The inference worker's Prometheus metrics (served by ``runtime.health.HealthServer``).

Each worker owns a ``CollectorRegistry`` rather than the process-global one, so
several workers in one process (tests, benchmarks) never share counters.
docs/operations.md says what each metric means and how to read it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets from 1 ms to 30 s: a queue delay of a few ms and a backlog of
# seconds both land in a bucket that tells them apart.
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, p = self.registry, "patchsight_inference_"
        self.frames_in = Counter(p + "frames_in", "Frame records polled from the frames topic.", registry=r)
        self.frames_out = Counter(
            p + "frames_out", "Inspection results acknowledged by the broker, by status.", ["status"], registry=r
        )
        self.frames_skipped = Counter(
            p + "frames_skipped", "Frames not scored (a status=skipped result was published), by reason.",
            ["reason"], registry=r,
        )
        self.frames_dead_lettered = Counter(
            p + "frames_dead_lettered", "Frames sent to the dead-letter topic, by reason.", ["reason"], registry=r
        )
        self.dead_letters_failed = Counter(
            p + "dead_letters_failed",
            "Frames whose dead letter the broker did not take (logged, then passed over), by reason.",
            ["reason"], registry=r,
        )
        self.frames_dropped_on_revoke = Counter(
            p + "frames_dropped_on_revoke",
            "In-flight frames dropped because their partition was revoked; the new owner redoes them.",
            registry=r,
        )
        self.batch_size = Histogram(p + "batch_size", "Frames per model batch.", buckets=_BATCH, registry=r)
        self.batches = Counter(p + "batches", "Model batches, by what closed them.", ["closed_by"], registry=r)
        self.queue_delay = Histogram(
            p + "queue_delay_seconds", "Time a decoded frame waited in the dynamic batcher.", buckets=_SECONDS,
            registry=r,
        )
        self.decode_time = Histogram(
            p + "decode_seconds", "JPEG decode time per frame (decode threads).", buckets=_SECONDS, registry=r
        )
        self.model_time = Histogram(
            p + "model_seconds", "Model time per batch: encoder once per frame plus every question of its line.",
            buckets=_SECONDS, registry=r,
        )
        self.end_to_end = Histogram(
            p + "capture_to_result_seconds",
            "From the frame's capture time to the broker acknowledging its result (clocks of camera host and "
            "worker differ by their skew).",
            buckets=_SECONDS, registry=r,
        )
        self.consumer_lag = Gauge(
            p + "consumer_lag",
            "Frames in the partition not yet finished by this worker (log end offset minus commit point).",
            ["topic", "partition"], registry=r,
        )
        self.assigned_partitions = Gauge(
            p + "assigned_partitions", "Partitions of the frames topic this worker owns now.", registry=r
        )
        self.in_flight = Gauge(p + "in_flight", "Frames polled but not yet acknowledged and committable.", registry=r)
        self.commits_failed = Counter(
            p + "commits_failed", "Offset commits the group coordinator refused (usually a rebalance).", registry=r
        )
        self.rejoins = Counter(
            p + "consumer_rejoins", "Times the worker left a rebalance that did not finish and joined again.", registry=r
        )
        self.ready = Gauge(p + "ready", "1 once the model is loaded and partitions are assigned.", registry=r)
