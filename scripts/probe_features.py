"""Which of a bundle's encoder features hold each question's answer? Linear probes, side by side.

Each probe is a class-balanced logistic regression on standardized features, trained on the
training recordings and scored (AUROC) on others:

- ``pooled``: CLIP's pooled, projected image embedding (what the CLIP linear probe reads);
- ``cls``: the CLS token of the head's feature layer;
- ``patch_mean``: the mean of that layer's patch tokens;
- ``patch_lse``: a linear score per patch token, log-sum-exp over the patches (local evidence).

A patch-token head (``image_tokens="patch"``) reads only the patch tokens; where ``pooled`` or
``cls`` beat the patch probes, the answer sits in tokens such a head is not given (``cls_then_patch``
gives it the CLS token too). Encodings come from (and go to) finetune's cache.

``--layers`` probes instead the CLS token (``clsN``) and the mean patch token (``meanN``) of each
given layer N (1 = the first transformer layer), and ``--image-size`` feeds the encoder frames of
another size, its position embeddings interpolated; these encodings are not cached.

    .venv/bin/python scripts/probe_features.py models/default --train runs/data/train-s{49..84} \\
        --test runs/data/calib-s{501..508} --train-stride 2 --cache runs/cache
    .venv/bin/python scripts/probe_features.py models/default --train runs/data/train-s{49..84} \\
        --test runs/data/calib-s{501..508} --train-stride 4 --test-stride 2 --layers 4 5 6 --image-size 192
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest.recording import find_recordings
from model.encoder import EncoderOutput
from schemas.config import QuestionCategory
from training.data import cached_encoding
from training.finetune import load_encoder
from training.metrics import auroc


def standardize(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    flat = ref.reshape(-1, ref.shape[-1])
    return (x - flat.mean(0)) / (flat.std(0) + 1e-5)


def fit_probe(x: torch.Tensor, y: torch.Tensor, over_patches: bool, steps: int):
    """Balanced logistic regression; with ``over_patches``, x is (N, T, D) and patch scores are pooled."""
    w = torch.zeros(x.shape[-1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    pos, neg = (y == 1).float(), (y == 0).float()

    def logits(features: torch.Tensor) -> torch.Tensor:
        z = features @ w
        # minus log T: the pooled logit starts at the mean patch's, not log T above it
        return torch.logsumexp(z, dim=1) - math.log(z.shape[1]) if over_patches else z

    for _ in range(steps):
        z = logits(x) + b
        loss = (0.5 * pos * F.softplus(-z)).sum() / pos.sum() + (0.5 * neg * F.softplus(z)).sum() / neg.sum()
        opt.zero_grad()
        (loss + 1e-3 * (w * w).sum()).backward()
        opt.step()
    return lambda features: logits(features).detach().numpy()


def features(tokens: EncoderOutput) -> dict[str, torch.Tensor]:
    return {"pooled": tokens.image_embeds.float(), "cls": tokens.cls_token.float(),
            "patch_mean": tokens.feature_tokens.float().mean(1), "patch_lse": tokens.feature_tokens.float()}


def layer_features(encoder, recordings, questions, stride: int, layers: list[int], image_size: int | None):
    """(features by name, labels (N, Q)) of every ``stride``-th labelled frame, per transformer layer."""
    from training.data import decode
    from ingest.recording import Recording

    preprocess = encoder.preprocess
    size = image_size or preprocess.image_size
    if size != preprocess.image_size:  # the same resize-then-crop, scaled
        preprocess = copy.copy(preprocess)
        preprocess.resize_to = round(preprocess.resize_to * size / preprocess.image_size)
        preprocess.image_size = size
    vision, ids = encoder.vision, [q.id for q in questions]
    images, labels = [], []
    for path in recordings:
        for n, (entry, jpeg) in enumerate(Recording(path).frames()):
            if entry.truth is not None and n % stride == 0:
                images.append(decode(jpeg))
                labels.append([float(entry.truth.answers[i]) if i in entry.truth.answers else -1.0 for i in ids])
    out: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        for start in range(0, len(images), 64):
            x = preprocess(images[start : start + 64]).to(encoder.dtype)
            h = vision.pre_layrnorm(vision.embeddings(x, interpolate_pos_encoding=size != encoder.preprocess.image_size))
            for depth, layer in enumerate(vision.encoder.layers, start=1):
                h = layer(h, None)
                if depth in layers:
                    out.setdefault(f"cls{depth}", []).append(h[:, 0].float())
                    out.setdefault(f"mean{depth}", []).append(h[:, 1:].float().mean(1))
    return {k: torch.cat(v) for k, v in out.items()}, torch.tensor(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--train", type=Path, nargs="+", required=True)
    parser.add_argument("--test", type=Path, nargs="+", required=True)
    parser.add_argument("--train-stride", type=int, default=2)
    parser.add_argument("--test-stride", type=int, default=1)
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="probe the CLS and mean patch token of these layers (1 = first) instead")
    parser.add_argument("--image-size", type=int, default=None, help="with --layers: frames of this size")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder, _, _, bundle = load_encoder(args.bundle)
    if bundle is None:
        raise SystemExit(f"{args.bundle} is not a bundle")
    questions = [q for q in bundle.spec.questions if q.category != QuestionCategory.relation]
    if args.image_size and not args.layers:
        parser.error("--image-size needs --layers")
    if args.layers:
        ftrain, ytrain = layer_features(encoder, find_recordings(args.train), questions, args.train_stride,
                                        args.layers, args.image_size)
        ftest, ytest = layer_features(encoder, find_recordings(args.test), questions, args.test_stride,
                                      args.layers, args.image_size)
    else:
        train = cached_encoding(encoder, find_recordings(args.train), questions, args.train_stride, args.cache)
        test = cached_encoding(encoder, find_recordings(args.test), questions, args.test_stride, args.cache)
        (ftrain, ytrain), (ftest, ytest) = (features(train.tokens), train.labels), (features(test.tokens), test.labels)
    ftest = {k: standardize(ftest[k], ftrain[k]) for k in ftest}
    ftrain = {k: standardize(v, v) for k, v in ftrain.items()}
    out = {}
    for j, q in enumerate(questions):
        ytr, yte = ytrain[:, j], ytest[:, j]
        mtr, mte = ytr >= 0, yte >= 0
        out[q.id] = {}
        for name in ftrain:
            lse = name == "patch_lse"
            score = fit_probe(ftrain[name][mtr], ytr[mtr], over_patches=lse, steps=150 if lse else 300)
            out[q.id][name] = round(auroc(score(ftest[name][mte]), yte[mte].numpy()), 3)
        print(q.id, json.dumps(out[q.id]), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
