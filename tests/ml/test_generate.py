"""Batched generation: candidates, padding, token counts, cancellation, diverse beam search."""

from __future__ import annotations

import pytest
import torch

from training.ml.generate import (
    Candidate,
    DecodingSettings,
    _rows_to_candidates,
    generate_batch,
    generate_naive,
    render_prompt,
)


def test_settings_validation_names_the_field():
    DecodingSettings().validate()
    DecodingSettings(temperature=0, num_beams=8, num_beam_groups=8, diversity_penalty=0.8).validate()
    bad = [
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(num_candidates=0), "num_candidates"),
        (dict(temperature=0, num_candidates=4), "num_candidates"),  # greedy gives one candidate
        (dict(temperature=0, num_beams=4, num_beam_groups=3, diversity_penalty=0.5), "num_beam_groups"),
        (dict(temperature=0, num_beams=4, num_beam_groups=4, num_candidates=4), "diversity_penalty"),
        (dict(temperature=0.7, num_beams=4, num_beam_groups=4, diversity_penalty=0.5, num_candidates=4),
         "temperature"),
        (dict(temperature=0, num_beams=2, num_candidates=3), "num_candidates"),
    ]
    for kwargs, field in bad:
        with pytest.raises(ValueError, match=field):
            DecodingSettings(**kwargs).validate()
    with pytest.raises(ValueError, match="unknown"):
        DecodingSettings.from_dict({"temperature": 0.5, "beams": 3})
    assert DecodingSettings.from_dict(DecodingSettings().to_dict()) == DecodingSettings()


class _FakeTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(f" t{i}" for i in ids)


def test_token_counts_stop_at_eos_and_skip_padding():
    eos = pad = 2  # SmolLM2: pad is EOS, so trailing padding looks like more EOS tokens
    generated = torch.tensor([[5, 6, eos, pad, pad], [7, 8, 9, 10, 11]])
    [cands] = _rows_to_candidates(_FakeTokenizer(), generated, torch.tensor([40]), 2, [eos], "Domain:")
    assert cands[0] == Candidate("Domain: t5 t6", prompt_tokens=40, completion_tokens=3, finish_reason="stop")
    assert cands[1] == Candidate("Domain: t7 t8 t9 t10 t11", 40, 5, "length")


@pytest.mark.model
def test_render_prompt_prefills_and_requires_system(fp32_model, conversations):
    _, tokenizer = fp32_model
    text = render_prompt(tokenizer, conversations[0])
    assert text.endswith("<|im_start|>assistant\nDomain:")
    assert "SmolLM" not in text
    with pytest.raises(ValueError, match="system"):
        render_prompt(tokenizer, conversations[0][1:])


@pytest.mark.model
def test_sampling_gives_k_profiles_per_conversation(fp32_model, conversations):
    model, tokenizer = fp32_model
    settings = DecodingSettings(temperature=0.8, top_p=0.95, num_candidates=3, max_new_tokens=16, seed=7)
    progress = []
    results = generate_batch(model, tokenizer, conversations, settings, batch_size=2,
                             on_progress=lambda *a: progress.append(a))
    assert len(results) == len(conversations)
    for conversation, cands in zip(conversations, results):
        assert len(cands) == 3
        prompt_len = len(tokenizer(render_prompt(tokenizer, conversation), add_special_tokens=False)["input_ids"])
        for c in cands:
            assert c.text.startswith("Domain:")
            assert c.prompt_tokens == prompt_len  # left padding never counted
            assert 1 <= c.completion_tokens <= 16
    assert [p[:2] for p in progress] == [(2, 3), (3, 3)]
    assert progress[-1][2] == sum(c.completion_tokens for cands in results for c in cands)
    # Same seed, same batch: same candidates (a batch is seeded by its first conversation's index).
    assert generate_batch(model, tokenizer, conversations[:2], settings, batch_size=2) == results[:2]


@pytest.mark.model
def test_batched_greedy_equals_naive(fp32_model, conversations):
    model, tokenizer = fp32_model
    settings = DecodingSettings(temperature=0, num_candidates=1, max_new_tokens=24)
    batched = generate_batch(model, tokenizer, conversations, settings, batch_size=len(conversations))
    naive = generate_naive(model, tokenizer, conversations, settings)
    assert batched == naive  # texts and token counts: padding changes nothing


@pytest.mark.model
def test_should_stop_stops_between_batches(fp32_model, conversations):
    model, tokenizer = fp32_model
    settings = DecodingSettings(temperature=0, num_candidates=1, max_new_tokens=4)
    progress = []
    results = generate_batch(
        model, tokenizer, conversations, settings, batch_size=1,
        on_progress=lambda *a: progress.append(a), should_stop=lambda: len(progress) >= 1,
    )
    assert len(results) == 1 and len(progress) == 1 and progress[0][:2] == (1, 3)
    assert generate_batch(model, tokenizer, conversations, settings, should_stop=lambda: True) == []


@pytest.mark.model
def test_diverse_beam_search_batched_equals_naive(fp32_model, conversations):
    model, tokenizer = fp32_model
    settings = DecodingSettings(temperature=0, num_beams=4, num_beam_groups=4, diversity_penalty=0.8,
                                num_candidates=4, max_new_tokens=12)
    batched = generate_batch(model, tokenizer, conversations[:2], settings, batch_size=2)
    naive = generate_naive(model, tokenizer, conversations[:2], settings)
    assert batched == naive
    for cands in batched:
        assert len(cands) == 4
        assert all(c.text.startswith("Domain:") and 1 <= c.completion_tokens <= 12 for c in cands)
        assert len({c.text for c in cands}) > 1  # the groups diverge
