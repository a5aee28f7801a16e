from __future__ import annotations

import pytest
import torch

from model.head import HeadConfig, MLLMHead


def test_score_shapes_and_probabilities(head, encoder, frames, questions):
    out = encoder.encode_frames(frames)
    scores = head.score(out, questions)
    assert scores.shape == (3, 3) and scores.dtype == torch.float32
    assert torch.all((scores >= 0) & (scores <= 1))
    logits = head.logits(out, questions)
    torch.testing.assert_close(scores, logits.softmax(-1)[..., 0])
    # Strings and Question objects are the same questions.
    torch.testing.assert_close(scores, head.score(out, [q.text for q in questions]))


def test_score_equals_full_lm_forward(head, encoder, frames, questions):
    """VQAScore from the LM's own next-token logits over the whole vocabulary."""
    out = encoder.encode_frames(frames)
    prefix = head.prefix_embeds(out)
    ids = head.tokenizer.encode(head.config.prompt.format(question=questions[0].text), add_special_tokens=False)
    prompt = head.body.embed_tokens(torch.tensor(ids))[None].expand(3, -1, -1)
    with torch.inference_mode():
        logits = head.lm(inputs_embeds=torch.cat([prefix, prompt], 1)).logits[:, -1]
    expected = logits[:, [head.yes_id, head.no_id]].softmax(-1)[:, 0]
    torch.testing.assert_close(head.score(out, questions[:1])[:, 0], expected, rtol=1e-4, atol=1e-5)


def test_shared_image_prefix_matches_full_sequences(head, encoder, frames, questions):
    out = encoder.encode_frames(frames)
    shared = head.logits(out, questions, share_prefix=True)
    full = head.logits(out, questions, share_prefix=False)
    torch.testing.assert_close(shared, full, rtol=1e-4, atol=1e-5)
    # One question at a time gives the same numbers: no leakage between padded prompts.
    for i, q in enumerate(questions):
        torch.testing.assert_close(head.logits(out, [q])[:, 0], shared[:, i], rtol=1e-4, atol=1e-5)
    # Chunking rows (bounded KV memory) changes nothing either.
    head.config.max_rows = 2
    torch.testing.assert_close(head.logits(out, questions), shared, rtol=1e-4, atol=1e-5)


def test_prefix_runs_once_per_frame_batch(head, encoder, frames, questions):
    """The image prefix goes through the LM once; the questions reuse its KV cache."""
    out = encoder.encode_frames(frames)
    seen = []
    hook = head.body.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["inputs_embeds"].shape), with_kwargs=True)
    head.score(out, questions)
    hook.remove()
    prefix_len = len(head.prefix_ids) + encoder.num_tokens
    assert seen[0][:2] == (3, prefix_len)  # frames x prefix, once
    longest = max(len(head.tokenizer.encode(head.config.prompt.format(question=q.text))) for q in questions)
    assert seen[1][:2] == (3 * len(questions), longest)  # frames x questions rows, prompt tokens only
    assert len(seen) == 2


def test_pair_logits_match_grid(head, encoder, frames, questions):
    out = encoder.encode_frames(frames)
    grid = head.logits(out, questions)
    pairs = head.pair_logits(out, questions)  # question i of frame i
    torch.testing.assert_close(pairs, grid[torch.arange(3), torch.arange(3)], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        head.pair_logits(out, questions[:2])


def test_cls_and_question_blind_variants(tiny_decoder, encoder, frames, questions):
    out = encoder.encode_frames(frames)
    cls_head = MLLMHead.create(HeadConfig.tiny(decoder=tiny_decoder, image_tokens="cls"), encoder=encoder, device="cpu")
    assert cls_head.prefix_embeds(out).shape[1] == len(cls_head.prefix_ids) + 1
    torch.testing.assert_close(cls_head.score(out, questions), cls_head.score(out.cls_token[:, None], questions))
    with pytest.raises(ValueError, match="CLS"):
        cls_head.score(out.feature_tokens, questions)

    both = MLLMHead.create(HeadConfig.tiny(decoder=tiny_decoder, image_tokens="cls_then_patch"), encoder=encoder, device="cpu")
    tokens = both.image_tokens(out)
    assert tokens.shape[1] == out.feature_tokens.shape[1] + 1
    torch.testing.assert_close(tokens[:, 0], out.cls_token)
    torch.testing.assert_close(tokens[:, 1:], out.feature_tokens)
    with pytest.raises(ValueError, match="CLS"):
        both.score(out.feature_tokens, questions)

    blind = MLLMHead.create(HeadConfig.tiny(decoder=tiny_decoder, question_aware=False), encoder=encoder, device="cpu")
    prefix = blind.prefix_embeds(out)
    assert prefix.shape[1] == len(blind.prefix_ids) + 1  # one pooled image token
    image = blind.projector(out.feature_tokens.mean(1))
    torch.testing.assert_close(prefix[:, -1], image)
    assert torch.all((blind.score(out, questions) >= 0) & (blind.score(out, questions) <= 1))


def test_shuffled_image_tokens_reach_the_decoder_in_a_random_order(tiny_decoder, encoder, frames):
    out = encoder.encode_frames(frames)
    ordered = MLLMHead.create(HeadConfig.tiny(decoder=tiny_decoder), encoder=encoder, device="cpu")
    shuffled = MLLMHead.create(HeadConfig.tiny(decoder=tiny_decoder, shuffle_image_tokens=True), encoder=encoder,
                               device="cpu")
    shuffled.load_state_dict(ordered.state_dict())
    n = len(ordered.prefix_ids)
    with torch.no_grad():
        ref = ordered.prefix_embeds(out)[:, n:]
        first, second = shuffled.prefix_embeds(out)[:, n:], shuffled.prefix_embeds(out)[:, n:]
    assert not torch.equal(first, ref) and not torch.equal(first, second)
    for x in (first, second):  # each frame's own tokens, only their order changed
        torch.testing.assert_close(x.sort(dim=1).values, ref.sort(dim=1).values)


def test_shuffled_head_scores_the_same_frames_the_same_way_each_evaluation(tiny_decoder, encoder, frames, questions):
    out = encoder.encode_frames(frames)
    config = HeadConfig.tiny(decoder=tiny_decoder, shuffle_image_tokens=True)
    heads = [MLLMHead.create(config, encoder=encoder, device="cpu") for _ in range(2)]
    heads[1].load_state_dict(heads[0].state_dict())
    torch.manual_seed(1)
    first = heads[0].score(out, questions)
    torch.manual_seed(2)  # the global RNG's state does not reach an evaluation's shuffle
    torch.testing.assert_close(heads[1].score(out, questions), first)
    heads[0].train()  # training draws a fresh order from the global RNG
    n = len(heads[0].prefix_ids)
    with torch.no_grad():
        torch.manual_seed(3)
        a = heads[0].prefix_embeds(out)[:, n:]
        torch.manual_seed(3)
        b = heads[0].prefix_embeds(out)[:, n:]
        c = heads[0].prefix_embeds(out)[:, n:]
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_loss_trains_projector_and_lm(head, encoder, frames, questions):
    out = encoder.encode_frames(frames)
    labels = torch.tensor([[1, 0, -1], [0, 1, 0], [1, 1, 0]])
    head.train()
    params = head.trainable_parameters()
    assert {id(p) for p in head.projector.parameters()} <= {id(p) for p in params}
    opt = torch.optim.Adam(params, lr=1e-2)
    first = None
    for _ in range(40):
        loss = head.loss(out, questions, labels)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    assert loss.item() < first * 0.5
    scores = head.score(out, questions)
    keep = labels >= 0
    assert torch.equal((scores[keep] > 0.5).long(), labels[keep])

    pair_loss = head.loss(out, questions, torch.tensor([1, 1, 0]))
    assert pair_loss.ndim == 0 and pair_loss.item() > 0
    assert head.loss(out, questions, -torch.ones(3, 3)).item() == 0.0


def test_save_and_load_round_trip(head, encoder, frames, questions, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    head.save_pretrained(tmp_path)
    loaded = MLLMHead.from_pretrained(tmp_path, encoder=encoder, device="cpu")
    assert loaded.config == head.config
    out = encoder.encode_frames(frames)
    torch.testing.assert_close(loaded.score(out, questions), head.score(out, questions))


def test_multi_token_answer_is_rejected(tiny_decoder, encoder):
    with pytest.raises(ValueError, match="single token"):
        MLLMHead.create(HeadConfig.tiny(decoder=tiny_decoder, yes_text=" Absolutely certain"), encoder=encoder, device="cpu")
