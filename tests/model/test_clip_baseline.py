from __future__ import annotations

import torch

from model.clip_baseline import ClipBaseline, LinearProbe, clip_tokenizer, prompts_for


def test_scores_are_clip_softmax_over_two_captions(clip, clip_tok, encoder, frames, questions):
    baseline = ClipBaseline.from_clip(clip, encoder, clip_tok)
    out = encoder.encode_frames(frames)
    scores = baseline.score(out, questions)
    assert scores.shape == (3, 3) and torch.all((scores >= 0) & (scores <= 1))

    # Reference: CLIPModel's own logits_per_image over [positive, negative].
    for qi, q in enumerate(questions):
        pos, neg = prompts_for(q)
        batch = clip_tok([pos, neg], padding=True, return_tensors="pt")
        with torch.inference_mode():
            ref = clip(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=encoder.preprocess(frames)).logits_per_image
        torch.testing.assert_close(scores[:, qi], ref.softmax(-1)[:, 0], rtol=1e-4, atol=1e-5)
    # The pooled embedding alone is enough.
    torch.testing.assert_close(baseline.score(out.image_embeds, questions), scores)


def test_prompts_prefer_the_questions_own_captions(questions):
    assert prompts_for(questions[2]) == ("a plate with three holes", "a plate with four holes")
    pos, neg = prompts_for(questions[0])
    assert pos == "a photo with a scratch on the left side of the part"
    assert neg == "a photo with no scratch on the left side of the part"
    pos, neg = prompts_for("Is the label missing?")
    assert "label is missing" in pos and "label is not missing" in neg
    pos, neg = prompts_for("How many bolts?")
    assert pos != neg


def test_truncated_clip_tokenizer_is_a_prefix_of_the_full_one(clip_tok):
    full = clip_tokenizer()
    assert len(full) == 49408
    assert len(clip_tok) == 512 + 2000 + 2
    # OpenAI CLIP's ids for "a photo of the": the layout is CLIP's own.
    assert full("a photo of the").input_ids[1:-1] == [320, 1125, 539, 518]
    common = "a photo of the part"
    ids = clip_tok(common).input_ids
    assert ids[0] == len(clip_tok) - 2 and ids[-1] == len(clip_tok) - 1  # specials sit last
    assert ids[1:-1] == full(common).input_ids[1:-1]  # common words keep their ids
    rare = "a scratch"  # past the kept merges: more, smaller tokens, same text
    assert len(clip_tok(rare).input_ids) > len(full(rare).input_ids)
    assert clip_tok.decode(clip_tok(rare).input_ids, skip_special_tokens=True).strip() == rare


def test_linear_probe_fits_saves_and_loads(tmp_path):
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(200, 16, generator=g)
    direction = torch.randn(16, generator=g)
    labels = torch.stack([(embeds @ direction > 0).float(), (embeds[:, 0] > 0.3).float()], dim=1)
    labels[:10, 1] = -1  # unlabelled
    probe = LinearProbe(16, ["a", "b"])
    probe.fit(embeds, labels)
    pred = probe.predict(embeds)
    assert pred.shape == (200, 2) and torch.all((pred >= 0) & (pred <= 1))
    acc = ((pred > 0.5).float() == labels)[labels >= 0].float().mean()
    assert acc > 0.9
    probe.save(tmp_path / "probe.safetensors")
    loaded = LinearProbe.load(tmp_path / "probe.safetensors")
    assert loaded.question_ids == ["a", "b"]
    torch.testing.assert_close(loaded.predict(embeds), pred)
