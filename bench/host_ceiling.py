"""The worker's host ceiling: the real worker through the real broker with the model taken out (issue #34).

    python bench/host_ceiling.py [--frames 2000] [--sizes 320x240 640x480] [--models noop gpu]
        [--gpu-ms 9] [--spreads even uneven] [--repeat 1] [--before /work/main]
        [--out bench/results/host_ceiling.json]

Each case is one worker (``inference.worker.Worker``, the default bundle's preprocessing, cameras
without part tracking so every frame is scored) draining a backlog of synthetic frames through
Kafka, in a process of its own. The model's ``score`` is replaced by what a GPU leaves on the host:
stacking the batch's inputs (into what would be the pinned staging buffer), then

* ``noop``: nothing more: the host path alone (poll, parse, decode, preprocess, batch, results,
  produce, commit);
* ``gpu``: a sleep of ``--gpu-ms`` per batch of ``max_batch`` (8): a stand-in for a GPU that
  scores ``8 / gpu_ms`` frames/s bare (9 ms: ~890 frames/s, the compact model on an H200).

Frames come from ``SynthCamera`` (100 distinct frames cycled), keyed by camera: ``even`` puts
two cameras on each of the 2 partitions, ``uneven`` six on one and two on the other (3:1 of the
frames). Measured from the 10th percent of the results to the last: frames/s, process CPU per
frame (less the bench's own thread that watches the results counter), how busy the usable cores were (process CPU / wall / cores), and CPU per frame by thread
(the stage it runs: main loop = poll, parse, intake, commit; decode; model = batching, stand-in
host work, results; kafka-io frames/results = the clients' network threads). ``--before DIR``
runs every case a second time with the worker code of another checkout (e.g. main before this
change), so before and after come from one run; each is run as its ``serve()`` would run it (with
or without ``freeze_loaded_objects``). ``--repeat N`` runs N rounds of every case, interleaved, and
``paired`` in the output holds per round and as medians: after / before and uneven / even, each
ratio from cases of one round. Writes bench/results/host_ceiling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTLE_SHARE = 0.1  # results before this share of the frames are start-up, not measured
MAX_BATCH = 8
PARTITIONS = 2
SPREADS = {"even": (2, 2), "uneven": (6, 2)}  # cameras on partition 0, partition 1


# --- the measured process -----------------------------------------------------------------


def stage_of(thread_name: str) -> str:
    """The stage a worker thread runs, by its name."""
    if thread_name == "worker":
        return "main loop"
    if thread_name == "MainThread":
        return "bench watcher (not in cpu_ms_per_frame)"
    if thread_name.startswith("decode") or thread_name in ("model", "results"):
        return thread_name.rstrip("_0123456789")
    if thread_name.startswith("kafka-io") and thread_name.endswith("-frames"):
        return "kafka fetch"
    if thread_name.endswith("-results-network-thread"):
        return "kafka produce"
    return "other"


def thread_times() -> dict[str, tuple[float, float]]:
    """Seconds on a core and seconds waiting for one (runnable), of this process's threads so far, by stage."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, tuple[float, float]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            on_cpu_ns, waiting_ns, _ = Path(f"/proc/self/task/{tid}/schedstat").read_text().split()
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
        stage = stage_of(names.get(int(tid), ""))
        cpu, wait = out.get(stage, (0.0, 0.0))
        out[stage] = (cpu + int(on_cpu_ns) / 1e9, wait + int(waiting_ns) / 1e9)
    return out


def stand_in(gpu_ms: float, questions: int):  # type: ignore[no-untyped-def]
    """ModelRunner.score without the model: the host's share of a GPU batch, then ``gpu_ms`` of waiting."""
    import numpy as np
    import torch

    def score(line_ids, inputs, part_views=None):  # type: ignore[no-untyped-def]
        # before: float32 tensors, stacked into the staging buffer; after: uint8 squares, likewise
        torch.stack(inputs) if isinstance(inputs[0], torch.Tensor) else np.stack(inputs)
        if gpu_ms:
            time.sleep(gpu_ms / 1e3)
        return [np.zeros(questions, np.float32) for _ in line_ids]

    return score


def child(spec: dict) -> dict:
    """One case, in this process: the worker of ``spec["repo"]`` drains the topic; what it measured."""
    sys.path.insert(0, spec["repo"])
    import torch

    torch.set_num_threads(1)
    from inference.worker import Worker
    from model.bundle import load_bundle
    from runtime.log import configure_logging
    from schemas.config import validate_config

    configure_logging(level="WARNING")
    cfg = validate_config(spec["config"])
    bundle = load_bundle(Path(spec["repo"]) / "models" / "default", "cpu")
    worker = Worker(cfg, bundle, worker_id="bench")
    import inference.worker

    if hasattr(inference.worker, "freeze_loaded_objects"):  # as serve() does it, in the code that has it
        inference.worker.freeze_loaded_objects()
    worker.runner.score = stand_in(spec["gpu_ms"], len(cfg.lines[0].questions))
    bare = None
    if spec["gpu_ms"]:
        start = time.perf_counter()
        for _ in range(50):
            time.sleep(spec["gpu_ms"] / 1e3)
        bare = MAX_BATCH * 50 / (time.perf_counter() - start)  # the stand-in alone, as this machine sleeps

    def done() -> float:
        # this counter alone: collecting the whole registry every 5 ms cost more CPU than some of the stages measured
        return sum(sample.value for metric in worker.metrics.frames_out.collect() for sample in metric.samples
                   if sample.name.endswith("_total"))

    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="worker", daemon=True)
    thread.start()
    frames, settle = spec["frames"], int(spec["frames"] * SETTLE_SHARE)
    deadline = time.monotonic() + 600
    while done() < settle and time.monotonic() < deadline:
        time.sleep(0.005)
    def batches() -> tuple[float, float]:
        get = worker.metrics.registry.get_sample_value
        return get("patchsight_inference_batch_size_count") or 0.0, get("patchsight_inference_batch_size_sum") or 0.0

    t0, cpu0, threads0, n0, b0 = time.monotonic(), time.process_time(), thread_times(), done(), batches()
    own0 = time.thread_time()
    while done() < frames and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.005)
    own1 = time.thread_time()
    t1, cpu1, threads1, n1, b1 = time.monotonic(), time.process_time(), thread_times(), done(), batches()
    stop.set()
    thread.join(60)
    # the process's CPU less this thread's (the bench watching the counter): the worker's own
    wall, cpu, n = t1 - t0, cpu1 - cpu0 - (own1 - own0), n1 - n0
    on_cpu = {k: threads1[k][0] - threads0.get(k, (0.0, 0.0))[0] for k in threads1}
    waiting = sum(threads1[k][1] - threads0.get(k, (0.0, 0.0))[1] for k in threads1)
    cores = len(os.sched_getaffinity(0))
    return {
        "frames_measured": int(n), "fps": round(n / wall, 1), "cpu_ms_per_frame": round(cpu * 1e3 / n, 3),
        "bench_thread_ms_per_frame": round((own1 - own0) * 1e3 / n, 3),  # not in cpu_ms_per_frame
        "cores": cores, "cores_busy": round(cpu / wall / cores, 3),
        # on a core or runnable and waiting for one: over the cores, >= 1 means CPU-bound (on a shared
        # machine the process gets less than every core, so cores_busy alone cannot show it)
        "cores_wanted": round((cpu + waiting) / wall / cores, 3),
        "mean_batch": round((b1[1] - b0[1]) / max(b1[0] - b0[0], 1), 2),
        "bare_fps": round(bare, 1) if bare else None, "of_bare": round(n / wall / bare, 3) if bare else None,
        "cpu_ms_per_frame_by_stage": {k: round(v * 1e3 / n, 3) for k, v in sorted(on_cpu.items())},
    }


# --- the orchestrating process ----------------------------------------------------------------


def cameras_on(per_partition: tuple[int, ...]) -> list[str]:
    """Camera ids the producer's partitioner puts ``per_partition[p]`` of on partition p."""
    from kafka.partitioner.default import murmur2

    chosen: dict[int, list[str]] = {p: [] for p in range(len(per_partition))}
    i = 0
    while any(len(chosen[p]) < n for p, n in enumerate(per_partition)):
        camera = f"cam-{i}"
        p = (murmur2(camera.encode()) & 0x7FFFFFFF) % len(per_partition)
        if len(chosen[p]) < per_partition[p]:
            chosen[p].append(camera)
        i += 1
    return [c for p in range(len(per_partition)) for c in chosen[p]]


def publish_backlog(kafka: dict, size: tuple[int, int], cameras: list[str], frames: int) -> str:
    """A fresh frames topic holding ``frames`` synthetic frames, round robin over ``cameras``; its name."""
    import cv2
    from kafka import KafkaProducer

    from ingest.synth import SynthCamera
    from runtime.topics import ensure_topics
    from schemas.config import validate_config
    from schemas.frame import FrameMessage, FrameMode

    topic = f"bench-host-{uuid.uuid4().hex[:8]}"
    cfg = validate_config({"kafka": {**kafka, "topics": {"frames": topic, "partitions": PARTITIONS}}})
    ensure_topics(cfg.kafka)
    shots = [cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
             for image, _ in SynthCamera("line-1", "cam", 0, ["bracket", "housing"], size=size).frames(100)]
    producer = KafkaProducer(**cfg.kafka.client_kwargs(), acks="all", linger_ms=5)
    for i in range(frames):
        msg = FrameMessage(line_id="line-1", camera_id=cameras[i % len(cameras)], seq=i // len(cameras),
                           capture_ns=time.time_ns(), width=size[0], height=size[1], mode=FrameMode.replay,
                           payload=shots[i % len(shots)])
        key, value, headers = msg.to_record()
        producer.send(topic, key=key, value=value, headers=headers)
    producer.flush()
    producer.close()
    return topic


def case_config(kafka: dict, topic: str, cameras: list[str]) -> dict:
    from ingest.synth import ALERT_QUESTIONS

    token = uuid.uuid4().hex[:8]
    return {
        "kafka": {**kafka, "topics": {"frames": topic, "results": f"{topic}-results-{token}",
                                      "dead_letter": f"{topic}-dlq-{token}", "partitions": PARTITIONS}},
        "model": {"device": "cpu"},
        "inference": {"group_id": f"bench-host-{token}", "max_batch": MAX_BATCH, "metrics_port": 0},
        "lines": [{"id": "line-1", "cameras": [{"id": c, "track_parts": False} for c in cameras],
                   "questions": [q.model_dump() for q in ALERT_QUESTIONS]}],
    }


def run_case(spec: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", f.name], cwd=spec["repo"], capture_output=True,
                              text=True, timeout=900)
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise RuntimeError(f"case failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def paired_ratios(cases: list[dict]) -> dict:
    """Per size and model, the medians over rounds of fps and CPU per frame, and of the ratios within a round:
    after / before (same spread) and uneven / even (same code). Ratios from one round share the machine's load."""
    import statistics

    def key(c: dict) -> tuple:
        return c["size"], c["model"], c["spread"], c["code"], c["round"]

    at = {key(c): c for c in cases}
    out: dict[str, dict] = {}
    for size, model, spread, code, round_ in at:
        entry = out.setdefault(f"{size} {model}", {})
        c = at[size, model, spread, code, round_]
        for name, value in ((f"{spread} {code} fps", c["fps"]), (f"{spread} {code} cpu_ms_per_frame",
                                                                 c["cpu_ms_per_frame"])):
            entry.setdefault(name, []).append(value)
        before = at.get((size, model, spread, "before", round_))
        if code == "after" and before:
            entry.setdefault(f"{spread} fps after / before", []).append(round(c["fps"] / before["fps"], 3))
            entry.setdefault(f"{spread} cpu after / before", []).append(
                round(c["cpu_ms_per_frame"] / before["cpu_ms_per_frame"], 3))
        even = at.get((size, model, "even", code, round_))
        if spread == "uneven" and even:
            entry.setdefault(f"{code} fps uneven / even", []).append(round(c["fps"] / even["fps"], 3))
    return {case: {name: {"median": round(statistics.median(v), 3), "runs": v} for name, v in entry.items()}
            for case, entry in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2000, help="frames per case")
    parser.add_argument("--sizes", nargs="+", default=["320x240", "640x480"])
    parser.add_argument("--models", nargs="+", choices=["noop", "gpu"], default=["noop", "gpu"])
    parser.add_argument("--gpu-ms", type=float, default=9.0, help="the GPU stand-in's time per batch of 8")
    parser.add_argument("--spreads", nargs="+", choices=sorted(SPREADS), default=["even", "uneven"])
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every case, interleaved; medians reported")
    parser.add_argument("--before", type=Path, default=None, help="also run each case with this checkout's worker")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "host_ceiling.json")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child.read_text()))), flush=True)
        return
    sys.path.insert(0, str(REPO))
    kafka = {"bootstrap": os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")}
    codes = [("after", REPO)] + ([("before", args.before.resolve())] if args.before else [])
    cases = []
    for size_text in args.sizes:
        size = tuple(int(v) for v in size_text.split("x"))
        backlogs = {}  # one per spread, read by every case's group
        for spread in args.spreads:
            cameras = cameras_on(SPREADS[spread])
            backlogs[spread] = (cameras, publish_backlog(kafka, size, cameras, args.frames))
        for round_ in range(args.repeat):  # rounds interleave the cases: what the machine's load does, it does to all
            for spread, (cameras, topic) in backlogs.items():
                for model in args.models:
                    for code, repo in codes:
                        spec = {"repo": str(repo), "frames": args.frames,
                                "gpu_ms": args.gpu_ms if model == "gpu" else 0,
                                "config": case_config(kafka, topic, cameras)}
                        got = run_case(spec)
                        cases.append({"size": size_text, "spread": spread, "model": model, "code": code,
                                      "round": round_, **got})
                        print(json.dumps(cases[-1]), flush=True)
    report = {
        "command": "python bench/host_ceiling.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "frames_per_case": args.frames, "gpu_ms_per_batch": args.gpu_ms, "max_batch": MAX_BATCH,
        "cases": cases, "paired": paired_ratios(cases),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
