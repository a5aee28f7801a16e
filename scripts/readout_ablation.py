"""The part readout's ablation: the same fit with the patch positions pooled away (docs/evaluation.md, "v21").

    .venv/bin/python scripts/readout_ablation.py BUNDLE --data DIR [DIR ...] --cache DIR [--epochs 4] [--seed 0]

On the part views of the recordings (as ``model fit-readout`` reads them, the same split of parts by
``--seed``), it fits two readouts: the bundle's kind (every patch token at its place, 64 x 192 weights
per question) and one on the mean of the patch tokens (192 weights per question: what is there, not
where), and prints each one's AUROC on the held-out parts' frames and on the parts (mean of their
frames). Writes nothing to the bundle.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ingest.recording import find_recordings  # noqa: E402
from model.bundle import load_bundle  # noqa: E402
from model.readout import PatchReadout  # noqa: E402
from training.data import recording_pieces  # noqa: E402
from training.readout import held_out_aurocs, held_out_split, readout_questions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    bundle = load_bundle(args.bundle, device="cpu", dtype=torch.float32)
    questions = readout_questions(bundle.spec.questions)
    qids = [q.id for q in questions]
    recordings = find_recordings(args.data)
    pieces = recording_pieces(bundle.encoder, recordings, questions, 1, args.cache, lambda m: None, "part",
                              bundle.spec.part_view.margin)
    train, val, keys = held_out_split(pieces, args.val_fraction, args.seed)
    labels = val.labels.numpy()
    print(f"{len(train)} training frames, {len(val)} held-out frames; AUROC frame / part")
    print(f"{'readout':28s}" + "".join(f"{q[:14]:>16s}" for q in qids))
    for name, tokens_of in (("patches at their places", lambda t: t),
                            ("mean patch (positions pooled)", lambda t: t.float().mean(1, keepdim=True))):
        train_tokens = tokens_of(train.tokens.feature_tokens)
        readout = PatchReadout(*train_tokens.shape[1:], qids)
        readout.fit(train_tokens, train.labels, epochs=args.epochs, seed=args.seed)
        aurocs = held_out_aurocs(readout.scores(tokens_of(val.tokens.feature_tokens), qids).numpy(), labels, keys, qids)
        print(f"{name:28s}" + "".join(f"{aurocs[q]['frame_auroc']:.3f} / {aurocs[q]['part_auroc']:.3f}".rjust(16)
                                      for q in qids))


if __name__ == "__main__":
    main()
