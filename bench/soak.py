"""Load and soak: the real processes at a steady frame rate, sampled every 10 s; and a saturation ramp.

Soak (default)::

    python bench/soak.py --minutes 30 --fps 10 --lines 3 --cameras 2 --workers 2

writes synthetic recordings (``patchsight synth``), then runs ``patchsight infer`` x N,
``patchsight alerts serve`` and one ``patchsight replay --loop 0 --speed S`` over every
recording (S = fps / the recordings' 10 fps) against the configured broker and Redis, with
this run's own topics, groups and Redis prefix. Every ``--sample-s`` it records frames
published, results, consumer lag of both groups, the RSS of every process, capture-to-result
latency (broker append time of the result minus capture time) and capture-to-alert latency
(alert raised minus the capture of the frame that completed its window). The summary
compares the second half to the first (throughput, lag) and RSS at the end to RSS after
warm-up. Results: bench/results/soak.json.

Saturation (``--saturate``)::

    python bench/soak.py --saturate --workers 1

runs one worker at a time and publishes replay-mode frames (every one must be inspected) at
rising rates; at each step the lag slope says whether the worker keeps up. The knee is the
first rate whose lag grows by more than 5 % of the offered rate. Results:
bench/results/saturation.json.

Not part of ``make test``: it takes minutes to hours and wants a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import yaml
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alerts.store import RedisAlertStore, connect  # noqa: E402
from ingest.recording import Recording  # noqa: E402
from patchsight.demo import ProcessGroup  # noqa: E402
from runtime.topics import ensure_topics  # noqa: E402
from schemas.config import PatchsightConfig, load_config  # noqa: E402
from schemas.frame import FrameMode  # noqa: E402
from schemas.result import InspectionResult  # noqa: E402

RESULTS = REPO / "bench" / "results"
RECORDING_FPS = 10.0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# --- set-up ---------------------------------------------------------------------------------


def recordings(args: argparse.Namespace) -> list[Path]:
    out = REPO / ".patchsight" / "soak-recordings" / f"l{args.lines}-c{args.cameras}-n{args.frames}-s{args.seed}"
    if not (out / ".complete").exists():
        subprocess.run([sys.executable, "-m", "patchsight.cli", "synth", "--out", str(out), "--lines", str(args.lines),
                        "--cameras", str(args.cameras), "--frames", str(args.frames), "--seed", str(args.seed),
                        "--fps", str(RECORDING_FPS)], check=True, cwd=REPO)
        (out / ".complete").write_text("ok\n")
    return sorted(p.parent for p in out.glob("**/meta.json"))


def run_config(args: argparse.Namespace, recs: list[Path], run_id: str, run_dir: Path) -> Path:
    """The demo config's questions on exactly the lines and cameras of the recordings, with this run's names."""
    base = load_config(args.config)
    questions = {line.id: line for line in base.lines}
    fallback = base.lines[0]
    lines: dict[str, dict[str, Any]] = {}
    for rec in recs:
        meta = Recording(rec).meta
        source = questions.get(meta.line_id, fallback)
        line = lines.setdefault(meta.line_id, {
            "id": meta.line_id, "cameras": [],
            "questions": [q.model_dump(mode="json", exclude_none=True) for q in source.questions],
            "alert_policy": source.alert_policy.model_dump(mode="json"),
        })
        line["cameras"].append({"id": meta.camera_id, "fps": args.fps})
    raw = base.model_dump(mode="json", exclude_none=True)
    raw["lines"] = list(lines.values())
    raw["model"]["bundle"] = str(Path(args.bundle).resolve())
    raw["kafka"]["topics"].update(frames=f"soak-{run_id}.frames", results=f"soak-{run_id}.results",
                                  dead_letter=f"soak-{run_id}.dlq")
    raw["inference"].update(group_id=f"soak-{run_id}-inference", metrics_port=0)
    raw["alerts"].update(group_id=f"soak-{run_id}-alerts", key_prefix=f"ps:soak:{run_id}", metrics_port=0)
    raw.get("dashboard", {}).pop("token", None)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def service_env(config: Path) -> dict[str, str]:
    return {**os.environ, "PATCHSIGHT_CONFIG": str(config), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO)}


def rss_mb(procs: ProcessGroup) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for proc in procs.procs:
        try:
            out[proc.name] = round(psutil.Process(proc.popen.pid).memory_info().rss / 2**20, 1)
        except psutil.Error:
            out[proc.name] = None
    return out


# --- measuring ------------------------------------------------------------------------------------


class Meter:
    """Offsets, lag and latencies of one run, read from the broker and Redis."""

    def __init__(self, cfg: PatchsightConfig) -> None:
        self.cfg = cfg
        self.admin = KafkaAdminClient(**cfg.kafka.client_kwargs())
        self.offsets = KafkaConsumer(**cfg.kafka.client_kwargs())
        self.results = KafkaConsumer(**cfg.kafka.client_kwargs(), enable_auto_commit=False)
        topics = cfg.kafka.topics
        self.frame_parts = [TopicPartition(topics.frames, p) for p in range(topics.partitions)]
        self.result_parts = [TopicPartition(topics.results, p) for p in range(topics.partitions)]
        self.results.assign(self.result_parts)
        self.results.seek_to_beginning(*self.result_parts)
        self.store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
        self.seen_alerts: set[str] = set()

    def _lag(self, group: str, parts: list[TopicPartition], ends: dict[TopicPartition, int]) -> int:
        committed = self.admin.list_group_offsets({group: None}).get(group, {})
        # ends are read just before the commits: a commit in between must not make lag negative
        return sum(max(0, ends[tp] - (committed[tp].offset if tp in committed else 0)) for tp in parts)

    def sample(self) -> dict[str, Any]:
        frame_ends = self.offsets.end_offsets(self.frame_parts)
        result_ends = self.offsets.end_offsets(self.result_parts)
        result_ms: list[float] = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # what arrived since the last sample; bounded per sample
            polled = self.results.poll(timeout_ms=200, max_records=5000)
            if not polled:
                break
            for batch in polled.values():
                for record in batch:
                    try:
                        res = InspectionResult.from_record(record.value, record.headers)
                    except ValueError:
                        continue
                    result_ms.append(record.timestamp - res.capture_ns / 1e6)
        alert_ms = []
        for alert in self.store.list_alerts(unresolved_only=False, limit=100_000):
            if alert.alert_id not in self.seen_alerts:
                self.seen_alerts.add(alert.alert_id)
                alert_ms.append((alert.raised_ns - alert.trigger_capture_ns) / 1e6)
        return {
            "published": sum(frame_ends.values()),
            "results": sum(result_ends.values()),
            "inference_lag": self._lag(self.cfg.inference.group_id, self.frame_parts, frame_ends),
            "alerts_lag": self._lag(self.cfg.alerts.group_id, self.result_parts, result_ends),
            "alerts": len(self.seen_alerts),
            "capture_to_result_ms": result_ms,
            "capture_to_alert_ms": alert_ms,
        }

    def close(self) -> None:
        self.admin.close()
        self.offsets.close()
        self.results.close()


# --- soak -----------------------------------------------------------------------------------------------


def soak(args: argparse.Namespace) -> dict[str, Any]:
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    run_dir = REPO / "runs" / f"soak-{run_id}"
    run_dir.mkdir(parents=True)
    recs = recordings(args)
    cfg_path = run_config(args, recs, run_id, run_dir)
    cfg = load_config(cfg_path)
    ensure_topics(cfg.kafka)
    procs = ProcessGroup(run_dir, service_env(cfg_path))
    samples: list[dict[str, Any]] = []
    failed: list[str] = []
    started = time.monotonic()
    try:
        for i in range(args.workers):
            procs.start(f"infer-{i + 1}", "infer", "--worker-id", f"soak-{i + 1}")
        procs.start("alerts", "alerts", "serve")
        procs.start("replay", "replay", *map(str, recs), "--speed", str(args.fps / RECORDING_FPS), "--loop", "0")
        meter = Meter(cfg)
        end = started + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(max(0.0, args.sample_s - (time.monotonic() - started) % args.sample_s))
            sample = {"t_s": round(time.monotonic() - started, 1), **meter.sample(), "rss_mb": rss_mb(procs)}
            samples.append(sample)
            lat = percentile(sample["capture_to_result_ms"], 99)
            print(f"t={sample['t_s']:7.1f}s published {sample['published']:7d} results {sample['results']:7d} "
                  f"lag {sample['inference_lag']:5d}/{sample['alerts_lag']:4d} alerts {sample['alerts']:4d} "
                  f"result p99 {lat if lat is None else round(lat)} ms rss {sample['rss_mb']}", flush=True)
            failed = [proc.name for proc in procs.failed()]
            if failed:
                print(f"failed: {failed} (logs in {run_dir})", flush=True)
                break
        meter.close()
    finally:
        procs.stop()
    report = {"mode": "soak", "run_dir": str(run_dir), "args": vars(args), "cameras": len(recs),
              "target_fps_total": args.fps * len(recs), "failed_during_run": failed,
              "exit_codes": {proc.name: proc.popen.returncode for proc in procs.procs},
              "summary": summarise(samples, args), "samples": samples}
    return report


def summarise(samples: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    if len(samples) < 3:
        return {"error": "fewer than three samples"}
    warm = next((i for i, s in enumerate(samples) if s["t_s"] >= args.warmup_s), len(samples) // 3)
    steady = samples[warm:]
    first, last = steady[0], steady[-1]
    span = last["t_s"] - first["t_s"] or 1.0
    half = steady[len(steady) // 2]
    result_ms = [v for s in steady for v in s["capture_to_result_ms"]]
    alert_ms = [v for s in steady for v in s["capture_to_alert_ms"]]  # warm-up backlog excluded, as for results
    alert_ms_all = [v for s in samples for v in s["capture_to_alert_ms"]]
    rss = {name: {"after_warmup_mb": first["rss_mb"].get(name), "end_mb": last["rss_mb"].get(name),
                  "growth_mb": None if None in (first["rss_mb"].get(name), last["rss_mb"].get(name))
                  else round(last["rss_mb"][name] - first["rss_mb"][name], 1),
                  "max_mb": max((s["rss_mb"].get(name) or 0) for s in steady)}
           for name in last["rss_mb"]}

    def rate(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
        return round((b[key] - a[key]) / max(b["t_s"] - a["t_s"], 1e-9), 2)

    return {
        "steady_from_s": first["t_s"], "steady_s": span,
        "published_fps": rate(first, last, "published"), "results_fps": rate(first, last, "results"),
        "results_fps_first_half": rate(first, half, "results"), "results_fps_second_half": rate(half, last, "results"),
        "inference_lag": {"after_warmup": first["inference_lag"], "end": last["inference_lag"],
                          "max": max(s["inference_lag"] for s in steady),
                          "growth_per_min": round((last["inference_lag"] - first["inference_lag"]) / span * 60, 1)},
        "alerts_lag_max": max(s["alerts_lag"] for s in steady),
        "capture_to_result_ms": {"p50": percentile(result_ms, 50), "p99": percentile(result_ms, 99),
                                 "n": len(result_ms)},
        "capture_to_alert_ms": {"p50": percentile(alert_ms, 50), "p99": percentile(alert_ms, 99), "n": len(alert_ms)},
        "capture_to_alert_ms_with_warmup": {"p99": percentile(alert_ms_all, 99), "n": len(alert_ms_all)},
        "rss": rss,
    }


# --- saturation -----------------------------------------------------------------------------------------


def saturate(args: argparse.Namespace) -> dict[str, Any]:
    """One worker at a time; offered rate rises step by step; the knee is where lag starts to grow."""
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    run_dir = REPO / "runs" / f"saturate-{run_id}"
    run_dir.mkdir(parents=True)
    recs = recordings(args)
    frames = [(Recording(r).meta, jpeg) for r in recs for _, jpeg in Recording(r).frames()][: 50 * len(recs)]
    per_worker = []
    for w in range(args.workers):
        wid = f"{run_id}-w{w + 1}"
        cfg_path = run_config(args, recs, wid, run_dir)
        cfg = load_config(cfg_path)
        ensure_topics(cfg.kafka)
        procs = ProcessGroup(run_dir, service_env(cfg_path))
        steps = []
        try:
            procs.start(f"infer-{w + 1}", "infer", "--worker-id", f"sat-{w + 1}")
            meter = Meter(cfg)
            wait_ready(meter, cfg, frames[0])
            for fps in args.rates:
                lag0 = meter.sample()["inference_lag"]
                t0 = time.monotonic()
                offer(cfg, frames, fps, args.step_s)
                lag1 = meter.sample()["inference_lag"]
                growth = (lag1 - lag0) / (time.monotonic() - t0)
                steps.append({"offered_fps": fps, "lag_start": lag0, "lag_end": lag1,
                              "lag_growth_fps": round(growth, 2), "rss_mb": rss_mb(procs)})
                print(f"worker {w + 1}: offered {fps:5.1f} fps: lag {lag0} -> {lag1} ({growth:+.2f}/s)", flush=True)
                if growing(steps[-1]):
                    break
            meter.close()
        finally:
            procs.stop()
        knee = next((s["offered_fps"] for s in steps if growing(s)), None)
        sustained = max((s["offered_fps"] for s in steps if not growing(s)), default=None)
        per_worker.append({"worker": w + 1, "knee_fps": knee, "max_sustained_fps": sustained, "steps": steps})
    return {"mode": "saturate", "run_dir": str(run_dir), "args": vars(args), "per_worker": per_worker}


def growing(step: dict[str, Any]) -> bool:
    """Lag grew by more than 5 % of the offered rate and ends above one second of frames."""
    return step["lag_growth_fps"] > 0.05 * step["offered_fps"] and step["lag_end"] > step["offered_fps"]


def wait_ready(meter: Meter, cfg: PatchsightConfig, sample: tuple[Any, bytes]) -> None:
    """Send one frame and wait for its result: the model is loaded and partitions are assigned."""
    offer(cfg, [sample], 1.0, 1.0)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and meter.sample()["results"] < 1:
        time.sleep(1.0)


def offer(cfg: PatchsightConfig, frames: list[tuple[Any, bytes]], fps: float, seconds: float) -> None:
    from schemas.frame import FrameMessage

    producer = KafkaProducer(**cfg.kafka.client_kwargs(), acks="all", linger_ms=5)
    seqs: dict[str, int] = getattr(offer, "seqs", {})
    offer.seqs = seqs  # type: ignore[attr-defined]
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        due = start + n / fps
        if due > time.monotonic():
            time.sleep(due - time.monotonic())
        meta, jpeg = frames[n % len(frames)]
        seq = seqs.get(meta.camera_id, 0)
        seqs[meta.camera_id] = seq + 1
        msg = FrameMessage(line_id=meta.line_id, camera_id=meta.camera_id, seq=seq, capture_ns=time.time_ns(),
                           width=meta.width, height=meta.height, mode=FrameMode.replay, payload=jpeg)
        key, value, headers = msg.to_record()
        producer.send(cfg.kafka.topics.frames, key=key, value=value, headers=headers)
        n += 1
    producer.flush()
    producer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--fps", type=float, default=10.0, help="per camera")
    parser.add_argument("--lines", type=int, default=3)
    parser.add_argument("--cameras", type=int, default=2, help="per line")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frames", type=int, default=300, help="frames per recording (looped)")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--bundle", default=str(REPO / "models" / "default"))
    parser.add_argument("--config", default=str(REPO / "config" / "demo.yaml"))
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--saturate", action="store_true", help="find the rate where lag starts to grow, per worker")
    parser.add_argument("--rates", type=float, nargs="+", default=[2, 4, 6, 8, 12, 16, 24, 32, 48, 64])
    parser.add_argument("--step-s", type=float, default=30.0, help="seconds per saturation step")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not (Path(args.bundle) / "bundle.json").exists():
        print(f"error: no model bundle at {args.bundle} (train one, or pass --bundle)", file=sys.stderr)
        return 2
    report = saturate(args) if args.saturate else soak(args)
    report["bundle"] = str(args.bundle)
    report["machine"] = {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()}
    out = Path(args.out) if args.out else RESULTS / ("saturation.json" if args.saturate else "soak.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k not in ("samples",)}, indent=2, default=str)[:6000])
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "soak"
    sys.exit(main())
