"""Peak memory of getting a finetune's training and validation sets out of the encoding cache.

    python bench/finetune_memory.py --bundle models/default --data runs/data/train-s49 ... --cache runs/cache

Three ways, each in a fresh process. The measure is the peak of the process's anonymous memory
(``RssAnon``, sampled every 5 ms): memory-mapped cache pages are resident too, but they are page
cache the kernel can drop, so they do not count towards running out of memory. ``ru_maxrss``
(all resident pages) is recorded beside it.

- ``split`` (what ``finetune`` does): memory-mapped pieces, split straight into the two sets,
  which hold patch tokens in float16 (``HELD_PATCH_DTYPE``);
- ``split-float32``: the same with the patch tokens held in float32, as the sets did before;
- ``join-then-split`` (what it did before that): the pieces joined into one set, then split, so
  the join and the two sets are held together (float16 patch tokens, as now).

``--data`` takes recordings or folders of them, like ``finetune``. Their encodings should
already be in the cache (a ``finetune --cache`` run, or a first run of this bench, writes them);
otherwise the first way measured also encodes them. Writes bench/results/finetune_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
WAYS = ("split", "split-float32", "join-then-split")


def anonymous_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


class PeakSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.running = anonymous_bytes(), True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, anonymous_bytes())
            time.sleep(0.005)


def measure(way: str, bundle: str, data: list[str], cache: str, stride: int) -> dict:
    """Runs in the child: load, split, report the peak and what the two sets hold."""
    sys.path.insert(0, str(ROOT))
    import torch

    from ingest.recording import find_recordings
    from training import data as td
    from training.finetune import load_encoder

    torch.set_num_threads(1)
    if way == "split-float32":
        td.HELD_PATCH_DTYPE = torch.float32
    t0 = time.time()
    encoder, _, _, _ = load_encoder(bundle)
    recordings = find_recordings(data)
    questions = td.questions_of(recordings)
    before = anonymous_bytes()
    sampler = PeakSampler()
    sampler.start()
    pieces = td.cached_pieces(encoder, recordings, questions, stride, cache, log=lambda m: None)
    if way == "join-then-split":
        pieces = [td.LabelledSet.join(pieces)]
    train, val = td.split_by_group(pieces, 0.15, seed=0)
    sampler.running = False
    sampler.join()
    held = sum(t.numel() * t.element_size() for s in (train, val)
               for t in (s.tokens.image_embeds, s.tokens.feature_tokens, s.tokens.cls_token, s.labels) if t is not None)
    return {"way": way, "recordings": len(recordings), "frames": len(train) + len(val), "sets_bytes": held,
            "peak_anonymous_bytes": max(sampler.peak, anonymous_bytes()), "anonymous_before_loading_bytes": before,
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "wall_s": round(time.time() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="models/default", help="the encoder whose cached encodings to read")
    parser.add_argument("--data", action="append", required=True,
                        help="a labelled recording or a folder of them (repeat)")
    parser.add_argument("--cache", required=True, help="the encoding cache folder")
    parser.add_argument("--frame-stride", type=int, default=2)
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.bundle, args.data, args.cache, args.frame_stride)))
        return
    runs = []
    for way in WAYS:
        cmd = [sys.executable, __file__, "--child", way, "--bundle", args.bundle, "--cache", args.cache,
               "--frame-stride", str(args.frame_stride)] + [a for d in args.data for a in ("--data", d)]
        run = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        grown = run["peak_anonymous_bytes"] - run["anonymous_before_loading_bytes"]
        run["peak_growth_over_sets"] = round(grown / run["sets_bytes"], 2)
        runs.append(run)
        print(f"{way:16s} {run['frames']} frames, sets {run['sets_bytes'] / 1e9:.2f} GB, anonymous memory grew "
              f"{grown / 1e9:.2f} GB at its peak ({run['peak_growth_over_sets']}x the sets), max RSS "
              f"{run['max_rss_bytes'] / 1e9:.2f} GB, {run['wall_s']} s")
    result = {"runs": runs, "data": args.data, "frame_stride": args.frame_stride, "bundle": args.bundle,
              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_count": os.cpu_count(),
              "load_average_1m": os.getloadavg()[0], "machine": platform.machine(),
              "python": platform.python_version()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "finetune_memory.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
