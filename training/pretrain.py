"""Pretrain a compact CLIP on synthetic frames with web-style captions (nanoGPT-style loop).

The encoder stands in for a web-pretrained CLIP such as ViT-L/14-336, so its captions are
written the way web captions are: they name the part, its shape, material and colour,
sometimes a defect in general words ("scratched", "damaged"), and only seldom say where
things are or how many there are. That is why a CLIP's pooled embedding loses layout
while its patch tokens keep it, which is what the MLLM head is there to recover.

The model is transformers' ``CLIPModel`` (ViT image tower + text tower) with the CLIP BPE
vocabulary shipped in the open-clip-torch wheel, so the rest of the code treats it like
any CLIP. Images are rendered on the fly by ``ingest.synth`` in a worker process.

Usage: ``patchsight model pretrain-encoder --out runs/encoder`` (see ``PretrainConfig``).
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from ingest import synth
from model.clip_baseline import clip_tokenizer
from model.encoder import FramePreprocessor, compact_clip_config
from training.schedule import budget_progress, learning_rate


class PretrainConfig(BaseModel):
    # model: see the size budget in docs/evaluation.md (the whole bundle must stay under 25 MB)
    image_size: int = 128
    patch_size: int = 16
    vision_width: int = 192
    vision_layers: int = 6
    vision_heads: int = 3
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 2
    # The full 49408-token CLIP vocabulary would be 12.6 MB of embedding at width 128, half the
    # bundle budget. The first 10000 BPE merges keep every caption word whole or in two pieces.
    text_merges: int = 10000
    context_length: int = 40
    projection_dim: int = 128
    # optimisation
    batch_size: int = 128
    max_steps: int = 1000
    time_limit_s: float = Field(25 * 60, description="stop (and finish the schedule) by this wall time")
    lr: float = 1e-3
    min_lr: float = 5e-5
    warmup_steps: int = 40
    weight_decay: float = 0.1
    threads: int = 2
    device: str = Field("cpu", description="cpu | cuda | auto; the default run is sized for 2 CPU cores")
    data_workers: int = Field(1, ge=1, description="rendering processes (one keeps up with 2 CPU cores; a GPU needs many)")
    seed: int = 0
    # data
    render_width: int = 320  # frames are drawn at 320x240 (4x cheaper than 640x480), then preprocessed as usual
    defect_rate: float = 0.5
    empty_rate: float = 0.08
    layout_caption_rate: float = Field(0.03, description="how often a caption states where or how many")
    hard_pair_rate: float = Field(
        0.0, ge=0, le=1,
        description="share of parts with a surface defect that also appear as their defect-free twin, next in "
        "the same batch, with the same caption minus the defect words (a hard negative)",
    )
    init_from: str | None = Field(
        None, description="continue from this CLIP folder or compact bundle's encoder (its sizes and tokenizer "
        "win over the ones above)"
    )
    log_every: int = 10


# --- Captions ---------------------------------------------------------------------------

SHAPE_WORDS = {"rect": ["rectangular", "square-cornered", ""], "rounded": ["rounded", "round-cornered", ""]}
NOUNS = {
    "bracket": ["bracket", "mounting bracket", "metal bracket"],
    "housing": ["housing", "enclosure", "case"],
    "board": ["circuit board", "pcb", "electronics board"],
    "cover": ["cover", "lid", "cover plate"],
    "panel": ["panel", "plate", "mounting plate"],
}
DEFECT_WORDS = {
    "scratch": ["scratched", "with a scratch", "with scratches", "scuffed"],
    "crack": ["cracked", "with a crack", "broken", "with a fracture"],
    "stain": ["stained", "with a stain", "discolored", "with a dirty mark"],
    "missing_screw": ["missing a screw", "with a screw missing", "incomplete"],
    "label_left": ["assembled wrong", "defective"],
    "part_flipped": ["upside down", "mounted wrong", "defective"],
    "connector_left": ["assembled wrong", "defective"],
    "hole_count": ["defective", "faulty"],
}
# What a caption says when it does, rarely, state layout or counts.
LAYOUT_WORDS = {
    "label": ["label on the left", "label on the right"],
    "connector": ["connector left of the chip", "connector right of the chip"],
    "holes": ["{n} holes"],
}
PREFIXES = ["a photo of a", "a", "an image of a", "close-up of a", "industrial photo of a", "a picture of a"]
SUFFIXES = ["", "", " on a conveyor belt", " on a production line", " in a factory", ", product photo"]


SURFACE_DEFECTS = ("scratch", "crack", "stain", "missing_screw")


def make_caption(
    spec: synth.PartSpec | None,
    rng: np.random.Generator,
    layout_rate: float,
    stats: Counter,
    name: str | None = None,
    omit: str | None = None,
) -> str:
    """A web-style caption; ``stats`` counts what it mentions (the distribution goes in the bundle).

    ``name`` is a defect always named; ``omit`` one never named. Either way the same random draws
    are made, so a caption with ``omit=d`` is the one with ``name=d`` minus the words for ``d``.
    """
    if spec is None:
        stats["empty_belt"] += 1
        return str(rng.choice(["an empty conveyor belt", "a conveyor belt in a factory", "a grey conveyor belt"]))
    ptype = synth.PART_TYPES[spec.part_type]
    words = [str(rng.choice(PREFIXES))]
    if rng.random() < 0.7:
        words.append(ptype.colour)
    if rng.random() < 0.6:
        words.append(ptype.material)
    shape = str(rng.choice(SHAPE_WORDS[ptype.shape]))
    if shape and rng.random() < 0.4:
        words.append(shape)
    words.append(str(rng.choice(NOUNS[spec.part_type])))
    caption = " ".join(words)
    stats["part"] += 1
    defects = spec.defects
    # general defect words, mostly for surface defects (the kind people photograph and post)
    for d in defects:
        p = 0.6 if d in SURFACE_DEFECTS else 0.15
        said = rng.random() < p
        if said or d in (name, omit):
            words_for_d = str(rng.choice(DEFECT_WORDS[d]))
            if d != omit:
                caption += " " + words_for_d
                stats[f"defect_word:{d}"] += 1
    if not defects and rng.random() < 0.2:
        caption += " " + str(rng.choice(["in good condition", "new", "clean"]))
        stats["ok_word"] += 1
    if rng.random() < layout_rate:
        kind = str(rng.choice(["label", "connector", "holes"]))
        if kind == "label":
            caption += " with the " + LAYOUT_WORDS["label"][spec.label_side == "right"]
        elif kind == "connector":
            caption += " with the " + LAYOUT_WORDS["connector"][spec.connector_side == "right"]
        else:
            caption += " with " + {3: "three", 4: "four", 5: "five"}.get(spec.holes, str(spec.holes)) + " holes"
        stats[f"layout:{kind}"] += 1
    return caption + str(rng.choice(SUFFIXES))


# --- Data -------------------------------------------------------------------------------


def random_look(rng: np.random.Generator, scale_px: float) -> synth.CameraLook:
    grey = rng.uniform(60, 120)
    return synth.CameraLook(
        scale=float(rng.uniform(0.85, 1.08)),
        belt_bgr=tuple(int(np.clip(grey + rng.uniform(-10, 10), 0, 255)) for _ in range(3)),  # type: ignore[arg-type]
        belt_phase=float(rng.uniform(0, 100)),
        brightness=float(rng.uniform(0.75, 1.2)),
        tint=tuple(float(rng.uniform(0.92, 1.08)) for _ in range(3)),  # type: ignore[arg-type]
        vignette=float(rng.uniform(0, 0.3)),
        noise_sigma=float(rng.uniform(0, 7)),
        blur_px=int(rng.integers(0, 10) * scale_px),
    )


def random_view(
    rng: np.random.Generator, size: tuple[int, int], defect_rate: float, empty_rate: float
) -> tuple[synth.PartSpec | None, synth.CameraLook, tuple[float, float] | None]:
    """What one frame as a line camera would see it shows: a random part (or none) somewhere in view."""
    width, height = size
    look = random_look(rng, width / synth.BASE_WIDTH)
    if rng.random() < empty_rate:
        return None, look, None
    spec = synth.sample_part(rng, str(rng.choice(list(synth.PART_TYPES))), defect_rate)
    x = rng.uniform(*synth.inspected_x_range(size, look.scale))
    y = height / 2 + rng.uniform(-0.06, 0.06) * height
    return spec, look, (x, y)


def scene_captions(
    spec: synth.PartSpec | None, rng: np.random.Generator, cfg: PretrainConfig, stats: Counter
) -> list[tuple[synth.PartSpec | None, str]]:
    """The (spec, caption) of one view, followed now and then by its defect-free twin.

    Web captions name a defect only sometimes, and a batch seldom holds the same part with and
    without it, so the contrastive loss can match most captions on part type and colour alone.
    A twin that differs only in the defect, captioned without its words, is a negative that only
    the defect tells apart (hard negatives, as in NegCLIP).
    """
    surface = [d for d in (spec.defects if spec else []) if d in SURFACE_DEFECTS]
    if not surface or cfg.hard_pair_rate == 0 or rng.random() >= cfg.hard_pair_rate:
        return [(spec, make_caption(spec, rng, cfg.layout_caption_rate, stats))]
    d = str(rng.choice(surface))
    draws = copy.deepcopy(rng)
    caption = make_caption(spec, rng, cfg.layout_caption_rate, stats, name=d)
    twin_caption = make_caption(spec, draws, cfg.layout_caption_rate, Counter(), omit=d)
    stats["part"] += 1
    stats[f"hard_pair:{d}"] += 1
    return [(spec, caption), (synth.clear_defect(spec, d), twin_caption)]


class SceneStream(torch.utils.data.IterableDataset):
    """Endless (pixel tensor, caption) pairs, rendered and preprocessed in a worker process."""

    def __init__(self, cfg: PretrainConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.stats: Counter = Counter()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        cv2.setNumThreads(1)
        torch.set_num_threads(1)
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        size = (self.cfg.render_width, self.cfg.render_width * 3 // 4)
        preprocess = FramePreprocessor(self.cfg.image_size)  # exactly what the encoder does at inference
        stats: Counter = Counter()
        while True:
            spec, look, position = random_view(rng, size, self.cfg.defect_rate, self.cfg.empty_rate)
            render_seed = int(rng.integers(2**62))
            for shown, caption in scene_captions(spec, rng, self.cfg, stats):
                # twins share the render's random draws too: texture, noise, blur
                image = synth.render_part_frame(shown, np.random.default_rng(render_seed), position, look, size)
                yield preprocess([image])[0], caption


def caption_distribution(cfg: PretrainConfig, n: int = 20000, seed: int = 12345) -> dict[str, object]:
    """What the captions say, measured on ``n`` draws from the same generator (no rendering)."""
    rng = np.random.default_rng(seed)
    stats: Counter = Counter()
    examples = []
    for _ in range(n):
        spec = None
        if rng.random() >= cfg.empty_rate:
            spec = synth.sample_part(rng, str(rng.choice(list(synth.PART_TYPES))), cfg.defect_rate)
        for _, cap in scene_captions(spec, rng, cfg, stats):
            if len(examples) < 25:
                examples.append(cap)
    parts = stats["part"] or 1
    return {
        "samples": n,
        "fraction_of_part_captions": {k: round(v / parts, 4) for k, v in sorted(stats.items()) if k != "part"},
        "examples": examples,
        "note": "surface defects are named in general words ~60% of the time; layout or counts are stated in "
        f"{cfg.layout_caption_rate:.0%} of captions; relations between features never",
    }


# --- Model ------------------------------------------------------------------------------


def build_clip(cfg: PretrainConfig, vocab_size: int):  # type: ignore[no-untyped-def]
    from transformers import CLIPModel

    return CLIPModel(compact_clip_config(
        image_size=cfg.image_size, patch_size=cfg.patch_size, vision_width=cfg.vision_width,
        vision_layers=cfg.vision_layers, vision_heads=cfg.vision_heads, text_width=cfg.text_width,
        text_layers=cfg.text_layers, text_heads=cfg.text_heads, text_vocab_size=vocab_size,
        text_max_positions=cfg.context_length, projection_dim=cfg.projection_dim,
    ))


def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Symmetric InfoNCE; identical captions in a batch are all positives (soft targets), not negatives."""
    img = F.normalize(image_embeds.float(), dim=-1)
    txt = F.normalize(text_embeds.float(), dim=-1)
    logits = logit_scale.exp().clamp(max=100) * img @ txt.t()
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    key = torch.tensor([ids[c] for c in captions], device=logits.device)
    same = (key[:, None] == key[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


# --- Training ---------------------------------------------------------------------------


def continuation_source(folder: str | Path) -> tuple[Path, dict | None]:
    """The CLIP folder that pretraining continues from, and how that one was made, if it says.

    ``folder`` is a CLIP folder (the record is its pretrain.json) or a compact bundle (its
    ``encoder/`` folder; the record is the bundle's provenance), so a shipped encoder can be
    trained further as it is.
    """
    from model.bundle import BUNDLE_FILE, BundleSpec

    folder = Path(folder)
    record = None
    if (folder / BUNDLE_FILE).is_file():
        spec = BundleSpec.model_validate_json((folder / BUNDLE_FILE).read_text())
        record = spec.provenance.get("encoder_pretraining")
        encoder_folder = folder / (spec.encoder.source or "")
        if spec.encoder.source is None or not (encoder_folder / "config.json").is_file():
            raise ValueError(f"{folder} is a bundle without an encoder folder (a hub encoder?)")
        folder = encoder_folder
    elif not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is neither a CLIP folder (config.json) nor a compact bundle ({BUNDLE_FILE})")
    elif (folder / "pretrain.json").is_file():
        record = json.loads((folder / "pretrain.json").read_text())
    return folder, ({k: v for k, v in record.items() if k != "history"} if record else None)


def pretrain(cfg: PretrainConfig, out: str | Path, log=print) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Train and save ``out/`` (CLIPModel + tokenizer + pretrain.json); returns the run record."""
    from model.encoder import resolve_device

    out = Path(out)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    init_record = None
    if cfg.init_from:
        from transformers import CLIPModel, CLIPTokenizer

        clip_folder, init_record = continuation_source(cfg.init_from)
        # A checkpoint fixes the sizes: the config's own are replaced by what was loaded.
        tokenizer = CLIPTokenizer.from_pretrained(clip_folder, local_files_only=True)
        model = CLIPModel.from_pretrained(clip_folder, dtype=torch.float32, local_files_only=True).to(device)
        vc = model.config.vision_config
        cfg = cfg.model_copy(update={
            "image_size": vc.image_size, "patch_size": vc.patch_size, "vision_width": vc.hidden_size,
            "vision_layers": vc.num_hidden_layers, "vision_heads": vc.num_attention_heads,
            "text_width": model.config.text_config.hidden_size, "text_layers": model.config.text_config.num_hidden_layers,
            "text_heads": model.config.text_config.num_attention_heads, "projection_dim": model.config.projection_dim,
        })
    else:
        tokenizer = clip_tokenizer(num_merges=cfg.text_merges)
        model = build_clip(cfg, len(tokenizer)).to(device)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    start = f"from {cfg.init_from}" if cfg.init_from else "from scratch"
    log(f"pretrain: {n_params / 1e6:.2f}M parameters, image {cfg.image_size}px patch {cfg.patch_size}, on {device}, {start}")

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
    )
    loader = torch.utils.data.DataLoader(
        SceneStream(cfg, cfg.seed), batch_size=cfg.batch_size, num_workers=cfg.data_workers, prefetch_factor=4,
        persistent_workers=True, pin_memory=device.type == "cuda",
        # spawn, not fork: a forked child inherits OpenCV's and OpenMP's thread pools mid-state and can hang
        multiprocessing_context="spawn",
    )
    t0 = time.time()
    history = []
    step = 0
    images_seen = 0
    for pixels, captions in loader:
        elapsed = time.time() - t0
        progress = budget_progress(step, cfg.max_steps, elapsed, cfg.time_limit_s)
        if progress >= 1.0:
            break
        lr = learning_rate(step + 1, peak=cfg.lr, warmup_steps=cfg.warmup_steps, progress=progress, floor=cfg.min_lr)
        for g in opt.param_groups:
            g["lr"] = lr
        tokens = tokenizer(list(captions), padding="max_length", truncation=True, max_length=cfg.context_length, return_tensors="pt")
        output = model(input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device),
                       pixel_values=pixels.to(device, non_blocking=True))
        loss = clip_loss(output.image_embeds, output.text_embeds, model.logit_scale, list(captions))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        images_seen += len(captions)
        if step % cfg.log_every == 0 or step == 1:
            rate = images_seen / max(1e-6, time.time() - t0)
            history.append({"step": step, "loss": round(loss.item(), 4), "lr": lr, "elapsed_s": round(time.time() - t0, 1)})
            log(f"step {step:5d} loss {loss.item():.4f} lr {lr:.2e} scale {model.logit_scale.exp().item():.1f} "
                f"{rate:.0f} img/s {time.time() - t0:.0f}s")

    wall = time.time() - t0
    model.eval()
    model.to("cpu").half().save_pretrained(out)  # fp16 on disk: the encoder is frozen downstream
    tokenizer.save_pretrained(out)
    FramePreprocessor(cfg.image_size).save_pretrained(out)
    record = {
        "config": cfg.model_dump(),
        "steps": step,
        "images_seen": images_seen,
        "wall_s": round(wall, 1),
        "threads": cfg.threads,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "final_loss": history[-1]["loss"] if history else None,
        "history": history,
        "captions": caption_distribution(cfg),
        **({"init_pretraining": init_record} if cfg.init_from else {}),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }
    (out / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"pretrain: {step} steps, {images_seen} images in {wall:.0f}s -> {out}")
    return record
