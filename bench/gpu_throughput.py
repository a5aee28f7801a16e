"""Encoder and head throughput at the real architecture sizes, random weights, no download.

Encoder: CLIP ViT-L/14-336 (24 layers, width 1024, 576 patch tokens), the paper's.
Head: LLaVA-1.5-7B-shaped (Llama 32 layers, width 4096, MLP 11008, vocab 32000) reading
the 576 patch tokens through the LLaVA-1.5 projector, scoring Q yes/no questions per frame
with the shared-prefix path the worker uses. Built from configs directly on the device
(fp16 on CUDA), so construction takes seconds, not minutes.

    python bench/gpu_throughput.py            # CUDA: real sizes (run by bench/gpu.sh)
    python bench/gpu_throughput.py --tiny     # any machine: tiny sizes, proves the code path

Writes bench/results/gpu_throughput.json (gpu_throughput_tiny.json with --tiny).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from models import real_size_parts

RESULTS = Path(__file__).resolve().parent / "results"

QUESTIONS = [
    "Is there a scratch on the left side of the part?",
    "Is the label missing?",
    "Are there fewer than four holes?",
    "Is the label left of the hole?",
    "Is the part upside down?",
]


def timed(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per call, after warm-up (cuDNN autotuning, allocator growth)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CPU is fine): prove the code path")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--questions", type=int, default=5)
    parser.add_argument("--iters", type=int, default=None)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.tiny and device.type != "cuda":
        raise SystemExit("real sizes need a CUDA GPU (a 7B head on CPU takes minutes per batch); use --tiny")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(2)
    batches = args.batches or ([1, 4] if args.tiny else [1, 8, 16, 32])
    iters = args.iters or (3 if args.tiny else 10)
    questions = QUESTIONS[: args.questions]

    encoder, head, build_s = real_size_parts(device, dtype, tiny=args.tiny)
    size = encoder.vision.config.image_size
    out: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "tiny": args.tiny,
        "build_s": round(build_s, 2),
        "encoder_params_m": round(sum(p.numel() for p in encoder.vision.parameters()) / 1e6, 1),
        "head_params_m": round(sum(p.numel() for p in head.parameters()) / 1e6, 1),
        "tokens_per_frame": encoder.num_tokens,
        "questions": len(questions),
        "runs": [],
    }
    print(f"built in {build_s:.1f}s on {out['device']} ({out['dtype']}): encoder {out['encoder_params_m']}M, "
          f"head {out['head_params_m']}M params, {encoder.num_tokens} tokens/frame")
    for batch in batches:
        # Pinned host input copied asynchronously, as the worker feeds the model.
        pixels = torch.randn(batch, 3, size, size, pin_memory=device.type == "cuda")

        def encode() -> object:
            return encoder(pixels.to(device, non_blocking=True), pooled=False)

        encoded = encode()
        encoder_s = timed(encode, device, warmup=2, iters=iters)
        head_s = timed(lambda: head.score(encoded, questions), device, warmup=1, iters=iters)
        total_s = timed(lambda: head.score(encode(), questions), device, warmup=1, iters=iters)
        run = {
            "batch": batch,
            "encoder_frames_per_s": round(batch / encoder_s, 1),
            "head_frames_per_s": round(batch / head_s, 1),
            "head_question_scores_per_s": round(batch * len(questions) / head_s, 1),
            "end_to_end_frames_per_s": round(batch / total_s, 1),
            "end_to_end_ms_per_batch": round(total_s * 1e3, 1),
        }
        if device.type == "cuda":
            run["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        out["runs"].append(run)
        print(json.dumps(run))
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "gpu_throughput_tiny.json" if args.tiny else "gpu_throughput.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
