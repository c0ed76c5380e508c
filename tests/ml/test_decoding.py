"""The loop engine (training/ml/decoding.py) decodes as model.generate does: same greedy output, same sampling."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from training.ml import decoding, generate
from training.ml.generate import DecodingSettings, generate_batch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def both_engines(model, tokenizer, conversations, settings, **kwargs):
    return [generate_batch(model, tokenizer, conversations, dataclasses.replace(settings, engine=engine), **kwargs)
            for engine in ("generate", "loop")]


def test_the_engine_is_validated_by_name():
    assert DecodingSettings().engine == "loop"
    with pytest.raises(ValueError, match="engine"):
        DecodingSettings(engine="vllm").validate()


def test_top_p_sampling_draws_what_transformers_warper_keeps_with_its_probabilities():
    """Narrow rows (the top 64 hold top_p) and wide ones (they do not: transformers' own path)."""
    from transformers import TopPLogitsWarper

    generator = torch.Generator().manual_seed(0)
    peaked = torch.randn(300, generator=generator) * 4  # a few tokens hold most of the mass
    flat = torch.randn(300, generator=generator) * 0.1  # the top 64 hold ~21%: sorted in full
    for logits, narrow in ((peaked, True), (flat, False)):
        assert bool(logits.softmax(-1).topk(decoding.TOP_P_CANDIDATES).values.sum() >= 0.9) == narrow
        expected = TopPLogitsWarper(top_p=0.9)(None, logits[None].clone()).softmax(-1)[0]
        torch.manual_seed(1)
        draws = decoding.sample(logits.repeat(40_000, 1), 0.9)
        frequency = torch.bincount(draws, minlength=300).float() / draws.numel()
        assert set(draws.unique().tolist()) <= set(expected.nonzero().flatten().tolist())
        assert (frequency - expected).abs().max() < 0.01
    torch.manual_seed(1)
    assert decoding.sample(peaked[None], 1.0).shape == (1,)  # top_p = 1: no cut at all


def test_the_repetition_penalty_equals_transformers_with_padding_ignored():
    from transformers import RepetitionPenaltyLogitsProcessor

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (3, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding: its ids must not be penalised
    mask[2, :7] = 0
    scores = torch.randn(3, 50, generator=generator)
    expected = RepetitionPenaltyLogitsProcessor(1.3, prompt_ignore_length=(1 - mask).sum(1))(ids, scores.clone())
    penalty = decoding._Penalty(1.3, ids, mask, 50)
    assert torch.equal(penalty(scores.clone()), expected)
    new = torch.tensor([5, 6, 7])
    penalty.add(new)
    longer = torch.cat([ids, new[:, None]], dim=1)
    expected = RepetitionPenaltyLogitsProcessor(1.3, prompt_ignore_length=(1 - mask).sum(1))(longer, scores.clone())
    assert torch.equal(penalty(scores.clone()), expected)


def test_cpu_threads_leave_busy_cores_alone(monkeypatch):
    monkeypatch.delenv(decoding.THREADS_ENV, raising=False)
    monkeypatch.setattr(decoding, "_last_run", (0, 0.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    assert decoding.cpu_threads() == 4
    monkeypatch.setattr(os, "getloadavg", lambda: (2.9, 2.0, 1.0))
    assert decoding.cpu_threads() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert decoding.cpu_threads() == 1
    # Its own decode that just ended (3 threads) is not someone else's load.
    monkeypatch.setattr(decoding, "_last_run", (3, decoding.time.monotonic()))
    monkeypatch.setattr(os, "getloadavg", lambda: (3.1, 3.0, 2.0))
    assert decoding.cpu_threads() == 4
    monkeypatch.setenv(decoding.THREADS_ENV, "2")
    assert decoding.cpu_threads() == 2
    monkeypatch.setenv(decoding.THREADS_ENV, "two")
    with pytest.raises(ValueError, match=decoding.THREADS_ENV):
        decoding.cpu_threads()


@pytest.mark.model
@pytest.mark.parametrize("guided", [False, True])
def test_greedy_output_is_the_generate_engines(fp32_model, conversations, guided):
    model, tokenizer = fp32_model
    settings = DecodingSettings(temperature=0, num_candidates=1, max_new_tokens=40, repetition_penalty=1.15,
                                format_guide=guided)
    baseline, loop = both_engines(model, tokenizer, conversations, settings, batch_size=len(conversations))
    assert loop == baseline  # texts, token counts and finish reasons, padded prompts included


@pytest.mark.model
def test_rows_that_end_early_are_dropped_without_changing_the_others(fp32_model, conversations, monkeypatch):
    """With a newline as a second EOS, rows end at different steps, so the loop drops finished rows."""
    model, tokenizer = fp32_model
    newline = tokenizer.convert_tokens_to_ids("Ċ")
    eos = generate._eos_ids(model, tokenizer)
    monkeypatch.setattr(generate, "_eos_ids", lambda *_: sorted({*eos, newline}))
    dropped = []
    select = decoding._BufferLayer.batch_select_indices
    monkeypatch.setattr(decoding._BufferLayer, "batch_select_indices",
                        lambda layer, indices: (dropped.append(len(indices)), select(layer, indices)))
    settings = DecodingSettings(temperature=0, num_candidates=1, max_new_tokens=30)
    baseline, loop = both_engines(model, tokenizer, conversations, settings, batch_size=len(conversations))
    assert loop == baseline
    lengths = {c.completion_tokens for cands in loop for c in cands}
    assert len(lengths) > 1 and dropped, "every row ended at the same step: nothing was dropped"


@pytest.mark.model
def test_sampling_is_seeded_and_gives_k_guided_candidates(fp32_model, conversations):
    model, tokenizer = fp32_model
    settings = DecodingSettings(temperature=0.7, top_p=0.9, num_candidates=3, max_new_tokens=24, seed=5,
                                format_guide=True)
    first = generate_batch(model, tokenizer, conversations, settings, batch_size=2)
    assert first == generate_batch(model, tokenizer, conversations, settings, batch_size=2)
    assert generate_batch(model, tokenizer, conversations, dataclasses.replace(settings, seed=6),
                          batch_size=2) != first
    for cands in first:
        assert len(cands) == 3 and len({c.text for c in cands}) > 1
        assert all(c.text.startswith('Domain:') and 1 <= c.completion_tokens <= 24 for c in cands)


def test_the_token_report_waits_its_interval_and_always_tells_the_end():
    now = [0.0]
    heard = []
    report = decoding._Report(heard.append, every_s=2.0, clock=lambda: now[0])
    for writing, at in ((3, 0.5), (3, 1.5), (3, 2.1), (2, 2.5), (1, 4.2)):
        now[0] = at
        report.step(writing)
    report.step(0, final=True)
    assert heard == [9, 12, 12]  # at 2.1 s, at 4.2 s, and at the end


def test_written_tokens_count_each_row_up_to_its_first_eos():
    eos = [2]
    generated = torch.tensor([[5, 6, 2, 2, 2], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]])
    assert generate.written_tokens(generated, eos) == 3 + 5 + 1


def test_the_generate_engine_reports_what_it_has_written(monkeypatch):
    monkeypatch.setattr(decoding, "REPORT_EVERY_S", 0.0)
    heard = []
    report = generate._TokenReport(heard.append, prompt_length=2, eos_ids=[2])
    scores = torch.zeros(2, 10)
    assert report(torch.tensor([[7, 7, 5, 2], [7, 7, 5, 6]]), scores) is scores  # it only watches
    report(torch.tensor([[7, 7, 5, 2, 2], [7, 7, 5, 6, 2]]), scores)
    assert heard == [4, 5]


@pytest.mark.model
def test_a_batch_reports_its_tokens_while_it_decodes(fp32_model, conversations, monkeypatch):
    """Every step reports (interval 0): the count grows during the batch and ends at the candidates' own."""
    monkeypatch.setattr(decoding, "REPORT_EVERY_S", 0.0)
    model, tokenizer = fp32_model
    settings = DecodingSettings(temperature=0.7, num_candidates=2, max_new_tokens=16, seed=1)
    heard: list[int] = []
    results = generate_batch(model, tokenizer, conversations, settings, batch_size=2, on_tokens=heard.append)
    written = sum(c.completion_tokens for cands in results for c in cands)
    first_batch = sum(c.completion_tokens for cands in results[:2] for c in cands)
    assert heard == sorted(heard) and len(set(heard)) > 4, heard
    assert 0 < [n for n in heard if n > 0][0] < first_batch  # heard before the first batch ended
    assert heard[-1] == written


@pytest.mark.model
def test_the_bench_runs_both_engines_at_smoke_size(tmp_path, model_dir):
    out = tmp_path / "generation.json"
    env = {**os.environ, decoding.THREADS_ENV: "1"}
    done = subprocess.run([sys.executable, "bench/generation.py", "--smoke", "--threads", "1", "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loop / generate:" in done.stdout
    figures = json.loads(out.read_text())
    for engine in ("generate", "loop"):
        run = figures["engines"][engine]
        assert run["n"] == 2 and run["tokens"] > 0 and run["threads"] == 1
    assert figures["speedup"] > 0 and figures["load_average"]
