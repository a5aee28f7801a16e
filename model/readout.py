"""A linear readout of the part view's patch tokens: one logistic regression per question, each patch at its place.

The part head reads the part view's patch tokens through a language model. A defect that sits
in one patch of 64 at a known place (a missing screw leaves one corner empty) is in those tokens,
but the head reads it faintly: on the calibration seeds its part AUROC for missing screws was
0.83 from the part view. A linear map from every patch token, at its position, to each
question's log-odds reads it directly (docs/evaluation.md, "v21"). The bundle mixes the two in
log-odds, per question (``PartViewSpec.readout_weights``, chosen by ``patchsight model
calibrate``); the readout answers only the questions it was fitted for.

The tokens are the encoder's feature tokens of the part view (``EncoderOutput.feature_tokens``,
P patches x D), standardised per channel with the training frames' mean and deviation, then
flattened: patch i has weights of its own, so where a thing is counts as much as what it is.
``patchsight model fit-readout`` fits it (``training.readout``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

READOUT_FILE = "part-readout.safetensors"
SCORE_ROWS = 1024  # frames scored at once


class PatchReadout(nn.Module):
    """Logits (B, Q) from patch tokens (B, P, D): per question a weight for every channel of every patch."""

    def __init__(self, patches: int, dim: int, question_ids: Sequence[str]) -> None:
        super().__init__()
        self.question_ids = list(question_ids)
        self.weight = nn.Parameter(torch.zeros(len(self.question_ids), patches * dim))
        self.bias = nn.Parameter(torch.zeros(len(self.question_ids)))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @property
    def shape(self) -> tuple[int, int]:
        """(patches, channels) of the tokens it reads."""
        dim = self.mean.shape[0]
        return self.weight.shape[1] // dim, dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tuple(tokens.shape[1:]) != self.shape:
            raise ValueError(f"the readout reads {self.shape[0]} patches of {self.shape[1]} channels, "
                             f"got tokens of shape {tuple(tokens.shape)}: another encoder or input size")
        x = (tokens.to(self.weight.device, torch.float32) - self.mean) / self.std
        return x.flatten(1) @ self.weight.T + self.bias

    def scores(self, tokens: torch.Tensor, question_ids: Sequence[str]) -> torch.Tensor:
        """P(yes) (B, len(question_ids)) for questions it was fitted for; ValueError for any other.

        ``tokens`` are read ``SCORE_ROWS`` frames at a time: a float16 memory map of a whole set stays one.
        """
        unknown = [q for q in question_ids if q not in self.question_ids]
        if unknown:
            raise ValueError(f"the part readout was not fitted for questions {unknown}")
        cols = [self.question_ids.index(q) for q in question_ids]
        with torch.no_grad():
            chunks = [torch.sigmoid(self(tokens[s : s + SCORE_ROWS])[:, cols]) for s in range(0, len(tokens), SCORE_ROWS)]
        return torch.cat(chunks) if chunks else torch.zeros(0, len(cols), device=self.weight.device)

    def fit(self, tokens: torch.Tensor, labels: torch.Tensor, epochs: int = 4, lr: float = 1e-3,
            weight_decay: float = 1e-3, batch: int = 256, seed: int = 0) -> list[float]:
        """AdamW on the BCE of every labelled (frame, question), each question's positives weighted up to its negatives.

        ``tokens`` (N, P, D), any float dtype (read a batch at a time: a float16 memory map stays one);
        ``labels`` (N, Q) 1 / 0, -1 where unknown. Returns the mean loss of each epoch.
        """
        y = torch.as_tensor(labels, dtype=torch.float32)
        known = y >= 0
        positives = ((y == 1) & known).sum(0).float()
        negatives = ((y == 0) & known).sum(0).float()
        if (positives == 0).any() or (negatives == 0).any():
            missing = [q for q, p, n in zip(self.question_ids, positives, negatives) if p == 0 or n == 0]
            raise ValueError(f"questions {missing} have no yes or no frames to fit the readout on")
        with torch.no_grad():  # the channels' scale, from a sample of frames (all of them would copy the set)
            sample = tokens[torch.randperm(len(tokens), generator=torch.Generator().manual_seed(seed))[:4096]].float()
            self.mean.copy_(sample.mean((0, 1)))
            self.std.copy_(sample.std((0, 1)) + 1e-4)
        pos_weight = negatives / positives
        opt = torch.optim.AdamW([self.weight, self.bias], lr=lr, weight_decay=weight_decay)
        generator = torch.Generator().manual_seed(seed)
        losses = []
        with torch.enable_grad():
            for _ in range(epochs):
                total, seen = 0.0, 0
                for rows in torch.randperm(len(tokens), generator=generator).split(batch):
                    mask = known[rows]
                    if not mask.any():  # a batch that answers nothing (sparse labels) teaches nothing
                        continue
                    logits = self(tokens[rows])
                    loss = F.binary_cross_entropy_with_logits(
                        logits, y[rows].clamp(min=0), pos_weight=pos_weight, reduction="none")[mask].mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(rows)
                    seen += len(rows)
                losses.append(total / max(seen, 1))
        return losses

    def save(self, path: str | Path, dtype: torch.dtype | None = torch.float16) -> None:
        """The weights in ``dtype`` (float16 halves the bundle's share: 8 questions are 0.2 MB), the rest in float32."""
        state = {name: t.detach().contiguous().cpu() for name, t in
                 (("weight", self.weight), ("bias", self.bias), ("mean", self.mean), ("std", self.std))}
        if dtype is not None:
            state["weight"] = state["weight"].to(dtype)
        save_file(state, str(path), metadata={"question_ids": json.dumps(self.question_ids)})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "PatchReadout":
        """The readout saved at ``path``; ValueError when the file is not one (OSError when it cannot be read)."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                ids = json.loads((f.metadata() or {})["question_ids"])
            state = load_file(str(path))
        except (SafetensorError, KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a part readout: {exc!r}") from None
        dim = state["mean"].shape[0]
        readout = cls(state["weight"].shape[1] // dim, dim, ids)
        readout.load_state_dict(state)
        return readout.to(device)
