"""``make bench``: the quick CPU benchmarks, one after the other, each in its own process.

    .venv/bin/python bench/run_all.py [--out bench/results/quick] [--only synth perception ...]

Short settings: a few minutes in all on 2 CPU cores. Each bench writes its JSON under ``--out``
(default bench/results/quick/), so the curated results that BENCHMARKS.md quotes stay as they
were measured; ``summary.json`` there lists every bench run, its command, exit status and time.
``ingest``, ``inference_worker`` and ``host_ceiling`` need the Kafka broker (``make bench`` starts it first).

Not run here: the long ones, on a quiet machine (``bench/soak.py``, the full
``bench/inference_worker.py`` and ``bench/host_ceiling.py``), ``bench/decode_scores.py`` (it reads
held-out recordings), ``bench/finetune_memory.py`` (it reads a training set's cached
encodings) and the GPU ones (``bench/gpu.sh``, ``bench/gpu-pipeline.sh``). BENCHMARKS.md has
their commands.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def benches(out: Path) -> dict[str, list[str]]:
    """name -> arguments of ``python``: the bench with short settings, writing under ``out``."""
    return {
        "synth": ["bench/synth.py", "--frames", "120", "--out", str(out / "synth.json")],
        "perception": ["bench/perception.py", "--threads", "1", "--batches", "1,8", "--min-time", "0.2",
                       "--out", str(out / "perception.json")],
        "ingest": ["bench/ingest.py", "--seconds", "2", "--out", str(out / "ingest.json")],
        "inference_worker": ["bench/inference_worker.py", "--only", "efficiency", "--size", "tiny", "--threads", "1",
                             "--pairs", "1", "--frames", "240", "--out", str(out / "inference_worker.json")],
        "host_ceiling": ["bench/host_ceiling.py", "--frames", "800", "--sizes", "320x240", "--spreads", "even",
                         "--out", str(out / "host_ceiling.json")],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "quick")
    parser.add_argument("--only", nargs="+", default=None, help="run only these benches")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    chosen = benches(out)
    unknown = sorted(set(args.only or ()) - set(chosen))
    if unknown:
        parser.error(f"no bench named {', '.join(unknown)} (choose from {', '.join(chosen)})")
    runs = []
    for name, bench_args in chosen.items():
        if args.only and name not in args.only:
            continue
        command = [sys.executable, *bench_args]
        print(f"== {name}: {' '.join(bench_args)}", flush=True)
        started = time.monotonic()
        code = subprocess.run(command, cwd=REPO).returncode
        runs.append({"bench": name, "command": "python " + " ".join(bench_args), "exit_status": code,
                     "wall_s": round(time.monotonic() - started, 1)})
        print(f"== {name}: exit {code} in {runs[-1]['wall_s']} s", flush=True)
    (out / "summary.json").write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    failed = [r["bench"] for r in runs if r["exit_status"] != 0]
    print(f"results in {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
