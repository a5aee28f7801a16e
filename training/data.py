"""Labelled frames for training and evaluation, encoded once.

Every labelled frame answers every question of its line (``FrameTruth.answers``), so a frame
is a row of yes/no questions. Frames are decoded and encoded once (the encoder is frozen);
``cached_pieces`` keeps each recording's encoding in a cache folder, so that several heads share
one encoding and a run that adds recordings encodes only those. ``render_pairs`` draws twin
pairs from the synthetic line (one part with and without the asked property), and
``split_by_group`` splits by part, not by frame: consecutive frames of one part are near duplicates.

Two views of a recording (``VIEWS``): ``"frame"``, every labelled frame whole; ``"part"``, the
part view the worker reads (``model.views``): a fresh ``PartTracker`` runs over all the
recording's frames in order, and each labelled frame where it boxes a part (and the truth
shows one) is encoded as ``part_crop(image, box, margin)``. Every set keeps each frame's
``seq``, so the two views of one frame can be put side by side (``align_views``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch

from ingest import synth
from ingest.recording import FrameTruth, Recording
from model.encoder import EncoderOutput, FrameEncoder
from model.tracker import PartTracker
from model.views import PART_MARGIN, part_crop
from schemas.config import Question, QuestionCategory

Log = Callable[[str], None]
VIEWS = ("frame", "part")
# Frames without a part_id (an empty belt, or a recording whose labels name no parts) are grouped
# in runs of this many, in recording order: consecutive video frames show the same stretch of belt.
PARTLESS_RUN = 20


# Patch tokens are nearly all of a training set's memory (64 x 192 floats a frame at the compact
# encoder: 13 GB in float32 for v18's 268k training frames, which left 24 GB machines under 2 GB
# free). Held in float16 they take half; the head casts each batch back to its own precision, and
# the rounding moved the shipped head's scores by at most 3e-4 on cached frames. The encoding
# cache stores them so too: every reader joins the pieces into this precision anyway, so float32
# on disk only doubled the cache and the page cache a run maps.
HELD_PATCH_DTYPE = torch.float16


@dataclass
class LabelledSet:
    """Encoded frames with their answers: labels (N, Q) in {0, 1}, -1 where a frame has no answer."""

    tokens: EncoderOutput
    labels: torch.Tensor
    groups: list[str]  # one id per physical part (or per empty-belt stretch): the unit of the split
    questions: list[Question]
    sources: list[str]
    seqs: list[int] | None = None  # each frame's seq in its recording (None: not known)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def concat(self, other: LabelledSet) -> LabelledSet:
        return LabelledSet.join([self, other])

    @staticmethod
    def join(sets: Sequence[LabelledSet], rows: Sequence[np.ndarray] | None = None) -> LabelledSet:
        """The sets one after another (only the given ``rows`` of each), in one copy (the first set's questions).

        Rows are copied straight into tensors of the final size: sets memory-mapped from the
        cache are read once and never held in memory twice.
        """
        if rows is None:
            picks = [torch.arange(len(d)) for d in sets]
        else:
            picks = [torch.as_tensor(np.asarray(r), dtype=torch.long) for r in rows]

        def gather(tensors: list[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
            out = torch.empty((sum(len(p) for p in picks), *tensors[0].shape[1:]), dtype=dtype or tensors[0].dtype)
            at = 0
            for t, p in zip(tensors, picks):
                if t.dtype == out.dtype:
                    torch.index_select(t, 0, p, out=out[at : at + len(p)])
                else:
                    out[at : at + len(p)] = t[p]
                at += len(p)
            return out

        embeds = None if sets[0].tokens.image_embeds is None else gather([d.tokens.image_embeds for d in sets])
        tokens = EncoderOutput(embeds, gather([d.tokens.feature_tokens for d in sets], HELD_PATCH_DTYPE),
                               gather([d.tokens.cls_token for d in sets]))
        seqs = None
        if all(d.seqs is not None for d in sets):
            seqs = [d.seqs[i] for d, p in zip(sets, picks) for i in p.tolist()]  # type: ignore[index]
        return LabelledSet(tokens, gather([d.labels for d in sets]),
                           [d.groups[i] for d, p in zip(sets, picks) for i in p.tolist()], sets[0].questions,
                           [s for d in sets for s in d.sources], seqs)

    def subset(self, index: Sequence[int] | np.ndarray) -> "LabelledSet":
        return LabelledSet.join([self], [np.asarray(index)])


def questions_of(recordings: Sequence[str | Path], include_relations: bool = False) -> list[Question]:
    """The questions stored in the recordings' metadata (synth writes its catalog there)."""
    seen: dict[str, Question] = {}
    for path in recordings:
        for raw in getattr(Recording(path).meta, "questions", None) or []:
            q = Question.model_validate(raw)
            if include_relations or q.category != QuestionCategory.relation:
                seen.setdefault(q.id, q)
    return list(seen.values())


def labelled_questions(recordings: Sequence[str | Path], worded_by: Sequence[Question]) -> list[Question]:
    """The questions the recordings' labels answer (``patchsight label``), as ``worded_by`` words them.

    A recorded camera's metadata lists no questions, only the ids its labels answer; their
    text comes from the bundle being adapted (or, failing that, the user's line config).
    """
    ids = sorted({qid for path in recordings for entry in Recording(path).entries if entry.truth
                  for qid in entry.truth.answers})
    known = {q.id: q for q in worded_by}
    unknown = [qid for qid in ids if qid not in known]
    if unknown:
        raise ValueError(f"the labels answer {', '.join(unknown)}, which no question here words: pass --config "
                         "and --line naming the line whose questions these are")
    return [known[qid] for qid in ids]


def is_good(truth: FrameTruth) -> bool:
    """A frame whose truth names no defect and answers no question "yes"."""
    return not truth.defects and not any(truth.answers.values())


def answer(truth: FrameTruth, question: Question) -> float:
    """A frame's label for a question: 1 yes, 0 no, -1 not answered.

    An anomaly question that the labels do not answer by its id is answered by the frame's
    defects: "yes" on a frame with any defect (or any "yes" answer), "no" on a good one.
    """
    if question.id in truth.answers:
        return float(truth.answers[question.id])
    if question.kind == "anomaly":
        return 0.0 if is_good(truth) else 1.0
    return -1.0


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not a decodable image")
    return image


def encode_for_training(encoder: FrameEncoder, images: list[np.ndarray], batch: int = 64) -> EncoderOutput:
    """The frames' tokens and pooled embedding on the host, as tensors that training can use."""
    parts = []
    for start in range(0, len(images), batch):
        enc = encoder.encode_frames(images[start : start + batch], pooled=True).to("cpu")
        # cloned out of inference mode, so that training can use them as ordinary tensors
        parts.append(EncoderOutput(enc.image_embeds.clone(), enc.feature_tokens.clone(), enc.cls_token.clone()))
    return EncoderOutput.cat(parts)


class NoLabelledFrames(ValueError):
    """Recordings that are labelled, yet none of whose frames (at the stride) carries an answer."""


def view_frames(rec: Recording, stride: int = 1, view: str = "frame", margin: float = PART_MARGIN,
                skipped: list[int] | None = None) -> Iterator[tuple[int, FrameTruth, np.ndarray]]:
    """``(seq, truth, image)`` of every ``stride``-th labelled frame of a recording, as ``view`` reads it.

    ``"frame"``: the decoded frame. ``"part"``: a fresh ``PartTracker`` (the recording's camera,
    its default zone) sees every frame in recording order, which is seq order, labelled or not;
    a labelled frame is kept where it boxes a part and the truth shows one, and the image is
    the part view, ``part_crop(image, box, margin)``. A frame whose truth says where the part
    lies (``part_box``: a recording exported from operator feedback, whose frames are the parts'
    frames the worker scored, not a stream a tracker could follow) is cut there instead, and the
    tracker does not see it. Undecodable frames are counted in ``skipped``.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; known: {', '.join(VIEWS)}")
    tracker = PartTracker(rec.meta.camera_id, None, (rec.meta.width, rec.meta.height)) if view == "part" else None
    for n, (entry, jpeg) in enumerate(rec.frames()):
        truth = entry.truth
        wanted = truth is not None and not n % stride
        if tracker is None and not wanted:
            continue
        try:
            image = decode(jpeg)
        except ValueError:
            if skipped is not None and wanted:
                skipped.append(entry.seq)
            continue
        if tracker is not None:
            boxed = truth.part_box if truth is not None else None
            box = boxed or tracker.update(image, entry.seq).box
            if not wanted or box is None or truth.part_id is None:
                continue
            image = part_crop(image, box, margin)
        yield entry.seq, truth, image  # type: ignore[misc]


def encode_recordings(
    encoder: FrameEncoder,
    recordings: Sequence[str | Path],
    questions: Sequence[Question],
    stride: int = 1,
    batch: int = 64,
    log: Log = print,
    view: str = "frame",
    margin: float = PART_MARGIN,
) -> LabelledSet:
    """Decode and encode every ``stride``-th labelled frame of the recordings (with the pooled embedding),
    as ``view`` reads it (``view_frames``: the whole frame, or the part view of the frames the tracker boxes)."""
    parts: list[EncoderOutput] = []
    labels: list[list[float]] = []
    groups: list[str] = []
    seqs: list[int] = []
    pending: list[np.ndarray] = []
    t0 = time.time()
    skipped: list[int] = []

    def flush() -> None:
        if pending:
            parts.append(encode_for_training(encoder, pending))
            pending.clear()

    for path in recordings:
        rec = Recording(path)
        if not rec.meta.labelled:
            raise ValueError(f"{path} has no ground truth: record it with labels (e.g. `patchsight synth`)")
        name = f"{rec.meta.line_id}/{rec.meta.camera_id}@{Path(path).name}"
        partless = 0
        for seq, truth, image in view_frames(rec, stride, view, margin, skipped):
            pending.append(image)
            seqs.append(seq)
            labels.append([answer(truth, q) for q in questions])
            if truth.part_id is not None:
                groups.append(f"{name}#part{truth.part_id}")
            else:
                groups.append(f"{name}#empty{partless // PARTLESS_RUN}")
                partless += 1
            if len(pending) >= batch:
                flush()
                log(f"encoded {len(groups)} frames ({len(groups) / (time.time() - t0):.0f}/s)")
    flush()
    if not groups:
        what = "labelled frames" if view == "frame" else "labelled frames with a tracked part"
        raise NoLabelledFrames(f"no {what} in the given recordings")
    if skipped:
        log(f"skipped {len(skipped)} undecodable frames")
    return LabelledSet(EncoderOutput.cat(parts), torch.tensor(labels), groups, list(questions),
                       [str(p) for p in recordings], seqs)


def labelled_seqs(path: str | Path, stride: int) -> list[int]:
    """The seqs of every ``stride``-th labelled frame of a recording (what the whole-frame view keeps, bar undecodable frames)."""
    return [e.seq for n, e in enumerate(Recording(path).entries) if e.truth is not None and not n % stride]


def align_views(frames: Sequence[LabelledSet], views: Sequence[LabelledSet]) -> np.ndarray:
    """For each row of ``LabelledSet.join(views)``, its row in ``LabelledSet.join(frames)``: the same recording and seq.

    Both sides one piece per recording (``recording_pieces``), with their seqs.
    """
    row: dict[tuple[str, int], int] = {}
    at = 0
    for piece in frames:
        if piece.seqs is None or len(piece.sources) != 1:
            raise ValueError("aligning views needs one recording per piece, with its seqs")
        row.update({(piece.sources[0], seq): at + i for i, seq in enumerate(piece.seqs)})
        at += len(piece)
    out = []
    for piece in views:
        if piece.seqs is None or len(piece.sources) != 1:
            raise ValueError("aligning views needs one recording per piece, with its seqs")
        for seq in piece.seqs:
            key = (piece.sources[0], seq)
            if key not in row:
                raise ValueError(f"frame {seq} of {key[0]} is in the part view but not among the whole frames")
            out.append(row[key])
    return np.asarray(out, dtype=np.int64)


def cached_encoding(
    encoder: FrameEncoder,
    recordings: Sequence[str | Path],
    questions: Sequence[Question],
    stride: int,
    cache_dir: str | Path | None,
    log: Log = print,
    view: str = "frame",
    margin: float = PART_MARGIN,
) -> LabelledSet:
    """``encode_recordings``, each recording's encoding kept in ``cache_dir``.

    Per recording, so that several heads share one encoding and a run that adds recordings
    encodes only the new ones.
    """
    return LabelledSet.join(cached_pieces(encoder, recordings, questions, stride, cache_dir, log, view, margin))


def cached_pieces(
    encoder: FrameEncoder,
    recordings: Sequence[str | Path],
    questions: Sequence[Question],
    stride: int,
    cache_dir: str | Path | None,
    log: Log = print,
    view: str = "frame",
    margin: float = PART_MARGIN,
) -> list[LabelledSet]:
    """``cached_encoding`` before the join: one set per recording that has labelled frames.

    Cached pieces are memory-mapped from their files, so holding all of them costs page
    cache, not memory, until they are joined or split. Files are only ever replaced by a
    rename, never rewritten in place, so a mapping stays valid while another run writes the
    same file. An unreadable file is encoded again. Patch tokens are stored in
    ``HELD_PATCH_DTYPE``; files with float32 ones, from before, are read as they are.
    A part-view file's key names the view and the margin too (a whole-frame file's key is as it
    always was); a whole-frame file from before that has no seqs gets them from the recording's index.
    """
    if cache_dir is None:
        return [encode_recordings(encoder, recordings, questions, stride, log=log, view=view, margin=margin)]

    common = {
        # an anomaly question's labels come from the frames' defects: its kind is part of the key
        "questions": [q.id if q.kind == "yes_no" else f"{q.id}:{q.kind}" for q in questions], "stride": stride,
        "positions": encoder._saved_positions is None,
        # the bytes, not a float sum: a sum's rounding changes with the thread count
        "weights": hashlib.sha256(
            encoder.vision.embeddings.patch_embedding.weight.detach().float().cpu().numpy().tobytes()).hexdigest(),
    }
    if view != "frame":  # whole-frame keys stay as they were, so their cache files stay valid
        common.update(view=view, margin=margin)
    paths = []
    for rec in recordings:
        key = json.dumps({**common, "recording": str(Path(rec).resolve()),
                          "size": (Path(rec) / "frames.bin").stat().st_size}, sort_keys=True)
        paths.append(Path(cache_dir) / f"encoded-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt")
    cached = [path.is_file() for path in paths]
    hits = sum(cached)
    if hits:
        log(f"using cached encodings of {hits} of {len(recordings)} recordings from {cache_dir}")
    if hits < len(recordings):
        log(f"encoding {len(recordings) - hits} recordings")
    sets: list[LabelledSet] = []
    for rec, path, is_cached in zip(recordings, paths, cached):
        saved = read_cached_piece(path, log) if is_cached else None
        if saved is None:
            try:
                data = encode_recordings(encoder, [rec], questions, stride, log=log, view=view, margin=margin)
            except NoLabelledFrames:
                continue  # others may have some; an empty piece is not cached, it costs nothing to read again
            path.parent.mkdir(parents=True, exist_ok=True)
            t = data.tokens
            # write then rename: heads trained side by side may share (and race for) one cache file
            partial = path.with_suffix(f".{os.getpid()}.partial")
            torch.save({"tokens": (t.image_embeds, t.feature_tokens.to(HELD_PATCH_DTYPE), t.cls_token),
                        "labels": data.labels, "groups": data.groups, "sources": data.sources, "seqs": data.seqs},
                       partial)
            partial.replace(path)
            del data, t  # read back memory-mapped like the cached pieces, so new encodings leave memory too
            saved = torch.load(path, weights_only=False, mmap=True)
        # the recording as this run names it: part keys (``frame_part_keys``) are made from it
        seqs = saved.get("seqs")
        if seqs is None:  # a file from before seqs were kept: the index says them, unless frames were undecodable
            seqs = labelled_seqs(rec, stride)
            seqs = seqs if len(seqs) == len(saved["labels"]) else None
        sets.append(LabelledSet(EncoderOutput(*saved["tokens"]), saved["labels"], saved["groups"],
                                list(questions), [str(rec)], seqs))
    if not sets:
        raise NoLabelledFrames("no labelled frames in the given recordings")
    return sets


def recording_pieces(
    encoder: FrameEncoder,
    recordings: Sequence[str | Path],
    questions: Sequence[Question],
    stride: int,
    cache_dir: str | Path | None,
    log: Log = print,
    view: str = "frame",
    margin: float = PART_MARGIN,
) -> list[LabelledSet]:
    """One encoded set per recording that has labelled frames, each naming its recording in ``sources``.

    ``cached_pieces`` when ``cache_dir`` is given; without it each recording is encoded on its
    own, so that every frame's recording is known (what ``frame_part_keys`` needs).
    """
    if cache_dir is not None:
        return cached_pieces(encoder, recordings, questions, stride, cache_dir, log, view, margin)
    pieces = []
    for rec in recordings:
        try:
            pieces.append(encode_recordings(encoder, [rec], questions, stride, log=log, view=view, margin=margin))
        except NoLabelledFrames:
            continue
    if not pieces:
        raise NoLabelledFrames("no labelled frames in the given recordings")
    return pieces


def regroup_partless(pieces: Sequence[LabelledSet], run: int) -> None:
    """Group each recording's frames without a part_id in runs of ``run`` (in place), in recording order.

    ``encode_recordings`` (and the encoding cache) groups them by ``PARTLESS_RUN``; a set of still
    images, each of its own part, wants 1.
    """
    for piece in pieces:
        seen: dict[str, int] = {}
        groups = []
        for g in piece.groups:
            name, partless, _ = g.partition("#empty")
            if partless:
                n = seen.get(name, 0)
                seen[name] = n + 1
                g = f"{name}#empty{n // run}"
            groups.append(g)
        piece.groups = groups


def frame_part_keys(pieces: Sequence[LabelledSet]) -> list[str | None]:
    """Each frame's part: its recording and its truth's part id; None for a frame that shows no part.

    The group names alone repeat across recordings whose line, camera and folder names are the
    same (one synth seed's ``line-a/line-a-cam1`` and the next one's), so the recording comes first.
    """
    keys: list[str | None] = []
    for piece in pieces:
        if len(piece.sources) != 1:
            raise ValueError(f"part keys need one recording per piece, got {len(piece.sources)}")
        keys += [f"{piece.sources[0]}|{g}" if "#part" in g else None for g in piece.groups]
    return keys


def read_cached_piece(path: Path, log: Log = print) -> dict | None:
    """A cached encoding, memory-mapped; None (and a log line) when the file cannot be read, to encode again."""
    try:
        return torch.load(path, weights_only=False, mmap=True)
    except Exception as exc:  # a truncated or foreign file: the recording is still there to encode
        log(f"cached encoding {path} is unreadable ({type(exc).__name__}: {exc}); encoding its recording again")
        return None


def render_pairs(
    questions: Sequence[Question], n: int, seed: int, size: tuple[int, int] = (640, 480)
) -> tuple[list[np.ndarray], list[np.ndarray], list[dict[str, bool]]]:
    """``n`` pairs per question: (yes image, no image), identical but for the asked property.

    Each pair is one part under one camera look drawn from the pretraining's wide range, so that
    nothing but the property tells the two images apart; both go through JPEG like recorded
    frames. Returns the yes images, the no images (Q*n each, question-major) and, per image in
    that order (all yes images, then all no images), the answer to every catalog question.
    """
    from training.pretrain import random_look

    rng = np.random.default_rng([seed, 0xE7A1])
    pos, neg, pos_answers, neg_answers = [], [], [], []
    for q in questions:
        for _ in range(n):
            base = synth.sample_part(rng, str(rng.choice(list(synth.PART_TYPES))), defect_rate=0.0)
            no = synth.clear_defect(base, q.id, rng)
            if q.id == "label_near_gap":  # both images need an empty screw position, on opposite sides
                no = synth.clear_defect(base.replace(label_side=str(rng.choice(["left", "right"]))), q.id, rng)
            yes = synth.set_defect(no, q.id, rng)
            look = random_look(rng, size[0] / synth.BASE_WIDTH)
            x = float(rng.uniform(*synth.inspected_x_range(size, look.scale)))
            y = size[1] / 2 + float(rng.uniform(-0.04, 0.04)) * size[1]
            noise_seed = int(rng.integers(2**31))
            for spec, images, answers in ((yes, pos, pos_answers), (no, neg, neg_answers)):
                image = synth.render_part_frame(spec, np.random.default_rng(noise_seed), (x, y), look, size)
                _, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
                images.append(decode(jpeg.tobytes()))
                answers.append(spec.answers())
    return pos, neg, pos_answers + neg_answers


def renderable(question: Question) -> bool:
    """Whether ``render_pairs`` can draw twin pairs for the question: the synthetic line's parts can show it."""
    return question.id in {q.id for q in synth.SYNTH_QUESTIONS}


def encode_pairs(
    encoder: FrameEncoder, questions: Sequence[Question], n: int, seed: int, batch: int = 64, log: Log = print
) -> LabelledSet:
    """``render_pairs`` encoded and labelled for training; the two images of a pair share a group."""
    unknown = [q.id for q in questions if not renderable(q)]
    if unknown:
        raise ValueError(f"twin pairs are rendered from the synthetic line's parts, which cannot show {unknown}")
    pos, neg, answers = render_pairs(questions, n, seed)
    tokens = encode_for_training(encoder, pos + neg, batch)
    labels = [[float(a[q.id]) if q.id in a else -1.0 for q in questions] for a in answers]
    groups = [f"pair{i % len(pos)}@{seed}" for i in range(len(answers))]
    log(f"rendered and encoded {len(pos)} twin pairs (seed {seed})")
    return LabelledSet(tokens, torch.tensor(labels), groups, list(questions), [f"pairs@{seed}"])


def group_names(pieces: Sequence[LabelledSet]) -> list[str]:
    return sorted({g for d in pieces for g in d.groups})


def held_out_groups(names: Sequence[str], val_fraction: float, seed: int) -> set[str]:
    """A random ``val_fraction`` of the groups (at least one): the validation parts of a holdout."""
    names = list(names)
    np.random.default_rng(seed).shuffle(names)
    return set(names[: max(1, int(round(len(names) * val_fraction)))])


def split_by_group(pieces: Sequence[LabelledSet], val_fraction: float, seed: int) -> tuple[LabelledSet, LabelledSet]:
    """Training and validation sets of the pieces, split by group, each filled straight from the pieces.

    The same split as splitting the pieces' join, without ever holding the join.
    """
    return split_groups(pieces, held_out_groups(group_names(pieces), val_fraction, seed))


def split_groups(pieces: Sequence[LabelledSet], val_names: set[str]) -> tuple[LabelledSet, LabelledSet]:
    """(the frames of the other groups, the frames of ``val_names``), each filled straight from the pieces."""
    in_val = [np.array([g in val_names for g in d.groups], dtype=bool) for d in pieces]
    return (LabelledSet.join(pieces, [np.flatnonzero(~v) for v in in_val]),
            LabelledSet.join(pieces, [np.flatnonzero(v) for v in in_val]))
