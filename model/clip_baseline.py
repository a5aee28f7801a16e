"""The CLIP baseline: CLIP's own text tower against its pooled image embedding.

Zero-shot, a yes/no question becomes two captions, a positive ("a photo of a
part with a scratch") and a negative ("a photo of a part without a scratch"); the
score is the softmax over the two image-text similarities at CLIP's logit scale,
taken for the positive. Captions come from ``Question.clip_positive`` /
``clip_negative`` or are derived from the question text.

``LinearProbe`` is the trained-head comparison: logistic regression per question
on the same pooled embedding.

Public API
----------
``ClipBaseline.from_clip(clip: CLIPModel, encoder: FrameEncoder, tokenizer) -> ClipBaseline``
``baseline.score(enc: EncoderOutput | image_embeds (B, P), questions) -> (B, Q) P(yes)``
``baseline.text_embeds(texts: list[str]) -> (N, P)`` normalised, cached per text
``prompts_for(question) -> (positive, negative)``
``clip_tokenizer(num_merges=None) -> CLIPTokenizer``  from open_clip's BPE file; fewer merges, smaller vocab
``LinearProbe(dim, question_ids)``; ``.fit(embeds, labels)``; ``.predict(embeds) -> (N, Q)``;
``.save(path)`` / ``LinearProbe.load(path)``
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPModel, CLIPTokenizer

from model.encoder import EncoderOutput, FrameEncoder

# open_clip's SimpleTokenizer uses the first 49152 - 256 - 2 merges of its BPE file.
CLIP_MERGES = 49152 - 256 - 2


def _byte_symbols() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map, in CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return {b: table[b] for b in printable + [b for b in range(256) if b not in printable]}


def clip_tokenizer(num_merges: int | None = None) -> CLIPTokenizer:
    """CLIP's tokenizer, built from the BPE file open_clip ships.

    The vocabulary is laid out as CLIP's: 256 byte symbols, the same with ``</w>``,
    one token per merge, then ``<|startoftext|>``, ``<|endoftext|>``. Keeping only
    the first ``num_merges`` merges gives a valid tokenizer with a smaller
    vocabulary (512 + num_merges + 2), for small text towers.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("open_clip (which carries CLIP's BPE vocabulary) is not installed")
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + min(num_merges or CLIP_MERGES, CLIP_MERGES)]]
    symbols = list(_byte_symbols().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


_THERE = re.compile(r"^(is|are) there (any |an? |some )?(.+?)\??$", re.I)
_BE = re.compile(r"^(is|are) (the .+?|this .+?|it) (.+?)\??$", re.I)
_HAVE = re.compile(r"^(does|do) (the .+?|this .+?|it) (?:have|contain|show) (.+?)\??$", re.I)


def prompts_for(question) -> tuple[str, str]:
    """(positive, negative) captions for a question: its own, or derived from its text."""
    pos = getattr(question, "clip_positive", None)
    neg = getattr(question, "clip_negative", None)
    if pos and neg:
        return pos, neg
    text = (question if isinstance(question, str) else question.text).strip()
    if m := _THERE.match(text):
        article, thing = (m.group(2) or "").strip(), m.group(3)
        article = "" if article in ("", "any") else article + " "
        derived = f"a photo with {article}{thing}", f"a photo with no {thing}"
    elif m := _HAVE.match(text):
        subject, thing = m.group(2), m.group(3)
        derived = f"a photo of {subject} with {thing}", f"a photo of {subject} without {thing}"
    elif m := _BE.match(text):
        subject, state = m.group(2), m.group(3)
        derived = f"a photo where {subject} {m.group(1).lower()} {state}", f"a photo where {subject} {m.group(1).lower()} not {state}"
    else:
        derived = f"a photo. {text} yes", f"a photo. {text} no"
    return pos or derived[0], neg or derived[1]


class ClipBaseline(nn.Module):
    def __init__(
        self,
        encoder: FrameEncoder,
        text_model: nn.Module,
        text_projection: nn.Linear,
        logit_scale: torch.Tensor,
        tokenizer,
    ) -> None:
        super().__init__()
        if encoder.projection is None:
            raise ValueError("the CLIP baseline needs an encoder with CLIP's visual projection")
        object.__setattr__(self, "encoder", encoder)  # shared; not a submodule
        self.text_model = text_model
        self.text_projection = text_projection
        self.register_buffer("logit_scale", logit_scale.detach().clone().reshape(()), persistent=False)
        self.tokenizer = tokenizer
        self._text_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def from_clip(cls, clip: CLIPModel, encoder: FrameEncoder, tokenizer) -> "ClipBaseline":
        if encoder.vision is not clip.vision_model:
            raise ValueError("the encoder must be this CLIP's vision tower (one encoder serves every scorer)")
        return cls(encoder, clip.text_model, clip.text_projection, clip.logit_scale, tokenizer)

    @property
    def device(self) -> torch.device:
        return self.text_projection.weight.device

    def text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised text embeddings (N, P), cached: line questions repeat every frame."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            max_len = self.text_model.config.max_position_embeddings
            batch = self.tokenizer(missing, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            with torch.inference_mode():
                out = self.text_model(
                    input_ids=batch["input_ids"].to(self.device),
                    attention_mask=batch["attention_mask"].to(self.device),
                )
                emb = F.normalize(self.text_projection(out.pooler_output).float(), dim=-1)
            for t, e in zip(missing, emb):
                self._text_cache[t] = e
        return torch.stack([self._text_cache[t] for t in texts])

    def logits(self, image: EncoderOutput | torch.Tensor, questions: Sequence) -> torch.Tensor:
        """(B, Q, 2) scaled similarities with the [positive, negative] captions."""
        embeds = image.image_embeds if isinstance(image, EncoderOutput) else image
        if embeds is None:
            raise ValueError("this encoder output has no pooled image embedding")
        with torch.inference_mode():
            img = F.normalize(embeds.to(self.device).float(), dim=-1)
            pairs = [prompts_for(q) for q in questions]
            text = self.text_embeds([t for pair in pairs for t in pair]).view(len(pairs), 2, -1)
            return self.logit_scale.float().exp() * torch.einsum("bd,qkd->bqk", img, text)

    def score(self, image: EncoderOutput | torch.Tensor, questions: Sequence) -> torch.Tensor:
        """P(yes): softmax over the two captions, (B, Q) float32."""
        return self.logits(image, questions).softmax(dim=-1)[..., 0]


class LinearProbe(nn.Module):
    """One logistic regression per question on the pooled CLIP embedding."""

    def __init__(self, dim: int, question_ids: Sequence[str]) -> None:
        super().__init__()
        self.question_ids = list(question_ids)
        self.weight = nn.Parameter(torch.zeros(len(self.question_ids), dim))
        self.bias = nn.Parameter(torch.zeros(len(self.question_ids)))

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """Logits (N, Q) from L2-normalised embeddings."""
        x = F.normalize(embeds.float(), dim=-1).to(self.weight.device)
        return x @ self.weight.T + self.bias

    def fit(self, embeds: torch.Tensor, labels: torch.Tensor, l2: float = 1e-3, steps: int = 200) -> float:
        """Full-batch L-BFGS on BCE (+ l2 on weights); labels (N, Q), negatives ignored. Returns the final loss."""
        x = F.normalize(embeds.detach().clone().float(), dim=-1)
        y = torch.as_tensor(labels, dtype=torch.float32).clone()
        keep = y >= 0
        # CLIP embeddings are normalised: a larger scale lets the probe be sharp without huge l2 cost.
        x = x * x.shape[1] ** 0.5
        opt = torch.optim.LBFGS([self.weight, self.bias], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            logits = x @ self.weight.T + self.bias
            loss = F.binary_cross_entropy_with_logits(logits[keep], y[keep]) + l2 * self.weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            loss = opt.step(closure)
        with torch.no_grad():  # fold the input scale into the weights so forward() takes plain embeddings
            self.weight.mul_(x.shape[1] ** 0.5)
        return float(loss.detach())

    def predict(self, embeds: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(self(embeds))

    def save(self, path: str | Path) -> None:
        state = {"weight": self.weight.detach().contiguous(), "bias": self.bias.detach().contiguous()}
        save_file(state, str(path), metadata={"question_ids": json.dumps(self.question_ids)})

    @classmethod
    def load(cls, path: str | Path) -> "LinearProbe":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            ids = json.loads(f.metadata()["question_ids"])
        state = load_file(str(path))
        probe = cls(state["weight"].shape[1], ids)
        probe.load_state_dict(state)
        return probe
