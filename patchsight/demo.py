"""``patchsight demo``: the whole pipeline on synthetic lines, scored against ground truth.

What it does, in order:

1. starts (or reuses) Kafka and Redis;
2. writes synthetic recordings for every camera of config/demo.yaml (cached by seed);
3. gives this run its own topics, consumer groups and Redis prefix, so runs never mix;
4. starts each service as its own process: 2 inference workers, the alert service,
   the dashboard, then one replay process per recording;
5. follows results and alerts live until every frame has a result and the alert
   service has caught up;
6. prints a summary: frames, alert findings per defect type against ground truth (caught,
   missed, false alerts), the per-part report (detection and false-alarm rate per part,
   overall and per defect type: ``part_report_from_alerts``) and capture-to-alert latency,
   also written to ``<run dir>/summary.json``; then stops every process it
   started, also on Ctrl-C, unless ``--keep-running`` (then on Ctrl-C), and the Kafka
   broker and Redis server if it started them: servers that were running before it
   (an earlier ``patchsight infra up``, or your own) keep running, and it says so.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from ingest.recording import Recording
from patchsight import infra
from runtime.topics import ensure_topics
from schemas.alert import DefectAlert
from schemas.config import PatchsightConfig, load_config
from schemas.result import InspectionResult, ResultStatus
from training.parts import PartFlags, part_report_from_flags

if TYPE_CHECKING:
    from kafka import KafkaConsumer

    from alerts.store import RedisAlertStore

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "config" / "demo.yaml"
# Seeds 1000+ are never used for training (see models/default/bundle.json provenance).
DEFAULT_SEED = 1000

console = Console()


@dataclass
class DemoOptions:
    config: Path = DEFAULT_CONFIG
    frames_per_camera: int = 300
    seed: int = DEFAULT_SEED
    # 1.0 = the recordings' own 10 fps per camera: 60 frames/s, which 2 CPU cores just carry with
    # nothing else running (docs/reliability.md); 0.25 leaves room for a busy machine.
    speed: float = 0.25
    workers: int = 2
    dashboard_port: int = 8080
    keep_running: bool = False
    timeout_s: float = 480.0
    run_dir: Path | None = None


# --- processes -----------------------------------------------------------------------


@dataclass
class ServiceProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


class ProcessGroup:
    """The processes the demo started; stops them all, whatever happens."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.procs: list[ServiceProcess] = []

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> ServiceProcess:
        log = self.log_dir / f"{name}.log"
        handle = open(log, "ab")
        popen = subprocess.Popen(
            [sys.executable, "-m", "patchsight.cli", "--log-format", "json", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**self.env, **(env or {})},
            cwd=REPO_ROOT,
            # own process group: Ctrl-C reaches the demo, which then stops them in order
            start_new_session=True,
        )
        proc = ServiceProcess(name, popen, log)
        self.procs.append(proc)
        return proc

    def failed(self) -> list[ServiceProcess]:
        return [p for p in self.procs if p.popen.poll() not in (None, 0)]

    def stop(self, timeout_s: float = 20.0) -> None:
        # Producers of work first, so that what is in flight can drain.
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                proc.popen.wait(remaining)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# --- ground truth -----------------------------------------------------------------------


@dataclass
class DefectEvent:
    """One defective part passing one camera, for one question: what an alert should catch."""

    line_id: str
    camera_id: str
    question_id: str
    part_id: int
    seqs: tuple[int, int]  # first and last frame showing it


@dataclass
class TypeScore:
    caught: int = 0
    missed: int = 0
    false_alerts: int = 0
    duplicates: int = 0


def defect_events(recordings: Iterable[Recording], question_ids: set[str]) -> list[DefectEvent]:
    events: dict[tuple[str, str, int], DefectEvent] = {}
    for rec in recordings:
        for entry in rec.entries:
            truth = entry.truth
            if truth is None or truth.part_id is None:
                continue
            for qid, yes in truth.answers.items():
                if not yes or qid not in question_ids:
                    continue
                key = (rec.meta.camera_id, qid, truth.part_id)
                if key in events:
                    first, _ = events[key].seqs
                    events[key].seqs = (first, entry.seq)
                else:
                    events[key] = DefectEvent(rec.meta.line_id, rec.meta.camera_id, qid, truth.part_id,
                                              (entry.seq, entry.seq))
    return list(events.values())


def findings_of(alert: DefectAlert) -> list[str]:
    """The question ids an alert reports: its findings (a part alert), else its one question (an older alert)."""
    return list(dict.fromkeys(f.question_id for f in alert.findings)) or [alert.question_id]


def score_alerts(
    alerts: list[DefectAlert], events: list[DefectEvent], defect_type_of: dict[str, str]
) -> dict[str, TypeScore]:
    """Match each finding of each alert to defect events: same camera and question, overlapping frames.

    A part alert lists every question over its threshold (its findings): each finding is
    matched on its own, so one alert on a part with a scratch and a crack catches both, and a
    finding for a defect the part does not have is a false alert of that defect type. An
    alert's frames run from its first to its last frame (for a k-of-n alert, its last frame
    above threshold), so an alert raised just before a defective part and held open through it
    catches that part. A second finding for an event already caught counts as a duplicate:
    the one thing operators must never see.
    """
    scores: dict[str, TypeScore] = {}
    caught: set[int] = set()
    for alert in sorted(alerts, key=lambda a: (a.camera_id, a.first_seq)):
        for qid in findings_of(alert):
            score = scores.setdefault(defect_type_of.get(qid, alert.defect_type), TypeScore())
            match = next(
                (
                    i
                    for i, ev in enumerate(events)
                    if ev.camera_id == alert.camera_id
                    and ev.question_id == qid
                    # the k-of-n window may start a frame or two before the part is judged in view
                    and alert.first_seq <= ev.seqs[1] + 2
                    and alert.last_frame_seq >= ev.seqs[0]
                ),
                None,
            )
            if match is None:
                score.false_alerts += 1
            elif match in caught:
                score.duplicates += 1
            else:
                caught.add(match)
                score.caught += 1
    for i, ev in enumerate(events):
        if i not in caught:
            scores.setdefault(defect_type_of.get(ev.question_id, ev.question_id), TypeScore()).missed += 1
    return scores


PartKey = tuple[str, str, int]  # line, camera, the truth's part id: each camera sees its own parts


@dataclass
class PartsSeen:
    """Per-part scoring of the alerts: the report, and alerts that touched no part or several."""

    report: dict
    alerts_without_part: int = 0  # alerts whose frames show no part (an empty belt)
    alerts_on_several_parts: int = 0  # alerts whose frames show more than one part


def part_report_from_alerts(
    alerts: list[DefectAlert], recordings: Iterable[Recording], question_ids: list[str],
    defect_type_of: dict[str, str],
) -> PartsSeen:
    """The per-part report (``training.parts.part_report_from_flags``) of the alerts against the recordings' truth.

    A part is a truth part id on one camera (each camera sees its own parts); it is defective for
    the questions its frames answer yes. An alert touches the parts its frames show: on its
    camera, the frames ``first_seq`` to ``last_frame_seq`` (``last_seq`` for a part alert), whatever
    its own part id says (the tracker's ids, ``<camera>.<first seq>``, are not the truth's). Every
    part it touches is flagged for its findings. So a good part counts as flagged if any alert
    touches it, a defective part is caught if an alert with a finding of its defect type touches
    it, and two alerts on one part count once.
    """
    known = set(question_ids)
    defects: dict[PartKey, set[str]] = {}
    frames: dict[tuple[str, str], list[tuple[int, PartKey]]] = {}
    for rec in recordings:
        camera = (rec.meta.line_id, rec.meta.camera_id)
        for entry in rec.entries:
            truth = entry.truth
            if truth is None or truth.part_id is None:
                continue
            key = (*camera, truth.part_id)
            defects.setdefault(key, set()).update(q for q, yes in truth.answers.items() if yes and q in known)
            frames.setdefault(camera, []).append((entry.seq, key))
    flagged: dict[PartKey, set[str]] = {key: set() for key in defects}
    seen = PartsSeen(report={})
    for alert in alerts:
        touched = {key for seq, key in frames.get((alert.line_id, alert.camera_id), [])
                   if alert.first_seq <= seq <= alert.last_frame_seq}
        seen.alerts_without_part += not touched
        seen.alerts_on_several_parts += len(touched) > 1
        for key in touched:
            flagged[key].update(q for q in findings_of(alert) if q in known)
    verdicts = [PartFlags(frozenset(defects[k]), frozenset(flagged[k])) for k in defects]
    seen.report = part_report_from_flags(verdicts, question_ids, defect_type_of)
    return seen


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# --- the run ------------------------------------------------------------------------------


def _run_config(base: PatchsightConfig, run_id: str, options: DemoOptions) -> dict:
    raw = base.model_dump(mode="json", exclude_none=True)
    raw["kafka"]["topics"].update(
        frames=f"demo-{run_id}.frames", results=f"demo-{run_id}.results", dead_letter=f"demo-{run_id}.dlq"
    )
    raw["inference"]["group_id"] = f"demo-{run_id}-inference"
    raw["inference"]["metrics_port"] = 0
    raw["alerts"]["group_id"] = f"demo-{run_id}-alerts"
    raw["alerts"]["key_prefix"] = f"ps:demo:{run_id}"
    raw["alerts"]["metrics_port"] = 0
    raw["dashboard"]["port"] = options.dashboard_port
    # secrets are masked by model_dump; the demo has none, and must not write "**********"
    raw.get("dashboard", {}).pop("token", None)
    return raw


def make_recordings(cfg: PatchsightConfig, out: Path, options: DemoOptions, env: dict[str, str]) -> list[Path]:
    """Synthetic recordings for the config's lines (line-a, line-b, ...), cached by seed and length."""
    lines = cfg.lines
    cameras = max(len(line.cameras) for line in lines)
    done = out / ".complete"
    if not done.exists():
        console.print(f"writing synthetic recordings to {out} (seed {options.seed}) ...")
        subprocess.run(
            [sys.executable, "-m", "patchsight.cli", "synth", "--out", str(out), "--lines", str(len(lines)),
             "--cameras", str(cameras), "--frames", str(options.frames_per_camera), "--seed", str(options.seed)],
            check=True, env=env, cwd=REPO_ROOT,
        )
        done.write_text("ok\n")
    return sorted(p.parent for p in out.glob("**/meta.json"))


def run_demo(options: DemoOptions) -> int:
    # kafka-python's own warnings (rebalances, slow poll loops) would scroll the live view away
    logging.getLogger("kafka").setLevel(logging.ERROR)
    base = load_config(options.config)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    run_dir = options.run_dir or REPO_ROOT / "runs" / f"demo-{run_id}"
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)

    console.rule("[bold]patchsight demo")
    servers: list[infra.ServiceStatus] = []
    try:
        servers.append(infra.kafka_up(base.kafka))
        servers.append(infra.redis_up(base.redis))
        kafka, redis_status = servers
        console.print(f"kafka {kafka.address} ({kafka.state}), redis {redis_status.address} ({redis_status.state})")
        return _run_pipeline(base, run_id, run_dir, options)
    finally:
        _leave_servers(servers)


def _run_pipeline(base: PatchsightConfig, run_id: str, run_dir: Path, options: DemoOptions) -> int:
    """Everything between the servers coming up and going down: this run's config, recordings,
    services and replays, the live view and the summary."""
    raw = _run_config(base, run_id, options)
    if not _port_free(options.dashboard_port):
        raw["dashboard"]["port"] = _free_port()
    cfg_path = run_dir / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(cfg_path)
    ensure_topics(cfg.kafka)

    env = {**os.environ, "PATCHSIGHT_CONFIG": str(cfg_path), "PYTHONUNBUFFERED": "1"}
    rec_dir = infra.state_dir() / "demo-recordings" / f"seed-{options.seed}-n{options.frames_per_camera}"
    recordings = make_recordings(cfg, rec_dir, options, env)
    if not recordings:
        console.print("[red]no recordings were written[/]")
        return 1

    procs = ProcessGroup(run_dir / "logs", env)
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    signal.signal(signal.SIGTERM, lambda *_: interrupted.set())
    try:
        if not _start_services(procs, cfg, options, interrupted, run_dir):
            return 1
        speed = ["--fast"] if options.speed <= 0 else ["--speed", str(options.speed)]
        for rec in recordings:
            procs.start(f"replay-{rec.name}", "replay", str(rec), *speed)
        progress = _follow(cfg, recordings, procs, options, interrupted)

        for proc in procs.failed():
            console.print(f"[red]{proc.name} exited with {proc.popen.returncode}; see {proc.log}[/]")
        dead_letters = _topic_size(cfg, cfg.kafka.topics.dead_letter)
        summary = _summary(cfg, recordings, list(progress.alerts.values()), progress.total, len(progress.seen),
                           progress.skipped, dead_letters, progress.duplicate_results, progress.elapsed, run_dir)
        console.print(summary)
        console.print(f"evaluation report: {REPO_ROOT / 'docs' / 'evaluation.md'}   logs: {run_dir / 'logs'}")
        if options.keep_running and not interrupted.is_set():
            console.print(f"services keep running (config {cfg_path}); stop them with Ctrl-C")
            while not interrupted.is_set():
                time.sleep(0.5)
        ok = progress.status == "done" and not interrupted.is_set()
        return 0 if ok else 1
    finally:
        procs.stop()
        signal.signal(signal.SIGINT, previous)
        console.print("stopped every process the demo started")


def _start_services(
    procs: ProcessGroup, cfg: PatchsightConfig, options: DemoOptions, interrupted: threading.Event, run_dir: Path
) -> bool:
    """The alert service, the dashboard and the workers, each ready before the cameras start; False if one is not."""
    # Workers join the group one after the other: members joining during another's first
    # rebalance have been seen to stall in kafka-python 3.0.12 (docs/operations.md).
    port = _free_port()
    procs.start("alerts", "alerts", "serve", env={"PATCHSIGHT__ALERTS__METRICS_PORT": str(port)})
    health_urls = [f"http://127.0.0.1:{port}/healthz"]
    procs.start("dashboard", "dashboard")
    for i in range(options.workers):
        port = _free_port()
        # workers share this machine's cores: oversubscribed torch threads cost more than they give
        threads = max(1, (os.cpu_count() or 1) // options.workers)
        procs.start(f"infer-{i + 1}", "infer", "--worker-id", f"worker-{i + 1}",
                    env={"PATCHSIGHT__INFERENCE__METRICS_PORT": str(port),
                         "PATCHSIGHT__INFERENCE__TORCH_THREADS": str(threads)})
        health_urls.append(f"http://127.0.0.1:{port}/readyz")
        with console.status(f"waiting for worker {i + 1} to load the model and join ..."):
            if not _wait_ready(health_urls[-1:], procs, timeout_s=180) or interrupted.is_set():
                console.print("[red]a worker did not become ready; see the logs[/]")
                return False
    console.print(f"dashboard: [bold]http://127.0.0.1:{cfg.dashboard.port}[/]   logs: {run_dir / 'logs'}")
    # Cameras start once the workers have loaded the model and joined the group, so the
    # latency figures measure the pipeline, not start-up.
    with console.status("waiting for every service to be ready ..."):
        if not _wait_ready(health_urls, procs, timeout_s=120) or interrupted.is_set():
            console.print("[red]services did not become ready; see the logs[/]")
            return False
    return True


@dataclass
class _Progress:
    """What the demo has seen so far: results, alerts, and how the run stands."""

    total: int  # frames published
    seen: set[tuple[str, int]] = field(default_factory=set)  # (camera, seq) with a result
    skipped: int = 0
    duplicate_results: int = 0
    alerts: dict[str, DefectAlert] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0
    status: str = "running"

    def read_results(self, results: "KafkaConsumer") -> None:
        for record in results:
            try:
                res = InspectionResult.from_record(record.value, record.headers)
            except ValueError:
                continue
            key = (res.camera_id, res.seq)
            if key in self.seen:
                self.duplicate_results += 1
            self.seen.add(key)
            self.skipped += res.status is ResultStatus.skipped

    def read_alerts(self, store: "RedisAlertStore", live: Live) -> None:
        # oldest first, so that alerts found in one read print in the order they were raised
        for alert in reversed(store.list_alerts(unresolved_only=False, limit=10_000)):
            new = alert.alert_id not in self.alerts
            self.alerts[alert.alert_id] = alert  # the latest copy: an open alert's last defect frame moves on
            if new:
                found = ", ".join(f"{f.question_id} {f.score:.2f}" for f in alert.findings) or (
                    f"{alert.question_id} {alert.score:.2f}")
                part = f" part {alert.part_id}" if alert.part_id else ""
                live.console.print(
                    f"[red]ALERT[/] {alert.line_id}/{alert.camera_id}{part}: {found} "
                    f"frames {alert.first_seq}-{alert.last_seq}"
                )

    def table(self) -> Table:
        t = Table(title=f"patchsight demo - {self.status}", show_header=False)
        t.add_row("frames inspected", f"{len(self.seen)} / {self.total}")
        t.add_row("skipped", str(self.skipped))
        t.add_row("alerts", str(len(self.alerts)))
        t.add_row("elapsed", f"{time.monotonic() - self.started:.0f} s")
        return t


def _follow(
    cfg: PatchsightConfig, recordings: list[Path], procs: ProcessGroup, options: DemoOptions,
    interrupted: threading.Event,
) -> _Progress:
    """Follow results and alerts live until every frame has a result and the alert service has caught up."""
    from kafka import KafkaConsumer, TopicPartition

    from alerts.store import RedisAlertStore, connect

    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    topic = cfg.kafka.topics.results
    results = KafkaConsumer(**cfg.kafka.client_kwargs(), enable_auto_commit=False, consumer_timeout_ms=200)
    parts = [TopicPartition(topic, p) for p in (results.partitions_for_topic(topic) or [])]
    results.assign(parts)
    results.seek_to_beginning()
    # Reads the alert service's committed offsets; never joins its group.
    alerts_group = KafkaConsumer(**cfg.kafka.client_kwargs(), group_id=cfg.alerts.group_id,
                                 enable_auto_commit=False)

    progress = _Progress(total=sum(len(Recording(r)) for r in recordings))
    with live_display(progress.table(), console) as live:
        while not interrupted.is_set():
            progress.read_results(results)
            progress.read_alerts(store, live)
            live.update(progress.table())
            if procs.failed():
                progress.status = "a service failed"
                break
            replays_done = all(p.popen.poll() is not None for p in procs.procs if p.name.startswith("replay"))
            all_seen = len(progress.seen) >= progress.total
            # the last part of a recording may still be in view when it ends: the alert service decides
            # it once its camera has been quiet for part_timeout_s, and the summary waits for that
            if replays_done and all_seen and _alerts_caught_up(results, alerts_group, topic) \
                    and not store.open_parts():
                progress.status = "done"
                progress.read_alerts(store, live)  # it may have caught up since the read above: take its final copies
                break
            if time.monotonic() - progress.started > options.timeout_s:
                progress.status = "timed out"
                break
        live.update(progress.table())
    progress.elapsed = time.monotonic() - progress.started
    results.close()
    alerts_group.close()
    return progress


def _leave_servers(servers: list[infra.ServiceStatus]) -> None:
    """Stop the Kafka broker and Redis server that this demo started; say plainly that the others keep running."""
    stop = {"kafka": infra.kafka_down, "redis": infra.redis_down}
    started = [s for s in servers if s.started]
    for server in started:
        stop[server.name]()
    if started:
        console.print(f"stopped the servers the demo started: {', '.join(s.name for s in started)}")
    kept = [s for s in servers if not s.started]
    if kept:
        where = ", ".join(f"{s.name} at {s.address}" for s in kept)
        hint = " (`patchsight infra down` stops the ones `patchsight infra up` started)"
        console.print(f"left running, as they were before the demo: {where}"
                      + (hint if any(s.state == "running" for s in kept) else ""))


def _wait_ready(urls: list[str], procs: ProcessGroup, timeout_s: float) -> bool:
    import httpx

    deadline = time.monotonic() + timeout_s
    pending = list(urls)
    while pending and time.monotonic() < deadline:
        if procs.failed():
            return False
        try:
            if httpx.get(pending[0], timeout=1.0).status_code == 200:
                pending.pop(0)
                continue
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return not pending


def _topic_size(cfg: PatchsightConfig, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**cfg.kafka.client_kwargs())
    try:
        parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or [])]
        if not parts:
            return 0
        ends = consumer.end_offsets(parts)
        starts = consumer.beginning_offsets(parts)
        return sum(ends[p] - starts[p] for p in parts)
    finally:
        consumer.close()


def _alerts_caught_up(results: "KafkaConsumer", alerts_group: "KafkaConsumer", topic: str) -> bool:
    """True when the alert service's committed offsets reach the end of the results topic."""
    from kafka import TopicPartition

    parts = [TopicPartition(topic, p) for p in (results.partitions_for_topic(topic) or [])]
    ends = results.end_offsets(parts)
    return all((alerts_group.committed(tp) or 0) >= ends[tp] for tp in parts)


@contextmanager
def live_display(renderable: Table, console: Console) -> Iterator[Live]:
    """rich's Live display, followed by a line break also when the output is not a terminal.

    rich breaks the line only on a terminal; in a log file (``make demo > demo.log``) whatever
    is printed next would continue the last line of the table.
    """
    with Live(renderable, console=console, refresh_per_second=4, transient=False) as live:
        yield live
    if not console.is_terminal:
        console.line()


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def parts_table(seen: PartsSeen) -> Table:
    """The per-part report as a table: one row per defect type, then all parts."""
    report = seen.report
    table = Table(title="per part (each camera's parts against the recordings' truth)")
    table.add_column("defect type", no_wrap=True)
    for name in ("detection", "missed", "false alarms", "wrong defect"):
        table.add_column(name, justify="right")
    for name, r in [*sorted(report["by_defect_type"].items()), ("[bold]all", report["overall"])]:
        table.add_row(name, f"{_rate(r['detection_rate'])} ({r['caught']}/{r['defective']})", str(r["missed"]),
                      f"{_rate(r['false_alarm_rate'])} ({r['flagged']}/{r['good']})", str(r["wrong_defect"]))
    o = report["overall"]
    table.caption = (
        f"{o['parts']} parts; detection: caught/defective parts, caught when an alert with a finding of the defect "
        f"type touches the part; false alarms: flagged/good parts, flagged when any alert touches it; wrong defect: "
        f"flagged only for defects it does not have (missed)\n"
        f"alerts on frames without a part {seen.alerts_without_part}, alerts spanning several parts "
        f"{seen.alerts_on_several_parts}"
    )
    return table


def _summary(
    cfg: PatchsightConfig, recordings: list[Path], alerts: list[DefectAlert], total: int, inspected: int,
    skipped: int, dead_letters: int, duplicate_results: int, elapsed: float, run_dir: Path,
) -> Group:
    """The summary tables (alert findings per defect type, then per part), also written to ``run_dir/summary.json``."""
    questions = {q.id: q for line in cfg.lines for q in line.questions}
    defect_type_of = {q.id: q.defect_type for q in questions.values()}
    events = defect_events((Recording(r) for r in recordings), set(questions))
    scores = score_alerts(alerts, events, defect_type_of)
    seen = part_report_from_alerts(alerts, (Recording(r) for r in recordings), list(questions), defect_type_of)
    latencies = [(a.raised_ns - a.trigger_capture_ns) / 1e6 for a in alerts]

    table = Table(title=f"summary ({elapsed:.0f} s): alert findings against each camera's defects")
    table.add_column("defect type")
    for name in ("caught", "missed", "false alerts", "duplicate alerts"):
        table.add_column(name, justify="right")
    for name, s in sorted(scores.items()):
        table.add_row(name, str(s.caught), str(s.missed), str(s.false_alerts), str(s.duplicates))
    all_ = TypeScore(*(sum(getattr(s, f) for s in scores.values())
                       for f in ("caught", "missed", "false_alerts", "duplicates")))
    table.add_row("[bold]all", str(all_.caught), str(all_.missed), str(all_.false_alerts), str(all_.duplicates))
    table.caption = (
        f"{len(alerts)} alerts, counted per finding; frames published {total}, inspected {inspected - skipped}, "
        f"skipped {skipped}, dead-lettered {dead_letters}, redelivered results {duplicate_results}\n"
        f"capture-to-alert latency p50 {percentile(latencies, 50):.0f} ms, p99 {percentile(latencies, 99):.0f} ms"
    )
    (run_dir / "summary.json").write_text(
        json.dumps(
            {
                "frames": total, "inspected": inspected - skipped, "skipped": skipped,
                "dead_lettered": dead_letters, "redelivered_results": duplicate_results,
                "latency_ms": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99)},
                "alerts": len(alerts),
                "by_defect_type": {k: vars(v) for k, v in scores.items()},
                "parts": seen.report,
                "alerts_without_part": seen.alerts_without_part,
                "alerts_on_several_parts": seen.alerts_on_several_parts,
                "elapsed_s": elapsed,
            },
            indent=2,
        )
    )
    return Group(table, parts_table(seen))
