"""A memory of good parts' patch tokens: how unlike the good parts a frame is (PatchCore).

For lines that have good parts and almost no defects yet. The memory holds patch tokens of good
frames from the bundle's frozen encoder (its ``feature_tokens``), subsampled to a coreset by
greedy k-center selection (Roth et al., "Towards Total Recall in Industrial Anomaly Detection",
2022), so that the few kept patches cover all the others. A frame's raw score is the largest,
over its patches, of the mean distance to the patch's ``k`` nearest patches in the memory: one
patch unlike any good patch is enough. Raw distances have no fixed scale, so they are mapped to
[0, 1] by the raw scores of good frames the memory was not built from (``Normalisation``):
``sigmoid((raw - median) / scale - z_at_half)``, where ``scale`` is the normalised median absolute
deviation. A score of 0.5 is a frame ``z_at_half`` robust standard deviations above the good
frames' median; thresholds and calibration then work as for any other question.

Layout in a bundle (``anomaly/``): ``memory.safetensors`` (the patches, (M, D)) and
``anomaly.json`` (``AnomalyConfig``).

Public API
----------
``AnomalyMemory.fit(good_tokens, coreset, k, seed) -> AnomalyMemory``  (normalised by ``normalised``)
``memory.raw_scores(feature_tokens (B, T, D)) -> torch.Tensor (B,)``
``memory.score(feature_tokens) -> torch.Tensor (B,) in [0, 1]``
``memory.save(directory)``, ``AnomalyMemory.load(directory, device)``
``coreset_indices(patches, n, seed) -> torch.Tensor``
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file

MEMORY_FILE = "memory.safetensors"
CONFIG_FILE = "anomaly.json"
# Distances are computed this many query patches at a time: (chunk x M) floats, a few MB at most.
QUERY_CHUNK = 4096
# PatchCore selects its coreset on a random projection of the patches to this many dimensions.
PROJECTION_DIMS = 128


class Normalisation(BaseModel):
    """Raw score -> [0, 1], from the raw scores of good frames the memory was not built from."""

    model_config = ConfigDict(extra="forbid")

    median: float
    scale: float = Field(gt=0.0, description="1.4826 x the median absolute deviation: a robust standard deviation")
    z_at_half: float = Field(3.0, description="a frame this many robust standard deviations above the good "
                             "frames' median scores 0.5")
    frames: int = Field(ge=1, description="how many good frames these were measured on")


class AnomalyConfig(BaseModel):
    """anomaly.json: how the memory scores, and where it came from."""

    model_config = ConfigDict(extra="forbid")

    format: int = 1
    k: int = Field(1, ge=1, description="nearest memory patches averaged per patch (PatchCore: 1)")
    normalisation: Normalisation | None = None
    provenance: dict = {}


class AnomalyMemory:
    def __init__(self, patches: torch.Tensor, config: AnomalyConfig) -> None:
        if patches.ndim != 2 or not len(patches):
            raise ValueError(f"an anomaly memory needs patches (M, D), got shape {tuple(patches.shape)}")
        if config.k > len(patches):
            raise ValueError(f"k={config.k} nearest patches asked of a memory of {len(patches)}")
        self.patches = patches
        self.config = config

    @classmethod
    def fit(cls, good_tokens: torch.Tensor, coreset: int, k: int = 1, seed: int = 0) -> "AnomalyMemory":
        """The memory of good frames' patch tokens (N, T, D), at most ``coreset`` of them kept; not yet normalised."""
        patches = good_tokens.reshape(-1, good_tokens.shape[-1]).float()
        if not len(patches):
            raise ValueError("no good patches to remember")
        if len(patches) > coreset:
            patches = patches[coreset_indices(patches, coreset, seed)]
        return cls(patches.contiguous(), AnomalyConfig(k=k))

    def normalised(self, good_raw: torch.Tensor, z_at_half: float = 3.0) -> "AnomalyMemory":
        """This memory with its scale set by the raw scores of held-out good frames."""
        raw = good_raw.double()
        if not len(raw):
            raise ValueError("no good frames to set the score's scale")
        median = float(raw.median())
        scale = 1.4826 * float((raw - median).abs().median())
        # nearly identical good frames: fall back to the spread's standard deviation, then to a tiny positive scale
        scale = scale if scale > 1e-9 else float(raw.std()) if len(raw) > 1 and float(raw.std()) > 1e-9 else 1e-6
        norm = Normalisation(median=median, scale=scale, z_at_half=z_at_half, frames=len(raw))
        return AnomalyMemory(self.patches, self.config.model_copy(update={"normalisation": norm}))

    def to(self, device: torch.device | str) -> "AnomalyMemory":
        return AnomalyMemory(self.patches.to(device), self.config)

    def raw_scores(self, feature_tokens: torch.Tensor) -> torch.Tensor:
        """Per frame, the largest over its patches of the mean distance to the ``k`` nearest memory patches, (B,)."""
        b, t, d = feature_tokens.shape
        if d != self.patches.shape[1]:
            raise ValueError(f"the anomaly memory holds {self.patches.shape[1]}-wide patches, the encoder gives {d}: "
                             "fit it again with this bundle's encoder (`patchsight model fit-anomaly`)")
        queries = feature_tokens.reshape(b * t, d).to(self.patches.device, torch.float32)
        nearest = torch.empty(b * t, device=self.patches.device)
        with torch.inference_mode():
            for s in range(0, len(queries), QUERY_CHUNK):
                dist = torch.cdist(queries[s : s + QUERY_CHUNK], self.patches)
                nearest[s : s + QUERY_CHUNK] = dist.topk(self.config.k, dim=1, largest=False).values.mean(dim=1)
        return nearest.reshape(b, t).amax(dim=1).cpu()

    def score(self, feature_tokens: torch.Tensor) -> torch.Tensor:
        """How unlike the good parts each frame is, (B,) in [0, 1]."""
        norm = self.config.normalisation
        if norm is None:
            raise ValueError("the anomaly memory has no normalisation: it was not fitted to completion")
        z = (self.raw_scores(feature_tokens).double() - norm.median) / norm.scale
        return torch.sigmoid(z - norm.z_at_half).float()

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"patches": self.patches.detach().to("cpu", torch.float16).contiguous()},
                  str(directory / MEMORY_FILE))
        (directory / CONFIG_FILE).write_text(self.config.model_dump_json(indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> "AnomalyMemory":
        directory = Path(directory)
        try:
            config = AnomalyConfig.model_validate_json((directory / CONFIG_FILE).read_text())
            patches = load_file(str(directory / MEMORY_FILE))["patches"]
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{directory} is not a readable anomaly memory: {exc}") from None
        return cls(patches.to(device, torch.float32), config)


def coreset_indices(patches: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` rows of ``patches`` chosen by greedy k-center on a random projection (PatchCore's coreset).

    Each pick is the patch farthest from every patch picked so far, so rare good patches (an
    edge, a label corner) are kept and the memory does not call them anomalies.
    """
    n = min(n, len(patches))
    generator = torch.Generator().manual_seed(seed)
    x = patches.float()
    if x.shape[1] > PROJECTION_DIMS:
        x = x @ torch.randn(x.shape[1], PROJECTION_DIMS, generator=generator) / PROJECTION_DIMS ** 0.5
    chosen = torch.empty(n, dtype=torch.long)
    chosen[0] = int(torch.randint(len(x), (1,), generator=generator))
    farthest = torch.linalg.vector_norm(x - x[chosen[0]], dim=1)
    for i in range(1, n):
        chosen[i] = int(farthest.argmax())
        farthest = torch.minimum(farthest, torch.linalg.vector_norm(x - x[chosen[i]], dim=1))
    return chosen
