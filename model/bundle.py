"""A model bundle: everything a worker needs to score frames, in one directory.

Layout::

    bundle.json           BundleSpec: model id, encoder, head, questions, thresholds, provenance
    encoder/              CLIPModel save_pretrained + CLIP tokenizer + preprocessor_config.json
                          (or bundle.json names a hub id, read from the local HF cache only)
    head/                 MLLMHead.save_pretrained: head_config.json, projector.safetensors, lm/
                          (LLaVA: llava/, or the hub id in head_config.json)
    probe.safetensors     optional LinearProbe on the pooled CLIP embedding
    part-head/            optional second head that reads the part view (model/views.py): spec.part_view
    part-readout.safetensors  optional linear readout of the part view's patch tokens (model/readout.py):
                          spec.part_view.readout; mixed with the part head per question
    anomaly/              optional memory of good parts' patch tokens (model/anomaly.py): spec.anomaly;
                          it scores every question of kind "anomaly"

``load_bundle`` never touches the network.

Public API
----------
``load_bundle(path, device="auto", dtype=None) -> Bundle``
``Bundle.create(encoder, head, model_id, clip=None, clip_tokenizer=None, questions=(), thresholds={},
                provenance={}, probe=None) -> Bundle``
``bundle.save(directory, dtype=torch.float16)``
``bundle.encode(frames: list[np.ndarray BGR uint8]) -> EncoderOutput``
``bundle.score_frames(frames, questions, scorer="head") -> np.ndarray (B, Q) float32``
    scorer: "head" (MLLM, VQAScore), "clip" (zero-shot CLIP), "probe" (linear probe). Questions of
    kind "anomaly" are scored by the anomaly memory whatever the scorer.
``bundle.score_frames(frames, questions, boxes=[box | None, ...])``: with a part view, each frame with
    a part box is scored from both views (the mean of the two heads' log-odds)
``bundle.score_encoded(enc: EncoderOutput, questions, scorer="head") -> np.ndarray (B, Q)``
    scorer "part_head": the part view's head, on encoded part views
``bundle.with_part_view(frame_scores, encoded_part_views, questions) -> np.ndarray``  both views' P(yes)
``bundle.part_view_scores(encoded_part_views, questions) -> np.ndarray``  the part view's P(yes): the part head,
    mixed with the part readout where the bundle has one (``bundle.with_readout(head_scores, ...)``)
``combine_views(frame_scores, part_scores, weights) -> np.ndarray``  P(yes) from both views
``bundle.part_view_weights(questions) -> np.ndarray (Q,)``  the part view's share of each question's log-odds
``bundle.thresholds_for(questions) -> np.ndarray (Q,)``  Question.threshold, else the bundle's, else default
``bundle.part_thresholds_for(questions) -> np.ndarray (Q,)``  the same for part verdicts: Question.threshold,
    else the calibrated part threshold (``spec.parts``), else the frame threshold
``bundle.part_aggregate``  how a part's frame scores are combined ("mean" until calibrated otherwise)
``bundle.is_anomaly(question) -> bool``  scored by the anomaly memory, not the head
``bundle.model_id``, ``bundle.encoder``, ``bundle.head``, ``bundle.clip`` (ClipBaseline | None),
``bundle.probe`` (LinearProbe | None), ``bundle.spec`` (BundleSpec), ``bundle.describe() -> dict``
"""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import CLIPModel, CLIPTokenizer

from model.anomaly import AnomalyMemory
from model.clip_baseline import ClipBaseline, LinearProbe
from model.encoder import (
    EncoderConfig, EncoderOutput, FrameEncoder, FramePreprocessor, hub_kwargs, load_clip, resolve_device,
)
from model.head import MLLMHead
from model.readout import PatchReadout
from model.views import PART_MARGIN, Box, part_crop
from schemas.config import Question
from schemas.drift import DriftReference
from schemas.part import PartAggregate

BUNDLE_FILE = "bundle.json"
Scorer = Literal["head", "part_head", "clip", "probe"]


class BundleError(ValueError):
    """The directory is not a readable bundle."""


class EncoderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A subfolder of the bundle, or a hub id (read from the local HF cache only);
    # None: the head's own (LLaVA) vision tower, no CLIP baseline.
    source: str | None = "encoder"
    config: EncoderConfig = EncoderConfig()


class PartViewSpec(BaseModel):
    """A second head that reads the part cut out of the frame (model/views.py), beside the whole-frame head."""

    model_config = ConfigDict(extra="forbid")

    head: str = "part-head"
    margin: float = Field(PART_MARGIN, ge=0.0, le=1.0, description="around the part's box, of its longer side")
    weights: dict[str, float] = Field(
        default_factory=dict, description="question id -> the part view's share of the score's log-odds "
        "(chosen by `model calibrate`; 0.5 where unset: both views alike)")
    readout: str | None = Field(None, description="file of the linear readout of the part view's patch tokens "
                                "(model/readout.py; `model fit-readout`); None: the part head alone")
    readout_weights: dict[str, float] = Field(
        default_factory=dict, description="question id -> the readout's share of the part view's log-odds "
        "(chosen by `model calibrate`; 0.5 where unset; 0 for a question the readout was not fitted for)")


class PartVerdictSpec(BaseModel):
    """How the bundle's frame scores become one verdict per part (``patchsight model calibrate``).

    A part is flagged on a question when the ``aggregate`` of its frames' scores reaches the
    question's threshold; the thresholds were chosen together so that at most
    ``max_false_alarm_rate`` of the calibration recordings' good parts are flagged by any question.
    """

    model_config = ConfigDict(extra="forbid")

    aggregate: PartAggregate = "mean"
    thresholds: dict[str, float] = {}  # question id -> part threshold
    max_false_alarm_rate: float = Field(0.02, ge=0.0, le=1.0)
    calibration: dict[str, Any] = Field(
        default_factory=dict, description="what the thresholds bought on the calibration recordings: the part report")


class BundleSpec(BaseModel):
    """bundle.json."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    model_id: str = Field(min_length=1)
    encoder: EncoderSpec = EncoderSpec()
    head: str = "head"
    # The questions the bundle was made for: their texts are the prompts the head
    # was trained on, their clip_positive/negative the CLIP baseline's captions.
    questions: list[Question] = []
    thresholds: dict[str, float] = {}  # question id -> default threshold
    default_threshold: float = Field(0.5, ge=0.0, le=1.0)
    part_view: PartViewSpec | None = None  # None: the head reads the whole frame only
    parts: PartVerdictSpec | None = None  # None: not calibrated for part verdicts (frame thresholds are used)
    anomaly: str | None = None  # folder of the memory of good parts (model/anomaly.py); None: none
    # None: no calibration reference, so the alert service watches no drift for this bundle (docs/drift.md)
    score_reference: DriftReference | None = None
    provenance: dict[str, Any] = {}
    created_at: str = Field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))


class Bundle:
    def __init__(
        self,
        spec: BundleSpec,
        encoder: FrameEncoder,
        head: MLLMHead,
        clip: ClipBaseline | None = None,
        clip_model: CLIPModel | None = None,
        probe: LinearProbe | None = None,
        directory: Path | None = None,
        part_head: MLLMHead | None = None,
        anomaly: AnomalyMemory | None = None,
        part_readout: PatchReadout | None = None,
    ) -> None:
        if head.encoder is not None and head.encoder is not encoder:
            raise ValueError("the head must read the bundle's encoder")
        if (part_head is None) != (spec.part_view is None):
            raise ValueError("a part view needs its head, and a part head its spec.part_view")
        if (part_readout is None) != (spec.part_view is None or spec.part_view.readout is None):
            raise ValueError("a part readout needs a part view naming it (spec.part_view.readout), and that name its readout")
        if (anomaly is None) != (spec.anomaly is None):
            raise ValueError("an anomaly memory needs its spec.anomaly folder, and spec.anomaly its memory")
        if clip is not None and clip.encoder is not encoder:
            raise ValueError("the CLIP baseline must read the bundle's encoder")
        self.spec = spec
        self.encoder = encoder
        self.head = head
        self.clip = clip
        self.clip_model = clip_model  # kept to save the text tower with the vision tower
        self.probe = probe
        self.directory = directory
        self.part_head = part_head
        self.part_readout = part_readout
        self.anomaly = anomaly

    @classmethod
    def create(
        cls,
        encoder: FrameEncoder,
        head: MLLMHead,
        model_id: str,
        clip: CLIPModel | None = None,
        clip_tokenizer: CLIPTokenizer | None = None,
        questions: Sequence[Question] = (),
        thresholds: dict[str, float] | None = None,
        provenance: dict[str, Any] | None = None,
        probe: LinearProbe | None = None,
        encoder_source: str | None = "encoder",
        default_threshold: float = 0.5,
    ) -> "Bundle":
        """A bundle from live objects. ``clip`` (the CLIPModel the encoder came from) enables the baseline."""
        baseline = None
        if clip is not None:
            if clip_tokenizer is None:
                raise ValueError("a CLIP baseline needs its tokenizer")
            baseline = ClipBaseline.from_clip(clip, encoder, clip_tokenizer)
        spec = BundleSpec(
            model_id=model_id,
            encoder=EncoderSpec(source=encoder_source if clip is not None else None, config=encoder.config),
            questions=list(questions),
            thresholds=dict(thresholds or {}),
            default_threshold=default_threshold,
            provenance=dict(provenance or {}),
        )
        if head.encoder is None:
            head.use_encoder(encoder)
        return cls(spec, encoder, head, baseline, clip, probe)

    # --- persistence --------------------------------------------------------------

    def save(self, directory: str | Path, dtype: torch.dtype | None = torch.float16) -> Path:
        """Write the bundle; weights in ``dtype`` (fp16 halves the size), in-memory model untouched."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        src = self.spec.encoder.source
        if self.clip_model is not None and src is not None and not _is_hub_id(src, directory):
            out = directory / src
            model = self.clip_model
            if dtype is not None and model.dtype != dtype:
                model = copy.deepcopy(model).to(dtype)
            model.save_pretrained(out)
            self.clip.tokenizer.save_pretrained(out)
            self.encoder.preprocess.save_pretrained(out)
        self.head.save_pretrained(directory / self.spec.head, dtype=dtype)
        if self.part_head is not None:
            # a part head started from the whole-frame head words the questions with its tokenizer: kept once
            own = self.part_head.tokenizer.get_vocab() != self.head.tokenizer.get_vocab()
            self.part_head.save_pretrained(directory / self.spec.part_view.head, dtype=dtype, tokenizer=own)
        if self.part_readout is not None:
            self.part_readout.save(directory / self.spec.part_view.readout, dtype=dtype)
        if self.probe is not None:
            self.probe.save(directory / "probe.safetensors")
        if self.anomaly is not None:
            self.anomaly.save(directory / self.spec.anomaly)
        spec = self.spec.model_copy(update={"encoder": EncoderSpec(source=src, config=self.encoder.config)})
        (directory / BUNDLE_FILE).write_text(spec.model_dump_json(indent=2))
        self.directory = directory
        return directory

    # --- scoring ------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    def encode(self, frames: Sequence[np.ndarray]) -> EncoderOutput:
        """Each frame through the encoder once: the input to every scorer."""
        return self.encoder.encode_frames(list(frames), pooled=self.clip is not None or self.probe is not None)

    def is_anomaly(self, question: Question | str) -> bool:
        """Whether the question is of kind "anomaly" (a question id: as the bundle's questions list it)."""
        if isinstance(question, str):
            question = next((q for q in self.spec.questions if q.id == question), None)  # type: ignore[assignment]
        return question is not None and question.kind == "anomaly"  # type: ignore[union-attr]

    def score_encoded(self, enc: EncoderOutput, questions: Sequence[Question | str], scorer: Scorer = "head") -> np.ndarray:
        """P(yes) (B, Q): the ``scorer`` answers the yes/no questions, the anomaly memory the anomaly ones."""
        memory_cols = [j for j, q in enumerate(questions) if self.is_anomaly(q)]
        if not memory_cols:
            return self._score_questions(enc, questions, scorer)
        scores = np.empty((len(enc), len(questions)), dtype=np.float32)
        scores[:, memory_cols] = self.anomaly_scores(enc)[:, None]
        rest = [j for j in range(len(questions)) if j not in memory_cols]
        if rest:
            scores[:, rest] = self._score_questions(enc, [questions[j] for j in rest], scorer)
        return scores

    def anomaly_scores(self, enc: EncoderOutput) -> np.ndarray:
        """How unlike the good parts each frame is, (B,) in [0, 1]; ValueError without an anomaly memory."""
        if self.anomaly is None:
            raise ValueError(f"bundle {self.model_id} has no anomaly memory for its anomaly questions: "
                             "fit one with `patchsight model fit-anomaly`")
        return self.anomaly.score(enc.feature_tokens).numpy()

    def _score_questions(self, enc: EncoderOutput, questions: Sequence[Question | str], scorer: Scorer) -> np.ndarray:
        if scorer == "head":
            scores = self.head.score(enc, questions)
        elif scorer == "part_head":
            if self.part_head is None:
                raise ValueError(f"bundle {self.model_id} has no part view")
            scores = self.part_head.score(enc, questions)
        elif scorer == "clip":
            if self.clip is None:
                raise ValueError(f"bundle {self.model_id} has no CLIP text tower")
            scores = self.clip.score(enc, questions)
        elif scorer == "probe":
            scores = self._probe_scores(enc, questions)
        else:
            raise ValueError(f"unknown scorer {scorer!r}")
        return scores.float().cpu().numpy()

    def score_frames(
        self, frames: Sequence[np.ndarray], questions: Sequence[Question | str], scorer: Scorer = "head",
        boxes: Sequence[Box | None] | None = None,
    ) -> np.ndarray:
        """P(yes) for every question of every frame, (B, Q) float32 in [0, 1].

        ``boxes``: the part's box on each frame (None: no part). With a part view, the head's
        score of a frame with a box comes from both views (``combine_views``).
        """
        if not frames:
            return np.zeros((0, len(questions)), dtype=np.float32)
        scores = self.score_encoded(self.encode(frames), questions, scorer)
        rows = [i for i, box in enumerate(boxes or ()) if box is not None]
        if scorer == "head" and self.part_head is not None and rows:
            views = self.part_views([frames[i] for i in rows], [boxes[i] for i in rows])
            scores[rows] = self.with_part_view(scores[rows], self.encode(views), questions)
        return scores

    def with_part_view(self, frame_scores: np.ndarray, part_views: EncoderOutput,
                       questions: Sequence[Question | str]) -> np.ndarray:
        """The whole-frame scores of some frames mixed with their encoded part views' (the part head's), per question.

        Anomaly questions keep their whole-frame scores (the memory holds whole frames' patches).
        """
        asked = [j for j, q in enumerate(questions) if not self.is_anomaly(q)]
        part = frame_scores.copy()
        if asked:
            part[:, asked] = self.part_view_scores(part_views, [questions[j] for j in asked])
        return combine_views(frame_scores, part, self.part_view_weights(questions))

    def part_view_scores(self, part_views: EncoderOutput, questions: Sequence[Question | str]) -> np.ndarray:
        """The part view's P(yes) (B, Q) for yes/no questions: the part head's, mixed in log-odds with the part
        readout's for the questions it was fitted for (``readout_scores``, ``readout_weights``)."""
        return self.with_readout(self._score_questions(part_views, questions, "part_head"), part_views, questions)

    def with_readout(self, head_scores: np.ndarray, part_views: EncoderOutput,
                     questions: Sequence[Question | str]) -> np.ndarray:
        """The part head's P(yes) of encoded part views mixed with the part readout's, per question (as they are
        without a readout)."""
        readout = self.readout_scores(part_views, questions)
        return head_scores if readout is None else combine_views(head_scores, readout, self.readout_weights(questions))

    def readout_scores(self, part_views: EncoderOutput, questions: Sequence[Question | str]) -> np.ndarray | None:
        """The part readout's P(yes) (B, Q) of encoded part views, 0.5 for a question it was not fitted for;
        None without a readout."""
        if self.part_readout is None:
            return None
        ids = _question_ids(questions)
        known = [j for j, q in enumerate(ids) if q in self.part_readout.question_ids]
        scores = np.full((len(part_views), len(ids)), 0.5, dtype=np.float32)
        if known:
            scores[:, known] = self.part_readout.scores(part_views.feature_tokens, [ids[j] for j in known]).cpu().numpy()
        return scores

    def readout_weights(self, questions: Sequence[Question | str]) -> np.ndarray:
        """The part readout's share of each question's part-view log-odds (0: the part head alone, 1: the readout
        alone); 0 for a question the readout was not fitted for, and for all of them without a readout."""
        if self.part_readout is None:
            return np.zeros(len(questions), dtype=np.float32)
        weights = self.spec.part_view.readout_weights
        ids = _question_ids(questions)
        return np.asarray([weights.get(q, 0.5) if q in self.part_readout.question_ids else 0.0 for q in ids],
                          dtype=np.float32)

    def part_view_weights(self, questions: Sequence[Question | str]) -> np.ndarray:
        """The part view's share of each question's log-odds (0: the whole frame alone, 1: the part view alone).

        An anomaly question reads the whole frame alone: the memory holds whole frames' patches.
        """
        weights = self.spec.part_view.weights if self.spec.part_view is not None else {}
        return np.asarray([0.0 if self.is_anomaly(q) else weights.get(qid, 0.5)
                           for q, qid in zip(questions, _question_ids(questions))], dtype=np.float32)

    def part_views(self, frames: Sequence[np.ndarray], boxes: Sequence[Box], scale: float = 1.0) -> list[np.ndarray]:
        """The part view of each frame: its part cut out around the box (the encoder resizes it).

        ``scale``: image pixels per frame pixel when the frames are reduced copies and the boxes in frame pixels.
        """
        margin = self.spec.part_view.margin if self.spec.part_view is not None else PART_MARGIN
        return [part_crop(frame, box, margin, scale) for frame, box in zip(frames, boxes)]

    def _probe_scores(self, enc: EncoderOutput, questions: Sequence[Question | str]) -> torch.Tensor:
        if self.probe is None:
            raise ValueError(f"bundle {self.model_id} has no linear probe")
        ids = _question_ids(questions)
        unknown = [i for i in ids if i not in self.probe.question_ids]
        if unknown:
            raise ValueError(f"the linear probe was not trained for questions {unknown}")
        cols = [self.probe.question_ids.index(i) for i in ids]
        return self.probe.predict(enc.image_embeds)[:, cols]

    def thresholds_for(self, questions: Sequence[Question]) -> np.ndarray:
        """The line's threshold where it sets one, else the bundle's, else the default."""
        out = []
        for q in questions:
            t = q.threshold if q.threshold is not None else self.spec.thresholds.get(q.id, self.spec.default_threshold)
            out.append(t)
        return np.asarray(out, dtype=np.float32)

    def part_thresholds_for(self, questions: Sequence[Question]) -> np.ndarray:
        """Part-verdict thresholds: the line's where it sets one, else the calibrated part threshold, else the frame one."""
        frame = self.thresholds_for(questions)
        if self.spec.parts is None:
            return frame
        return np.asarray([q.threshold if q.threshold is not None else self.spec.parts.thresholds.get(q.id, float(f))
                           for q, f in zip(questions, frame)], dtype=np.float32)

    @property
    def part_aggregate(self) -> PartAggregate:
        return self.spec.parts.aggregate if self.spec.parts is not None else "mean"

    def describe(self) -> dict[str, Any]:
        def count(module) -> int:
            return sum(p.numel() for p in module.parameters()) if module is not None else 0

        vision = self.encoder.vision.config
        return {
            "model_id": self.model_id,
            "directory": str(self.directory) if self.directory else None,
            "created_at": self.spec.created_at,
            "encoder": {
                "source": self.spec.encoder.source,
                "image_size": vision.image_size,
                "patch_size": vision.patch_size,
                "width": vision.hidden_size,
                "layers": vision.num_hidden_layers,
                "tokens_per_frame": self.encoder.num_tokens,
                **self.encoder.config.model_dump(),
                "parameters": count(self.encoder.vision),
            },
            "clip_baseline": self.clip is not None,
            "linear_probe": self.probe is not None,
            "head": {
                "backend": self.head.config.backend,
                "image_tokens": self.head.config.image_tokens,
                "question_aware": self.head.config.question_aware,
                "lm_width": self.head.body.config.hidden_size,
                "lm_layers": self.head.body.config.num_hidden_layers,
                "parameters": count(self.head.projector) + count(self.head.body),
            },
            "questions": [q.model_dump(mode="json", exclude_none=True) for q in self.spec.questions],
            "thresholds": self.spec.thresholds,
            "default_threshold": self.spec.default_threshold,
            "part_view": self.spec.part_view.model_dump(mode="json") if self.spec.part_view else None,
            "anomaly": None if self.anomaly is None else {
                "patches": len(self.anomaly.patches), **self.anomaly.config.model_dump(mode="json", exclude={"provenance"})},
            "parts": self.spec.parts.model_dump(mode="json", exclude={"calibration"}) if self.spec.parts else None,
            "provenance": self.spec.provenance,
            "device": str(self.encoder.device),
            "dtype": str(self.encoder.dtype).removeprefix("torch."),
        }


def _question_ids(questions: Sequence[Question | str]) -> list[str]:
    """Each question's id (a question may be given as its id)."""
    return [q if isinstance(q, str) else q.id for q in questions]


def combine_views(frame_scores: np.ndarray, part_scores: np.ndarray, weights: np.ndarray | float = 0.5) -> np.ndarray:
    """P(yes) from the whole-frame and the part view: their log-odds mixed, ``weights`` (per question) the part view's."""
    eps = 1e-6
    f = np.clip(frame_scores, eps, 1 - eps)
    p = np.clip(part_scores, eps, 1 - eps)
    logit = (1 - weights) * np.log(f / (1 - f)) + weights * np.log(p / (1 - p))
    return (1 / (1 + np.exp(-logit))).astype(np.float32)


def _is_hub_id(source: str, directory: Path) -> bool:
    """A relative folder name inside the bundle is local; "org/name" not present there is a hub id."""
    return "/" in source and not (directory / source).is_dir()


def load_bundle(path: str | Path, device: str | torch.device = "auto", dtype: torch.dtype | None = None) -> Bundle:
    """Load a bundle directory; never touches the network (hub ids come from the local HF cache)."""
    directory = Path(path)
    spec_file = directory / BUNDLE_FILE
    if not spec_file.is_file():
        raise BundleError(f"{directory} is not a model bundle (no {BUNDLE_FILE})")
    try:
        spec = BundleSpec.model_validate_json(spec_file.read_text())
    except ValueError as exc:
        raise BundleError(f"{spec_file} is invalid: {exc}") from None
    device = resolve_device(device)
    encoder = baseline = clip_model = None
    if spec.encoder.source is not None:
        local = directory / spec.encoder.source
        source = local if local.is_dir() else spec.encoder.source
        clip_model = load_clip(source, device, dtype, local_files_only=True)
        preprocess = FramePreprocessor.from_pretrained(local) if (local / "preprocessor_config.json").is_file() else None
        encoder = FrameEncoder.from_clip(clip_model, spec.encoder.config, preprocess)
        tokenizer = CLIPTokenizer.from_pretrained(str(source), local_files_only=True)
        baseline = ClipBaseline.from_clip(clip_model, encoder, tokenizer)
    head = MLLMHead.from_pretrained(directory / spec.head, encoder=encoder, device=device, dtype=dtype)
    if encoder is None:
        encoder = head.encoder
    probe = None
    if (directory / "probe.safetensors").is_file():
        probe = LinearProbe.load(directory / "probe.safetensors").to(device)
    part_head = part_readout = None
    if spec.part_view is not None:
        part_head = MLLMHead.from_pretrained(directory / spec.part_view.head, encoder=encoder, device=device,
                                             dtype=dtype, tokenizer_from=directory / spec.head / "lm")
        if spec.part_view.readout is not None:
            try:
                part_readout = PatchReadout.load(directory / spec.part_view.readout, device)
            except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: tensors of the wrong shapes
                raise BundleError(f"cannot load the part readout: {exc}") from None
    anomaly = None
    if spec.anomaly is not None:
        try:
            anomaly = AnomalyMemory.load(directory / spec.anomaly, device)
        except ValueError as exc:
            raise BundleError(str(exc)) from None
    return Bundle(spec, encoder, head, baseline, clip_model, probe, directory, part_head, anomaly, part_readout)


def bundle_from_llava(
    llava_source: str | Path,
    clip_source: str | Path,
    questions: Sequence[Question] = (),
    model_id: str | None = None,
    device: str | torch.device = "auto",
) -> Bundle:
    """A zero-shot bundle around a Hugging Face LLaVA checkpoint and the CLIP it was built on.

    The paper's pair is ``llava-hf/llava-1.5-7b-hf`` with ``openai/clip-vit-large-patch14-336``:
    LLaVA-1.5 kept that CLIP tower frozen, so one tower serves the CLIP baseline and the head
    and every frame is encoded once. Sources are hub ids or local folders; a hub id is fetched
    only where the environment allows it and is later read from the local Hugging Face cache.
    A local CLIP folder is copied into the bundle; a hub id is only named.
    """
    device = resolve_device(device)
    clip_model = load_clip(clip_source, device)
    preprocess = None
    if Path(clip_source).is_dir() and (Path(clip_source) / "preprocessor_config.json").is_file():
        preprocess = FramePreprocessor.from_pretrained(clip_source)
    tokenizer = CLIPTokenizer.from_pretrained(str(clip_source), **hub_kwargs(clip_source))
    # LLaVA-1.5 reads the penultimate layer's patch tokens: the encoder's default selection.
    encoder = FrameEncoder.from_clip(clip_model, EncoderConfig(), preprocess)
    head = MLLMHead.from_llava(llava_source, encoder=encoder, device=device)
    source = "encoder" if Path(clip_source).is_dir() else str(clip_source)
    return Bundle.create(
        encoder, head, model_id or f"llava:{Path(str(llava_source)).name}", clip=clip_model,
        clip_tokenizer=tokenizer, questions=questions, encoder_source=source,
        provenance={"made_by": "patchsight model from-llava", "llava": str(llava_source), "clip": str(clip_source),
                    "training": "none (zero-shot)"},
    )
