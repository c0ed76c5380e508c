"""The format guide decides where lines begin and end; the model (here: random logits or SmolLM2) the words."""

from __future__ import annotations

import re

import pytest

from training.ml.generate import DecodingSettings, generate_batch
from training.ml.guide import (ITEM_RESERVE_TOKENS, LONG_DESCRIPTION_CHARS, MAX_DESCRIPTION_CHARS, MAX_DOMAIN_CHARS,
                               MAX_NAME_CHARS, FormatGuide, Vocabulary)

# What every guided answer that ends by itself looks like, whatever the words.
STRUCTURE = re.compile(r'Domain:[^\n]+\n\nCompetencies:\n(- [A-Za-z(][^\n:]*:[^\n]+\n){3,8}')


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return Vocabulary(tokenizer, [tokenizer.eos_token_id])


def run(vocab, tokens: list[int], max_new_tokens: int | None = None) -> tuple[FormatGuide, set[int]]:
    """Feed ``tokens`` one step at a time, as generate does; return the guide and the ids allowed next."""
    import torch

    prompt = [0]
    guide = FormatGuide(vocab, len(prompt), max_new_tokens=max_new_tokens)
    for end in range(len(tokens) + 1):
        scores = torch.zeros(1, vocab.size)
        guide(torch.tensor([prompt + tokens[:end]]), scores)
    return guide, set(torch.isfinite(scores[0]).nonzero().flatten().tolist())


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def newline_tokens(vocab) -> set[int]:
    return {i for i, text in enumerate(vocab.texts) if "\n" in text}


def test_the_domain_is_quoted_cannot_end_early_and_must_end_at_its_closing_quote(tokenizer, vocab):
    _, allowed = run(vocab, [])
    assert allowed == set(ids(tokenizer, ' "'))
    _, allowed = run(vocab, ids(tokenizer, ' "G'))
    assert not allowed & newline_tokens(vocab) and not any('"' in vocab.texts[i] for i in allowed)
    _, allowed = run(vocab, ids(tokenizer, ' "Genomics of liver'))
    assert set(ids(tokenizer, '"')) <= allowed and not allowed & newline_tokens(vocab)
    _, allowed = run(vocab, ids(tokenizer, ' "Genomics of liver"'))
    assert allowed == {vocab.blank_line}


def test_a_domain_that_runs_on_is_closed_at_a_short_domain_length(tokenizer, vocab):
    topics = ' "' + "; ".join(["Renewable energy"] * (MAX_DOMAIN_CHARS // 18 + 1))
    _, allowed = run(vocab, ids(tokenizer, topics))
    assert allowed == set(ids(tokenizer, '"'))


def test_the_header_and_first_dash_are_forced_then_a_word_starts_the_item(tokenizer, vocab):
    domain = ids(tokenizer, ' "Genomics"') + [vocab.blank_line]
    forced = []
    for _ in vocab.header_ids:
        _, allowed = run(vocab, domain + forced)
        assert len(allowed) == 1
        forced.append(allowed.pop())
    assert tokenizer.decode(forced) == "Competencies:\n-"
    _, allowed = run(vocab, domain + forced)
    assert all(re.match(r"^ [A-Za-z(]", vocab.texts[i]) for i in allowed)
    assert len(allowed) > 10_000  # the words are the model's choice


def profile_tokens(tokenizer, vocab, items: list[str]) -> list[int]:
    tokens = ids(tokenizer, ' "Genomics"') + [vocab.blank_line] + vocab.header_ids
    for n, item in enumerate(items):
        if n:
            tokens.append(vocab.dash)
        tokens += ids(tokenizer, " " + item) + [vocab.single_newline]
    return tokens


def test_an_item_ends_only_once_it_has_a_name_and_a_description(tokenizer, vocab):
    start = profile_tokens(tokenizer, vocab, [])
    _, allowed = run(vocab, start + ids(tokenizer, " Sequencing of single cells"))
    assert vocab.single_newline not in allowed
    _, allowed = run(vocab, start + ids(tokenizer, " Sequencing: profiles 21,480 liver cells"))
    assert vocab.single_newline in allowed and vocab.blank_line not in allowed


def test_a_long_description_ends_at_its_next_sentence_end_and_at_the_limit_in_any_case(tokenizer, vocab):
    start = profile_tokens(tokenizer, vocab, []) + ids(tokenizer, " Sequencing:")
    sentence = " Profiles liver cells one by one across many donors"
    short = ids(tokenizer, sentence + ".")
    _, allowed = run(vocab, start + short)
    assert vocab.single_newline in allowed and len(allowed) > 1  # short: may go on
    long_words = ids(tokenizer, sentence * (LONG_DESCRIPTION_CHARS // len(sentence) + 1))
    _, allowed = run(vocab, start + long_words)
    assert vocab.single_newline in allowed and len(allowed) > 1  # long, mid-sentence: may finish it
    _, allowed = run(vocab, start + long_words + ids(tokenizer, "."))
    assert allowed == {vocab.single_newline}
    endless = ids(tokenizer, sentence * (MAX_DESCRIPTION_CHARS // len(sentence) + 1))
    _, allowed = run(vocab, start + endless)
    assert allowed == {vocab.single_newline}


def test_an_item_ends_early_when_the_budget_needs_the_items_still_to_come(tokenizer, vocab):
    tokens = profile_tokens(tokenizer, vocab, ["Skill 0: shown in the second abstract"])
    tokens += [vocab.dash] + ids(tokenizer, " Skill 1: shown in the first abstract")
    # After this item one more is needed: room for it (and a newline and the end) or not.
    _, roomy = run(vocab, tokens, max_new_tokens=len(tokens) + ITEM_RESERVE_TOKENS + 10)
    _, tight = run(vocab, tokens, max_new_tokens=len(tokens) + ITEM_RESERVE_TOKENS)
    assert vocab.single_newline in roomy and len(roomy) > 1
    assert tight == {vocab.single_newline}


def test_a_name_that_runs_on_must_reach_its_colon(tokenizer, vocab):
    long_name = " " + "very " * (MAX_NAME_CHARS // 5 + 1)
    _, allowed = run(vocab, profile_tokens(tokenizer, vocab, []) + ids(tokenizer, long_name))
    assert allowed and all(":" in vocab.texts[i] for i in allowed)


@pytest.mark.parametrize("items, can_end, can_continue", [(1, False, True), (3, True, True), (8, True, False)])
def test_three_to_eight_items(tokenizer, vocab, items, can_end, can_continue):
    tokens = profile_tokens(tokenizer, vocab, [f"Skill {n}: shown in the second abstract" for n in range(items)])
    _, allowed = run(vocab, tokens)
    assert (tokenizer.eos_token_id in allowed) is can_end
    assert (vocab.dash in allowed) is can_continue
    assert allowed <= {vocab.dash, tokenizer.eos_token_id}


def test_random_words_still_come_out_in_the_profile_shape(tokenizer, vocab):
    """Random logits stand in for a model that has no idea of the format: the shape must hold regardless."""
    import torch

    generator = torch.Generator().manual_seed(7)
    finished = 0
    for _ in range(20):
        guide, tokens = FormatGuide(vocab, 1), [0]
        for _ in range(400):
            scores = torch.randn(1, vocab.size, generator=generator)
            # Newlines and the end are rare in random logits; favour them so answers finish within 400 tokens.
            scores[0, [vocab.single_newline, vocab.blank_line, tokenizer.eos_token_id]] += 4
            token = int(guide(torch.tensor([tokens]), scores).argmax())
            if token == tokenizer.eos_token_id:
                finished += 1
                assert STRUCTURE.fullmatch("Domain:" + tokenizer.decode(tokens[1:])), tokenizer.decode(tokens[1:])
                break
            tokens.append(token)
    assert finished >= 15


def test_beam_search_cannot_be_guided():
    with pytest.raises(ValueError, match="format_guide"):
        DecodingSettings(temperature=0, num_beams=4, num_candidates=2, format_guide=True).validate()


@pytest.mark.model
def test_the_real_model_writes_guided_profiles(fp32_model, conversations):
    model, tokenizer = fp32_model
    settings = DecodingSettings(temperature=0.5, num_candidates=2, max_new_tokens=120, seed=3, format_guide=True)
    results = generate_batch(model, tokenizer, conversations[:2], settings)
    texts = [c.text for cands in results for c in cands if c.finish_reason == "stop"]
    assert texts, "no guided answer ended within 120 tokens"
    for text in texts:
        assert STRUCTURE.fullmatch(text), text


def test_no_item_is_begun_that_the_token_budget_cannot_finish(tokenizer, vocab):
    tokens = profile_tokens(tokenizer, vocab, [f"Skill {n}: shown in the second abstract" for n in range(3)])
    _, roomy = run(vocab, tokens, max_new_tokens=len(tokens) + ITEM_RESERVE_TOKENS + 1)
    _, tight = run(vocab, tokens, max_new_tokens=len(tokens) + ITEM_RESERVE_TOKENS - 1)
    assert roomy == {vocab.dash, tokenizer.eos_token_id}
    assert tight == {tokenizer.eos_token_id}
