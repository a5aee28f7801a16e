"""Live cameras: one process per camera, and a supervisor that keeps them running.

A camera process runs two threads joined by a ``drop_oldest`` buffer::

    source --read/encode--> FrameBuffer(drop_oldest) --publish--> Kafka frames topic

Capture never waits for Kafka: when the broker is slow or away, the oldest frames are
dropped (and counted) so that what gets through is fresh. Each camera has its own process
so a camera that crashes, or stalls inside a driver call, cannot stop the others; the
supervisor restarts crashed or stalled cameras with backoff and reports lost ones.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from runtime.health import HealthServer
from runtime.log import configure_logging, get_logger
from schemas.config import CameraConfig, CameraSource, IngestSettings, LineConfig, PatchsightConfig
from schemas.frame import FrameMessage, FrameMode

from ingest.buffer import FrameBuffer
from ingest.publisher import FramePublisher, IngestCounters, encode_jpeg, publish_from
from ingest.sources import CameraLost, FrameSource, ReconnectingSource, open_source

EXIT_CAMERA_LOST = 3
# A camera that crashes this many times within ``reconnect_give_up_s`` is reported dead.
MAX_CRASHES = 5
STATS_EVERY_S = 30.0


class _Stop:
    """``is_set``/``wait`` over a local event and, optionally, the supervisor's shared one."""

    def __init__(self, *events: Any) -> None:
        self.events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)

    def wait(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not self.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.05, left))
        return True

    def set(self) -> None:
        self.events[0].set()


def run_camera(
    line: LineConfig,
    camera: CameraConfig,
    config: PatchsightConfig,
    *,
    counters: IngestCounters | None = None,
    stop: Any = None,
    opener: Callable[[CameraSource], FrameSource] = open_source,
) -> IngestCounters:
    """Capture, encode and publish one camera until ``stop`` is set. Raises ``CameraLost``.

    ``stop`` is anything with ``is_set()`` and ``wait(timeout)`` (a threading or
    multiprocessing Event). Sequence numbers continue from ``counters["captured"]``, so a
    restarted camera process never reuses one.
    """
    if camera.source is None:
        raise ValueError(f"camera {camera.id} has no source configured")
    counters = counters or IngestCounters()
    stop = _Stop(stop if stop is not None else threading.Event())
    log = get_logger("ingest.camera", line=line.id, camera=camera.id)
    buffer: FrameBuffer[FrameMessage] = FrameBuffer(config.ingest.buffer_frames, "drop_oldest", name=camera.id)
    publisher = FramePublisher(
        config.kafka,
        config.ingest,
        counters,
        client_id=f"{config.kafka.client_id_prefix}-ingest-{camera.id}",
        stop=stop,  # type: ignore[arg-type]
        quality=camera.jpeg_quality,
        stall_s=config.ingest.producer_stall_s,
    )
    pump = threading.Thread(target=publish_from, args=(buffer, publisher), kwargs={"retry": False}, daemon=True)
    pump.start()
    source = ReconnectingSource(camera.source, config.ingest, opener=opener, stop=stop.is_set, camera=camera.id)
    log.info("camera started", source=camera.source.describe(), fps=camera.fps)
    interval = 1.0 / camera.fps
    seq = counters.get("captured")
    dropped_seen = reconnects_seen = 0
    next_due = time.monotonic()
    try:
        while not stop.is_set():
            counters.beat()
            if not source.live:
                stop.wait(max(0.0, next_due - time.monotonic()))  # files are read at the camera's pace
            image = source.read()
            if image is None:
                break  # stopped while reconnecting
            now = time.monotonic()
            if source.live and now < next_due:
                continue  # a camera faster than its configured fps: keep reading, publish fewer
            next_due = next_due + interval if now - next_due < interval else now + interval
            capture_ns = time.time_ns()
            try:
                payload = encode_jpeg(image, camera.jpeg_quality, camera.resize)
            except Exception as exc:  # cv2.error for odd frames: count it, never stop the camera
                counters.add("errors")
                log.warning("frame could not be encoded", error=str(exc), seq=seq)
                continue
            height, width = (camera.resize[1], camera.resize[0]) if camera.resize else image.shape[:2]
            buffer.put(
                FrameMessage(
                    line_id=line.id, camera_id=camera.id, seq=seq, capture_ns=capture_ns,
                    width=width, height=height, mode=FrameMode.live, payload=payload,
                )
            )
            seq += 1
            counters.add("captured")
            if buffer.dropped != dropped_seen:
                counters.add("dropped", buffer.dropped - dropped_seen)
                dropped_seen = buffer.dropped
            if source.reconnects != reconnects_seen:
                counters.add("reconnects", source.reconnects - reconnects_seen)
                reconnects_seen = source.reconnects
    finally:
        source.close()
        buffer.close()
        stop.set()  # live frames left in the buffer are stale by now: don't wait for Kafka to take them
        pump.join(timeout=5.0)
        publisher.close(timeout=5.0)
        log.info("camera stopped", **counters.snapshot())
    return counters


def _camera_process(line: LineConfig, camera: CameraConfig, config: PatchsightConfig, counters: IngestCounters,
                    shared_stop: Any) -> None:
    configure_logging()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the supervisor decides
    local_stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: local_stop.set())
    try:
        run_camera(line, camera, config, counters=counters, stop=_Stop(local_stop, shared_stop))
    except CameraLost:
        sys.exit(EXIT_CAMERA_LOST)


@dataclass
class _Camera:
    line: LineConfig
    config: CameraConfig
    counters: IngestCounters
    process: Any = None
    next_start: float = 0.0
    crashes: list[float] = field(default_factory=list)
    dead: bool = False


class _CountersCollector:
    """Prometheus view of every camera's shared counters."""

    def __init__(self, cameras: list[_Camera]) -> None:
        self.cameras = cameras

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        frames = CounterMetricFamily(
            "patchsight_ingest_frames", "Frames per camera by outcome", labels=["line", "camera", "outcome"]
        )
        up = GaugeMetricFamily("patchsight_ingest_camera_up", "1 while the camera process runs", labels=["line", "camera"])
        for cam in self.cameras:
            for name, value in cam.counters.snapshot().items():
                frames.add_metric([cam.line.id, cam.config.id, name], value)
            alive = cam.process is not None and cam.process.is_alive()
            up.add_metric([cam.line.id, cam.config.id], 1.0 if alive else 0.0)
        yield frames
        yield up


def run_cameras(
    config: PatchsightConfig,
    *,
    stop: Any = None,
    metrics_port: int | None = None,
    on_dead: Callable[[str], None] | None = None,
) -> int:
    """Run every configured camera in its own process until stopped; return an exit status.

    Ctrl-C / SIGTERM (or ``stop``) stops all cameras. Crashed or stalled cameras restart
    with backoff; a lost camera (or one crashing ``MAX_CRASHES`` times within
    ``reconnect_give_up_s``) is reported dead and left stopped. Returns 0 after a requested
    stop, 1 when every camera is dead. ``on_dead(camera_id)`` is called when a camera is given up.
    """
    log = get_logger("ingest.supervisor")
    ctx = multiprocessing.get_context("spawn")
    settings = config.ingest
    cameras = [
        _Camera(line, cam, IngestCounters(ctx)) for line in config.lines for cam in line.cameras if cam.source
    ]
    skipped = [cam.id for line in config.lines for cam in line.cameras if not cam.source]
    if skipped:
        log.info("cameras without a source are fed by other producers", cameras=skipped)
    if not cameras:
        log.error("no camera has a source configured")
        return 1
    shared_stop = ctx.Event()
    requested = threading.Event()
    previous_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous_handlers[sig] = signal.signal(sig, lambda *_: requested.set())
    stopped = _Stop(requested, stop)
    port = metrics_port if metrics_port is not None else settings.metrics_port
    server = _serve_metrics(settings.metrics_host, port, cameras, log) if port is not None else None
    # a capture loop beats at least every reconnect_max_s (its longest backoff) plus a stream open
    stall_s = settings.reconnect_max_s + 30.0
    last_stats = time.monotonic()
    status = 0
    try:
        while not stopped.is_set():
            now = time.monotonic()
            for cam in cameras:
                if _due_to_start(cam, now, settings, stall_s, log.bind(line=cam.line.id, camera=cam.config.id),
                                 on_dead):
                    _start_process(cam, ctx, config, shared_stop)
            if all(cam.dead for cam in cameras):
                log.error("every camera is dead")
                status = 1
                break
            if now - last_stats >= STATS_EVERY_S:
                last_stats = now
                _log_stats(cameras, log, "camera stats")
            stopped.wait(0.2)
    finally:
        shared_stop.set()
        _join_all(cameras)
        if server is not None:
            server.stop()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        _log_stats(cameras, log, "camera final stats")
    return status


def _serve_metrics(host: str, port: int, cameras: list[_Camera], log: Any) -> HealthServer:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(_CountersCollector(cameras))  # type: ignore[arg-type]
    server = HealthServer(port, registry, host=host, name="ingest-http").start()
    log.info("metrics served", host=host, port=server.port)
    return server


def _due_to_start(
    cam: _Camera, now: float, settings: IngestSettings, stall_s: float, clog: Any, on_dead: Callable[[str], None] | None
) -> bool:
    """Look after one camera's process: True when it is to be started (again) now.

    A stalled process is killed; one that ended is either given up (lost, or crashing too
    often) or restarted after a backoff.
    """
    proc = cam.process
    if proc is not None and proc.is_alive():
        if (time.monotonic_ns() - cam.counters.heartbeat_ns) / 1e9 <= stall_s:
            return False
        clog.error("camera stalled, restarting", stalled_s=round(stall_s))
        proc.kill()
        proc.join(5)
    if proc is not None:
        cam.process = None
        _after_exit(cam, proc.exitcode, now, settings, clog, on_dead)
    return not cam.dead and now >= cam.next_start


def _after_exit(
    cam: _Camera, exitcode: int | None, now: float, settings: IngestSettings, clog: Any,
    on_dead: Callable[[str], None] | None,
) -> None:
    """A camera process ended: give the camera up, or schedule its restart with backoff."""
    if exitcode == EXIT_CAMERA_LOST:
        cam.dead = True
        clog.error("camera lost: no frames for reconnect_give_up_s; not restarted",
                   give_up_s=settings.reconnect_give_up_s)
    else:
        cam.crashes = [t for t in cam.crashes if now - t < settings.reconnect_give_up_s] + [now]
        if len(cam.crashes) < MAX_CRASHES:
            delay = min(settings.reconnect_initial_s * 2 ** (len(cam.crashes) - 1), settings.reconnect_max_s)
            cam.next_start = now + delay
            clog.warning("camera process exited, restarting", exitcode=exitcode, retry_in_s=delay)
            return
        cam.dead = True
        clog.error("camera keeps crashing; not restarted", crashes=len(cam.crashes))
    if on_dead is not None:
        on_dead(cam.config.id)


def _start_process(cam: _Camera, ctx: Any, config: PatchsightConfig, shared_stop: Any) -> None:
    cam.counters.beat()
    cam.process = ctx.Process(
        target=_camera_process,
        args=(cam.line, cam.config, config, cam.counters, shared_stop),
        name=f"patchsight-camera-{cam.config.id}",
        daemon=True,
    )
    cam.process.start()


def _join_all(cameras: list[_Camera]) -> None:
    """Wait for the camera processes to stop (the shared stop is set), terminating stragglers."""
    for cam in cameras:
        if cam.process is not None:
            cam.process.join(10)
            if cam.process.is_alive():
                cam.process.terminate()
                cam.process.join(5)


def _log_stats(cameras: list[_Camera], log: Any, event: str) -> None:
    for cam in cameras:
        log.info(event, line=cam.line.id, camera=cam.config.id, dead=cam.dead, **cam.counters.snapshot())
