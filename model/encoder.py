"""The frozen CLIP vision encoder that every scorer reads.

One ``FrameEncoder`` instance serves the CLIP baseline and the MLLM head, so
every comparison between them is made on the same encoder and each frame is
encoded once, whatever the number of questions.

Public API
----------
``EncoderConfig(feature_layer=-2, feature_select="patch", position_embeddings=True)``
    Which hidden layer feeds the head and which of its tokens: ``"patch"`` (patch
    tokens without CLS, as LLaVA does it), ``"cls"``, or ``"all"`` (every token of the
    layer, CLS first: LLaVA's "full" strategy; bundles written before say ``"cls_patch"``).
    ``position_embeddings=False`` zeroes the tower's position embeddings (ablation).
``load_clip(source, device="auto", dtype=None) -> CLIPModel``
    A CLIP checkpoint from a local directory (never touches the network) or a hub id.
``FrameEncoder.from_clip(clip, config) / FrameEncoder.from_pretrained(source, config)``
``FrameEncoder.from_vision_tower(vision: CLIPVisionModel, config)``  (e.g. ``llava.model.vision_tower``)
``encoder(pixel_values) -> EncoderOutput(image_embeds, feature_tokens, cls_token)``
    Runs under ``torch.inference_mode``: the outputs are inference tensors; call
    ``.clone()`` on them outside inference mode before using them in autograd.
``encoder.encode_frames(frames: list[np.ndarray BGR uint8]) -> EncoderOutput``
``encoder.set_position_embeddings(enabled: bool)`` / ``with encoder.without_position_embeddings(): ...``
``FramePreprocessor.from_pretrained(dir)`` / ``FramePreprocessor(image_size, mean, std)``
    cv2 resize (shortest edge, bicubic) + center crop + normalize, matching
    ``CLIPImageProcessor``'s configuration, straight from BGR uint8 arrays. In two steps
    for the worker: ``crop(frame)`` (uint8 square, per frame) and ``normalise(crops)`` (a batch,
    on any device); ``reduction_for(width, height)``: how much smaller a JPEG may be decoded;
    ``crop_tensor(frame)``: ``crop`` for an RGB (3, H, W) uint8 tensor a GPU decoded, on its device.
``compact_clip_config(...) -> CLIPConfig``  the small from-scratch CLIP used by the default bundle.
``resolve_device("auto") -> torch.device``, ``default_dtype(device) -> torch.dtype``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Iterator, Literal

import cv2
import numpy as np
import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

# Names of other days, still read from the bundles that carry them: old name -> name now.
OLD_FEATURE_SELECT = {"cls_patch": "all"}
FeatureSelect = Annotated[
    Literal["patch", "cls", "all"],
    BeforeValidator(lambda value: OLD_FEATURE_SELECT.get(value, value) if isinstance(value, str) else value),
]

# OpenAI CLIP's normalisation, used by every CLIP checkpoint patchsight knows.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU supports it, fp16 on other accelerators, fp32 on CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def hub_kwargs(source: str | Path) -> dict:
    """``from_pretrained`` options: a local directory never touches the network.

    A hub id is fetched only where the environment allows it (HF_HUB_OFFLINE unset).
    """
    offline = Path(source).is_dir() or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    return {"local_files_only": offline}


class EncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feature_layer: int = -2  # index into hidden states (0 = embeddings), as LLaVA's vision_feature_layer
    feature_select: FeatureSelect = "patch"
    position_embeddings: bool = True  # False zeroes them: the paper's decomposition ablation


@dataclass
class EncoderOutput:
    """What one pass of the encoder gives every scorer.

    image_embeds: (B, P) CLIP's pooled, projected image embedding (None when the
        tower has no projection, e.g. built from a LLaVA vision tower alone).
    feature_tokens: (B, T, D) tokens of ``feature_layer`` chosen by ``feature_select`` (the patch
        tokens by default; with ``"all"`` the CLS token first, then the patch tokens).
    cls_token: (B, D) the CLS token of ``feature_layer`` (for CLS-only heads).
    """

    image_embeds: torch.Tensor | None
    feature_tokens: torch.Tensor
    cls_token: torch.Tensor

    def __len__(self) -> int:
        return self.feature_tokens.shape[0]

    def to(self, *args, **kwargs) -> "EncoderOutput":
        emb = None if self.image_embeds is None else self.image_embeds.to(*args, **kwargs)
        return EncoderOutput(emb, self.feature_tokens.to(*args, **kwargs), self.cls_token.to(*args, **kwargs))

    def select(self, index) -> "EncoderOutput":
        emb = None if self.image_embeds is None else self.image_embeds[index]
        return EncoderOutput(emb, self.feature_tokens[index], self.cls_token[index])

    @staticmethod
    def cat(parts: list["EncoderOutput"]) -> "EncoderOutput":
        emb = None if parts[0].image_embeds is None else torch.cat([p.image_embeds for p in parts])
        return EncoderOutput(
            emb, torch.cat([p.feature_tokens for p in parts]), torch.cat([p.cls_token for p in parts])
        )


class FramePreprocessor:
    """BGR uint8 frames -> normalised pixel tensors, as CLIPImageProcessor does it.

    Resize so the shortest edge is ``resize_to`` (bicubic), center-crop
    ``image_size`` square, scale to [0, 1], normalise. cv2 instead of PIL because
    frames arrive as BGR arrays and this runs per frame on the worker's hot path.
    """

    def __init__(
        self,
        image_size: int,
        mean: tuple[float, ...] = CLIP_MEAN,
        std: tuple[float, ...] = CLIP_STD,
        resize_to: int | None = None,
    ) -> None:
        self.image_size = image_size
        self.resize_to = resize_to or image_size
        # saved as given: recomputed from the float32 arrays below, a bundle's config would change on every save
        self.image_mean, self.image_std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.mean = np.asarray(mean, dtype=np.float32) * 255.0
        self.inv_std = 1.0 / (np.asarray(std, dtype=np.float32) * 255.0)
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # mean, 1/std per device

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "FramePreprocessor":
        cfg = json.loads((Path(directory) / "preprocessor_config.json").read_text())
        crop = cfg.get("crop_size") or cfg.get("size")
        crop = crop["height"] if isinstance(crop, dict) and "height" in crop else crop
        crop = crop.get("shortest_edge") if isinstance(crop, dict) else crop
        size = cfg.get("size", crop)
        size = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
        return cls(int(crop), tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD)), int(size))

    def to_processor_config(self) -> dict:
        """The equivalent CLIPImageProcessor configuration (saved in bundles)."""
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": self.resize_to},
            "resample": 3,
            "do_center_crop": True,
            "crop_size": {"height": self.image_size, "width": self.image_size},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_convert_rgb": True,
        }

    def save_pretrained(self, directory: str | Path) -> None:
        path = Path(directory) / "preprocessor_config.json"
        path.write_text(json.dumps(self.to_processor_config(), indent=2))

    def __call__(self, frames: list[np.ndarray]) -> torch.Tensor:
        """BGR uint8 frames -> (N, 3, S, S) float32 normalised pixels: ``normalise(crop(...))``."""
        crops = np.empty((len(frames), self.image_size, self.image_size, 3), dtype=np.uint8)
        for i, frame in enumerate(frames):
            crops[i] = self.crop(frame)
        return self.normalise(torch.from_numpy(crops))

    def reduction_for(self, width: int, height: int) -> int:
        """The largest JPEG decode reduction (1, 2, 4 or 8) that keeps the shortest edge at or above ``resize_to``.

        A frame at least twice the encoder's size can be decoded at a fraction of its size
        (libjpeg scales in the DCT, before any pixel exists) and resized from there.
        """
        factor = 1
        while factor < 8 and min(width, height) // (2 * factor) >= self.resize_to:
            factor *= 2
        return factor

    def crop(self, frame: np.ndarray, reduction: float = 1.0) -> np.ndarray:
        """One BGR uint8 frame -> its (S, S, 3) RGB uint8 square: resized so the shortest edge is ``resize_to``, centre-cropped.

        Kept uint8 until a whole batch is normalised at once (``normalise``), on the model's device.
        ``reduction``: how much smaller ``frame`` is than the picture it was decoded from (a JPEG
        decoded at 1/2 size: 2); the interpolation is chosen by the scale from that picture, so a
        reduced decode is resized as the full one would have been.
        """
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected a BGR uint8 frame (H, W, 3), got {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        nh, nw, scale = self._resized(h, w)
        if (nh, nw) != (h, w):
            # INTER_AREA when shrinking a lot avoids the aliasing bicubic gives on big camera frames.
            interp = cv2.INTER_AREA if scale / reduction < 0.5 else cv2.INTER_CUBIC
            frame = cv2.resize(frame, (nw, nh), interpolation=interp)
        top, left = (nh - self.image_size) // 2, (nw - self.image_size) // 2
        # contiguous, so a batch is stacked with plain copies where the model thread waits for it; cvtColor
        # swaps the channels in one vectorised pass (numpy's copy of a reversed channel axis took 5x longer)
        return cv2.cvtColor(frame[top : top + self.image_size, left : left + self.image_size], cv2.COLOR_BGR2RGB)

    def crop_tensor(self, frame: torch.Tensor) -> torch.Tensor:
        """One (3, H, W) RGB uint8 frame, decoded at full size on any device -> its (S, S, 3) RGB uint8 square there.

        ``crop`` for a frame a GPU decoded (the worker's batched nvJPEG path): the same size, crop and
        choice of interpolation, with torch's kernels: ``area`` (box averaging) where ``crop`` takes
        INTER_AREA, bicubic (the same a=-0.75 kernel) where it takes INTER_CUBIC.
        """
        if frame.ndim != 3 or frame.shape[0] != 3 or frame.dtype != torch.uint8:
            raise ValueError(f"expected an RGB uint8 frame (3, H, W), got {frame.dtype} {tuple(frame.shape)}")
        h, w = frame.shape[1:]
        nh, nw, scale = self._resized(h, w)
        top, left = (nh - self.image_size) // 2, (nw - self.image_size) // 2
        if (nh, nw) == (h, w):
            square = frame[:, top : top + self.image_size, left : left + self.image_size]
        else:
            mode = "area" if scale < 0.5 else "bicubic"
            resized = nn.functional.interpolate(frame[None].float(), size=(nh, nw), mode=mode)[0]
            square = resized[:, top : top + self.image_size, left : left + self.image_size].round_().clamp_(0, 255)
        return square.to(torch.uint8).permute(1, 2, 0).contiguous()

    def _resized(self, h: int, w: int) -> tuple[int, int, float]:
        """(height, width) a frame is resized to before the centre crop, and the scale to it."""
        scale = self.resize_to / min(h, w)
        return max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale)), scale

    def normalise(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) RGB uint8 crops (on any device) -> (N, 3, S, S) float32 normalised pixels on that device."""
        if crops.device not in self._constants:  # copied to a GPU once, not once per batch
            self._constants[crops.device] = (torch.from_numpy(self.mean).to(crops.device).view(1, 3, 1, 1),
                                             torch.from_numpy(self.inv_std).to(crops.device).view(1, 3, 1, 1))
        mean, inv_std = self._constants[crops.device]
        pixels = crops.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        return (pixels - mean) * inv_std


def compact_clip_config(
    image_size: int = 128,
    patch_size: int = 16,
    vision_width: int = 192,
    vision_layers: int = 6,
    vision_heads: int = 3,
    text_width: int = 128,
    text_layers: int = 4,
    text_heads: int = 2,
    text_vocab_size: int = 49408,
    text_max_positions: int = 32,
    projection_dim: int = 128,
) -> CLIPConfig:
    """A small CLIP for the default bundle: trained from scratch on synthetic frames."""
    vision = dict(
        image_size=image_size, patch_size=patch_size, hidden_size=vision_width,
        intermediate_size=4 * vision_width, num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads, projection_dim=projection_dim,
    )
    text = dict(
        vocab_size=text_vocab_size, hidden_size=text_width, intermediate_size=4 * text_width,
        num_hidden_layers=text_layers, num_attention_heads=text_heads,
        max_position_embeddings=text_max_positions, projection_dim=projection_dim,
        # CLIPTokenizer puts <|startoftext|>, <|endoftext|> last in its vocabulary.
        bos_token_id=text_vocab_size - 2, eos_token_id=text_vocab_size - 1, pad_token_id=text_vocab_size - 1,
    )
    return CLIPConfig(vision_config=vision, text_config=text, projection_dim=projection_dim)


def load_clip(
    source: str | Path,
    device: str | torch.device = "auto",
    dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
) -> CLIPModel:
    """A CLIP checkpoint (vision + text towers) in eval mode with grads off.

    ``local_files_only=None`` decides from the source (see ``hub_kwargs``).
    """
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    kwargs = hub_kwargs(source) if local_files_only is None else {"local_files_only": local_files_only}
    clip = CLIPModel.from_pretrained(str(source), dtype=dtype, **kwargs)
    return clip.to(device).eval().requires_grad_(False)


class FrameEncoder(nn.Module):
    """A frozen CLIP vision tower returning the pooled embedding and the head's tokens."""

    def __init__(
        self,
        vision: CLIPVisionModel,
        projection: nn.Linear | None,
        config: EncoderConfig | None = None,
        preprocess: FramePreprocessor | None = None,
    ) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        self.vision = vision  # shared, not copied: a LLaVA head may own the same module
        self.projection = projection
        self.preprocess = preprocess or FramePreprocessor(vision.config.image_size)
        n_layers = vision.config.num_hidden_layers
        layer = self.config.feature_layer
        # hidden_states[i] is the output of layer i (0 is the embeddings), as in transformers.
        self.feature_index = layer if layer >= 0 else n_layers + 1 + layer
        if not 0 <= self.feature_index <= n_layers:
            raise ValueError(f"feature_layer {layer} out of range for a {n_layers}-layer tower")
        self._saved_positions: torch.Tensor | None = None
        self.eval().requires_grad_(False)
        if not self.config.position_embeddings:
            self.set_position_embeddings(False)

    # --- construction -----------------------------------------------------------

    @classmethod
    def from_clip(
        cls, clip: CLIPModel, config: EncoderConfig | None = None, preprocess: FramePreprocessor | None = None
    ) -> "FrameEncoder":
        return cls(clip.vision_model, clip.visual_projection, config, preprocess)

    @classmethod
    def from_vision_tower(
        cls, vision: CLIPVisionModel, config: EncoderConfig | None = None, preprocess: FramePreprocessor | None = None
    ) -> "FrameEncoder":
        """An encoder around an existing tower (e.g. ``llava.model.vision_tower``); no pooled projection."""
        return cls(vision, None, config, preprocess)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        config: EncoderConfig | None = None,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
    ) -> "FrameEncoder":
        clip = load_clip(source, device, dtype)
        preprocess = None
        if (Path(source) / "preprocessor_config.json").is_file():
            preprocess = FramePreprocessor.from_pretrained(source)
        return cls.from_clip(clip, config, preprocess)

    # --- properties -------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.vision.embeddings.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vision.embeddings.patch_embedding.weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.vision.config.hidden_size

    @property
    def num_tokens(self) -> int:
        """Tokens per frame in ``feature_tokens``."""
        patches = (self.vision.config.image_size // self.vision.config.patch_size) ** 2
        return {"patch": patches, "cls": 1, "all": patches + 1}[self.config.feature_select]

    # --- ablation -----------------------------------------------------------------

    def set_position_embeddings(self, enabled: bool) -> None:
        """Zero (enabled=False) or restore the tower's position embeddings, in place."""
        weight = self.vision.embeddings.position_embedding.weight
        with torch.no_grad():
            if not enabled and self._saved_positions is None:
                self._saved_positions = weight.detach().clone()
                weight.zero_()
            elif enabled and self._saved_positions is not None:
                weight.copy_(self._saved_positions)
                self._saved_positions = None

    @contextlib.contextmanager
    def without_position_embeddings(self) -> Iterator["FrameEncoder"]:
        was_saved = self._saved_positions is not None
        self.set_position_embeddings(False)
        try:
            yield self
        finally:
            if not was_saved:
                self.set_position_embeddings(True)

    # --- forward ----------------------------------------------------------------

    def forward(self, pixel_values: torch.Tensor, pooled: bool = True) -> EncoderOutput:
        """(B, 3, S, S) normalised pixels -> EncoderOutput. ``pooled=False`` skips layers past the feature layer."""
        with torch.inference_mode():
            vision = self.vision
            x = pixel_values.to(device=self.device, dtype=self.dtype)
            h = vision.pre_layrnorm(vision.embeddings(x))
            layers = vision.encoder.layers
            depth = len(layers) if (pooled and self.projection is not None) else self.feature_index
            features = h
            for i in range(depth):
                h = layers[i](h, None)
                if i + 1 == self.feature_index:
                    features = h
            select = self.config.feature_select
            tokens = {"patch": features[:, 1:], "cls": features[:, :1], "all": features}[select]
            image_embeds = None
            if pooled and self.projection is not None:
                image_embeds = self.projection(vision.post_layernorm(h[:, 0]))
            return EncoderOutput(image_embeds, tokens, features[:, 0])

    def encode_frames(self, frames: list[np.ndarray], pooled: bool = True) -> EncoderOutput:
        """BGR uint8 frames -> EncoderOutput (preprocessing included)."""
        return self(self.preprocess(frames), pooled=pooled)
