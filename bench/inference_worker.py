"""Inference worker benchmarks, measured as ratios in one run (issue #6).

1. pipeline efficiency: the worker's throughput through the real broker (poll, decode,
   batch, model, publish, commit) over the bare model's throughput at the same batch size,
   with 2 torch threads and with 1; each ratio from a worker pass and a bare-model pass run
   back to back, three such pairs, and their median.
2. dynamic batching: the real DynamicBatcher in front of the real model, max delay
   0/5/20/50 ms against fixed batch sizes; throughput with a backlog, and latency
   (arrival -> scored) p50/p99, p99 queue delay, and p99 batching wait (how long a frame
   waited while the model was free: the delay the batcher itself adds) under an open-loop
   Poisson load at 70% of the best fixed-batch throughput.
3. two workers (processes, 1 torch thread each) on one topic against one worker (2 threads):
   combined throughput over one worker's, and every frame inspected exactly once.

The model is the default bundle's architecture with random weights (speed does not
depend on the weights); on a GPU (``--device cuda``) also the paper's sizes (``--size llava``:
ViT-L/14-336 and a LLaVA-1.5-7B-shaped head, fp16), which bench/gpu-pipeline.sh runs. Writes
bench/results/inference_worker.json (inference_worker_gpu_SIZE.json with ``--device cuda``).

    .venv/bin/python bench/inference_worker.py [--size compact|tiny|llava] [--device cpu|cuda]
        [--threads 2 1] [--pairs 3] [--only efficiency batching two-workers]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import cv2
import httpx
import numpy as np
import torch
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.partitioner.default import murmur2

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from inference.batcher import DynamicBatcher  # noqa: E402
from inference.worker import Worker  # noqa: E402
from model.bundle import Bundle  # noqa: E402
from models import QUESTIONS, random_bundle, save_random_bundle  # noqa: E402
from runtime.log import configure_logging  # noqa: E402
from runtime.topics import ensure_topics  # noqa: E402
from schemas.config import PatchsightConfig, validate_config  # noqa: E402
from schemas.frame import FrameMessage, FrameMode  # noqa: E402

RESULTS = REPO / "bench" / "results"


def cameras_spread(partitions: int, per_partition: int) -> list[str]:
    """Camera ids whose keys the producer's partitioner spreads evenly over ``partitions``.

    Frames are keyed by camera, so a worker owns cameras, not frames. cam-0..cam-3 all hash
    to partitions 1 and 3 of 4 (1 of 2): a second worker would own empty partitions.
    """
    chosen: dict[int, list[str]] = {p: [] for p in range(partitions)}
    i = 0
    while any(len(c) < per_partition for c in chosen.values()):
        camera = f"cam-{i}"
        bucket = chosen[(murmur2(camera.encode()) & 0x7FFFFFFF) % partitions]
        if len(bucket) < per_partition:
            bucket.append(camera)
        i += 1
    return [camera for p in range(partitions) for camera in chosen[p]]


CAMERAS = cameras_spread(4, 2)  # also even over 2 partitions: the hash mod 2 is the hash mod 4, mod 2
FRAME_SIZE = (320, 240)


def jpegs(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        image = np.full((FRAME_SIZE[1], FRAME_SIZE[0], 3), 90, np.uint8)
        cv2.rectangle(image, (40 + i % 50, 60), (220, 180), (200, 180, 160), -1)
        image = cv2.add(image, rng.integers(0, 30, image.shape, dtype=np.uint8))
        out.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
    return out


def bench_config(max_batch: int, max_delay_ms: float, bundle_dir: str = "unused", partitions: int = 2,
                 decode_threads: int = 1, metrics_port: int = 0) -> PatchsightConfig:
    token = uuid.uuid4().hex[:8]
    cfg = validate_config({
        "kafka": {"bootstrap": os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                  "topics": {"frames": f"bench-frames-{token}", "results": f"bench-results-{token}",
                             "dead_letter": f"bench-dlq-{token}", "partitions": partitions}},
        "model": {"bundle": bundle_dir, "device": "cpu"},
        "inference": {"group_id": f"bench-{token}", "max_batch": max_batch, "max_delay_ms": max_delay_ms,
                      "metrics_port": metrics_port, "decode_threads": decode_threads},
        "lines": [{"id": "line-1", "cameras": [{"id": c} for c in CAMERAS],
                   "questions": [q.model_dump() for q in QUESTIONS]}],
    })
    ensure_topics(cfg.kafka)
    return cfg


def publish(cfg: PatchsightConfig, payloads: list[bytes]) -> None:
    producer = KafkaProducer(**cfg.kafka.client_kwargs(), acks="all", linger_ms=5)
    for i, payload in enumerate(payloads):
        camera = CAMERAS[i % len(CAMERAS)]
        msg = FrameMessage(line_id="line-1", camera_id=camera, seq=i // len(CAMERAS), capture_ns=time.time_ns(),
                           width=FRAME_SIZE[0], height=FRAME_SIZE[1], mode=FrameMode.replay, payload=payload)
        key, value, headers = msg.to_record()
        producer.send(cfg.kafka.topics.frames, key=key, value=value, headers=headers)
    producer.flush()
    producer.close()


def collect_results(cfg: PatchsightConfig, count: int, timeout: float) -> list:
    """Result records until ``count`` distinct frames have one (or the timeout)."""
    consumer = KafkaConsumer(**cfg.kafka.client_kwargs(), enable_auto_commit=False)
    parts = [TopicPartition(cfg.kafka.topics.results, p) for p in range(cfg.kafka.topics.partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    records, seen = [], set()
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            for record in batch:
                records.append(record)
                seen.add(record.key + b"/" + str(json.loads(record.value)["seq"]).encode())
    consumer.close()
    return records


def throughput_from(records: list) -> float:
    """Frames per second between the first and last result the broker stored (startup excluded)."""
    stamps = sorted(r.timestamp for r in records)
    return (len(stamps) - 1) / max((stamps[-1] - stamps[0]) / 1e3, 1e-9)


def model_fps(bundle: Bundle, pixels: torch.Tensor, batch: int) -> float:
    """The bare model: encoder + every question, on preprocessed frames, no I/O; one pass after a warm-up."""
    def run(frames: torch.Tensor) -> None:
        for start in range(0, len(frames), batch):
            enc = bundle.encoder(frames[start : start + batch], pooled=False)
            bundle.score_encoded(enc, QUESTIONS)

    run(pixels[: 4 * batch])  # warm-up
    t = time.perf_counter()
    run(pixels)
    return len(pixels) / (time.perf_counter() - t)


# --- 1. pipeline efficiency -----------------------------------------------------------


def inspected(worker: Worker) -> float:
    sample = worker.metrics.registry.get_sample_value("patchsight_inference_frames_out_total", {"status": "ok"})
    return sample or 0.0


def efficiency(bundle: Bundle, frames: int, batch: int, threads: int, pairs: int) -> dict:
    """``pairs`` times: one worker in this process through the real broker, then the bare model.

    Each pair's ratio compares two back-to-back single passes over the same frames, so a
    slow minute on this shared machine hits both sides of a ratio rather than one.
    """
    torch.set_num_threads(threads)
    payloads = jpegs(frames)
    images = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR) for p in payloads]
    pixels = bundle.encoder.preprocess(images)
    if bundle.encoder.device.type == "cuda":
        pixels = pixels.pin_memory()  # as the worker's staging buffer is
    runs = []
    for _ in range(pairs):
        cfg = bench_config(batch, 20)
        publish(cfg, payloads)
        worker = Worker(cfg, bundle, worker_id="bench")
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        # Wait on the worker's own counter, and read the results only afterwards: a consumer
        # reading them meanwhile would take CPU and the GIL from the worker it measures.
        deadline = time.monotonic() + 600
        while inspected(worker) < frames and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        thread.join(60)
        records = collect_results(cfg, frames, timeout=60)
        worker_fps = throughput_from(records)
        bare_fps = model_fps(bundle, pixels, batch)
        batch_sizes = [json.loads(r.value)["timing"]["batch_size"] for r in records]
        runs.append({
            "worker_fps": round(worker_fps, 2), "bare_model_fps": round(bare_fps, 2),
            "efficiency": round(worker_fps / bare_fps, 3), "mean_batch": round(float(np.mean(batch_sizes)), 2),
            "results": len(records),
            "rejoins": worker.metrics.registry.get_sample_value("patchsight_inference_consumer_rejoins_total"),
        })
        print("efficiency", threads, "threads", json.dumps(runs[-1]), flush=True)
    out = {"torch_threads": threads, "frames": frames, "batch": batch,
           "efficiency_median": float(np.median([r["efficiency"] for r in runs])), "pairs": runs}
    print("efficiency", json.dumps(out), flush=True)
    return out


# --- 2. dynamic batching ------------------------------------------------------------------


def run_batcher(bundle: Bundle, pixels: torch.Tensor, max_batch: int, max_delay_s: float,
                arrivals: list[float] | None) -> dict:
    """Feed frames to a batcher (all at once, or at the given arrival offsets); the model drains it."""
    batcher: DynamicBatcher[tuple[int, float]] = DynamicBatcher(max_batch, max_delay_s)
    n = len(pixels)
    done_at = [0.0] * n
    queue_s: list[float] = []
    sizes: list[int] = []

    def feed() -> None:
        start = time.monotonic()
        for i in range(n):
            if arrivals is not None:
                time.sleep(max(0.0, start + arrivals[i] - time.monotonic()))
            batcher.put((i, time.monotonic()))
        batcher.drain()  # a fixed-size batcher flushes its last partial batch

    feeder = threading.Thread(target=feed, daemon=True)
    t0 = time.monotonic()
    feeder.start()
    finished = 0
    model_free_at = t0
    # The batcher's own delay: how long a frame waited while the model was free to take it.
    # queue_s also counts waiting for the model to finish the previous batch, which no
    # max delay can bound.
    batching_wait_s: list[float] = []
    while finished < n:
        batch = batcher.next_batch(timeout=1.0)
        if batch is None:
            continue
        started = time.monotonic()
        batching_wait_s.extend(max(0.0, started - max(queued_at, model_free_at)) for _, queued_at in batch.items)
        rows = [i for i, _ in batch.items]
        enc = bundle.encoder(pixels[rows], pooled=False)
        bundle.score_encoded(enc, QUESTIONS)
        now = model_free_at = time.monotonic()
        for i, _ in batch.items:
            done_at[i] = now
        queue_s.extend(batch.queue_s)
        sizes.append(len(batch))
        finished += len(batch)
    feeder.join()
    elapsed = max(done_at) - t0
    put_at = [t0 + a for a in arrivals] if arrivals is not None else [t0] * n
    latency = np.array([d - p for d, p in zip(done_at, put_at)]) * 1e3
    return {
        "throughput_fps": round(n / elapsed, 2),
        "latency_p50_ms": round(float(np.percentile(latency, 50)), 1),
        "latency_p99_ms": round(float(np.percentile(latency, 99)), 1),
        "queue_p99_ms": round(float(np.percentile(np.array(queue_s) * 1e3, 99)), 1),
        "batching_wait_p99_ms": round(float(np.percentile(np.array(batching_wait_s) * 1e3, 99)), 1),
        "batching_wait_max_ms": round(float(np.max(batching_wait_s) * 1e3), 1),
        "mean_batch": round(float(np.mean(sizes)), 2),
    }


def batching(bundle: Bundle, frames: int, max_batch: int) -> dict:
    images = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR) for p in jpegs(frames)]
    pixels = bundle.encoder.preprocess(images)
    fixed = {f"fixed-{b}": (b, float("inf")) for b in (1, 4, max_batch)}
    dynamic = {f"dynamic-{max_batch}-{d}ms": (max_batch, d / 1e3) for d in (0, 5, 20, 50)}
    configs = {**fixed, **dynamic}
    saturated = {name: run_batcher(bundle, pixels, b, d, None) for name, (b, d) in configs.items()}
    best_fixed = max(saturated[name]["throughput_fps"] for name in fixed)
    rate = 0.7 * best_fixed
    rng = random.Random(1)
    arrivals, t = [], 0.0
    for _ in range(frames):
        t += rng.expovariate(rate)
        arrivals.append(t)
    loaded = {name: run_batcher(bundle, pixels, b, d, arrivals) for name, (b, d) in configs.items()}
    rows = {}
    for name, (b, d) in configs.items():
        rows[name] = {
            "max_batch": b, "max_delay_ms": None if d == float("inf") else d * 1e3,
            "saturated_fps": saturated[name]["throughput_fps"],
            "saturated_vs_best_fixed": round(saturated[name]["throughput_fps"] / best_fixed, 3),
            **{f"load_{k}": v for k, v in loaded[name].items()},
        }
        print("batching", name, json.dumps(rows[name]), flush=True)
    return {"frames": frames, "offered_fps": round(rate, 2), "best_fixed_fps": best_fixed, "configs": rows}


# --- 3. two workers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workers_run(bundle_dir: Path, count: int, frames: int, batch: int, tmp: Path) -> dict:
    """``count`` worker processes on one topic (one group); frames published once all are ready."""
    cfg = bench_config(batch, 20, str(bundle_dir), partitions=4)
    env = {**os.environ, "PATCHSIGHT_LOG_FORMAT": "json", "PATCHSIGHT_LOG_LEVEL": "WARNING",
           "OMP_NUM_THREADS": str(max(1, 2 // count)), "PYTHONPATH": str(REPO)}
    procs, ports = [], []
    for i in range(count):
        port = free_port()
        path = tmp / f"worker-{count}-{i}.yaml"
        raw = cfg.model_dump(mode="json")
        raw["inference"]["metrics_port"] = port
        path.write_text(yaml.safe_dump(raw))
        procs.append(subprocess.Popen([sys.executable, "-m", "patchsight.cli", "infer", "-c", str(path), "--worker-id",
                                       f"w{i}"], cwd=REPO, env=env, stderr=(tmp / f"w{count}-{i}.log").open("wb")))
        ports.append(port)
    try:
        deadline = time.monotonic() + 300  # importing torch + loading the bundle, per process
        while time.monotonic() < deadline:
            try:
                if all(httpx.get(f"http://127.0.0.1:{p}/readyz", timeout=1).status_code == 200 for p in ports):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            logs = "\n".join((tmp / f"w{count}-{i}.log").read_text()[-2000:] for i in range(count))
            raise RuntimeError(f"{count} worker(s) did not become ready in 300 s:\n{logs}")
        # Publish only once the group has settled: every partition owned, every worker owning one.
        owned: list[int] = []
        while time.monotonic() < deadline:
            owned = [assigned_partitions(p) for p in ports]
            if sum(owned) == cfg.kafka.topics.partitions and min(owned) > 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the group did not settle: partitions per worker {owned}")
        publish(cfg, jpegs(frames))
        records = collect_results(cfg, frames, timeout=600)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
    keys = Counter((r.key, json.loads(r.value)["seq"]) for r in records)
    by_worker = Counter(json.loads(r.value)["worker_id"] for r in records)
    return {"workers": count, "fps": round(throughput_from(records), 2), "frames": frames,
            "distinct": len(keys), "inspected_twice": sum(1 for v in keys.values() if v > 1),
            "per_worker": dict(by_worker)}


def assigned_partitions(port: int) -> int:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    for line in text.splitlines():
        if line.startswith("patchsight_inference_assigned_partitions "):
            return int(float(line.split()[1]))
    return 0


def two_workers(size: str, frames: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        bundle_dir = save_random_bundle(tmp_path / "bundle", size)
        one = workers_run(bundle_dir, 1, frames, batch, tmp_path)
        two = workers_run(bundle_dir, 2, frames, batch, tmp_path)
    out = {"one": one, "two": two, "scaling": round(two["fps"] / one["fps"], 3)}
    print("two-workers", json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="compact", choices=["compact", "tiny", "llava"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="efficiency: torch thread counts")
    parser.add_argument("--frames", type=int, default=960)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=3, help="efficiency: worker/bare-model pairs per thread count")
    parser.add_argument("--only", nargs="+", default=["efficiency", "batching", "two-workers"])
    parser.add_argument("--out", type=Path, default=None, help="results file (default: under bench/results)")
    args = parser.parse_args()
    if args.size == "llava" and "two-workers" in args.only:
        parser.error("two-workers saves the bundle for its worker processes: not at the llava size (13 GB)")
    configure_logging("console", "WARNING")
    torch.set_num_threads(2)
    bundle = random_bundle(args.size, device=args.device)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    out: dict = {"size": args.size, "cpus": os.cpu_count(), "device": device,
                 "dtype": str(bundle.encoder.dtype).removeprefix("torch.")}

    def stamped(part: dict) -> dict:
        return {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **part}

    if "efficiency" in args.only:
        runs = [efficiency(bundle, args.frames, args.batch, threads, args.pairs) for threads in args.threads]
        out["efficiency"] = stamped({"runs": runs})
        torch.set_num_threads(2)
    if "batching" in args.only:
        out["batching"] = stamped(batching(bundle, max(64, args.frames // 2), args.batch))
    if "two-workers" in args.only:
        out["two_workers"] = stamped(two_workers(args.size, args.frames, args.batch))
    path = args.out or RESULTS / (f"inference_worker_gpu_{args.size}.json" if args.device == "cuda"
                                  else "inference_worker.json")
    # --only refreshes its parts and keeps the others' last numbers (each part has its own measured_at).
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**previous, **out}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
