"""The PMI scorer: cached prompts score as uncached ones, no presentation order, tie margin, empty profiles."""

from __future__ import annotations

import copy

import pytest
import torch

from training.ml.scoring import (
    A,
    B,
    PLAIN_HEADER,
    TIE,
    ProfileScore,
    Scorer,
    ScorerSettings,
    context_ids,
    context_prompt,
    decide,
    profile_target,
)

PROTEINS = [("Graph networks for protein folds", "We train graph neural networks on residue contact maps to predict "
             "protein fold classes and evaluate them on CATH domains.")]
GALAXIES = [("Weak lensing masses of galaxy clusters", "We infer galaxy cluster masses from weak gravitational lensing "
             "shear profiles with a hierarchical Bayesian model.")]
PROTEIN_PROFILE = ('Domain: "Protein structure prediction"\n\nCompetencies:\n'
                   "- Graph neural networks: trains graph networks on residue contact maps.\n"
                   "- Protein fold classification: predicts fold classes of CATH domains.")
GALAXY_PROFILE = ('Domain: "Observational cosmology"\n\nCompetencies:\n'
                  "- Weak lensing: measures shear profiles of galaxy clusters.\n"
                  "- Bayesian inference: infers cluster masses with a hierarchical Bayesian model of the shear.")
GENERIC_PROFILE = 'Domain: "Science"\n\nCompetencies:\n- Research: does research.'


@pytest.fixture(scope="module")
def scorer(fp32_model):
    model, tokenizer = fp32_model
    return Scorer(model, tokenizer, ScorerSettings(baseline="other"))


def test_settings_name_the_bad_field():
    for kwargs, field in [(dict(baseline="shuffled"), "baseline"), (dict(part="domain"), "part"),
                          (dict(margin=-0.1), "margin"), (dict(margin=float("nan")), "margin"),
                          (dict(max_profile_tokens=0), "max_profile_tokens")]:
        with pytest.raises(ValueError, match=field):
            ScorerSettings(**kwargs).validate()


def test_a_pair_is_decided_by_the_difference_with_a_tie_margin():
    high, low = ProfileScore(-2.0, -3.0, 10), ProfileScore(-2.5, -3.3, 10)  # PMI 1.0 and 0.8
    assert decide(high, low, margin=0.1).preferred == A
    assert decide(low, high, margin=0.1).preferred == B
    assert decide(high, low, margin=0.25).preferred == TIE
    assert decide(high, low, margin=0.1).difference == pytest.approx(0.2)
    assert decide(high, high, margin=0.0).preferred == TIE


def test_swapping_a_pair_mirrors_its_decision():
    mirror = {A: B, B: A, TIE: TIE}
    scores = [ProfileScore(-2.0 - i / 7, -3.0 + i / 11, 5) for i in range(6)] + [ProfileScore(None, None, 0, "empty")]
    for x in scores:
        for y in scores:
            forward, backward = decide(x, y, 0.05), decide(y, x, 0.05)
            assert backward.preferred == mirror[forward.preferred]
            if forward.difference is not None:
                assert backward.difference == -forward.difference


@pytest.mark.model
def test_cached_prompt_scores_equal_a_full_pass_per_profile(scorer):
    # Different lengths, so the batch is padded; the prompt's cache is expanded over it.
    targets = scorer.targets([PROTEIN_PROFILE, GENERIC_PROFILE, GALAXY_PROFILE])
    assert len({len(t.ids) for t in targets}) == 3
    cached = scorer.token_logprobs(PROTEINS, targets)
    uncached = scorer.token_logprobs_uncached(PROTEINS, targets)
    for c, u, t in zip(cached, uncached, targets):
        assert c.shape == (len(t.ids),)
        torch.testing.assert_close(c, u, atol=1e-4, rtol=1e-4)


@pytest.mark.model
def test_a_profiles_score_does_not_depend_on_the_others_scored_with_it(scorer):
    alone = scorer.score(PROTEINS, [GALAXY_PROFILE], baselines=[GALAXIES])[0]
    together = scorer.score(PROTEINS, [PROTEIN_PROFILE, GENERIC_PROFILE, GALAXY_PROFILE], baselines=[GALAXIES])[2]
    assert together.pmi == pytest.approx(alone.pmi, abs=1e-4)
    assert together.tokens == alone.tokens > 0


@pytest.mark.model
def test_each_prompt_is_encoded_once_for_all_profiles(fp32_model):
    model, tokenizer = fp32_model
    scorer = Scorer(model, tokenizer, ScorerSettings(baseline="none"))
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape),
                                           with_kwargs=True)
    try:
        scorer.score(PROTEINS, [PROTEIN_PROFILE, GALAXY_PROFILE, GENERIC_PROFILE])
        assert scorer.encodings == 2  # the sample's abstracts and the abstract-less baseline
        scorer.score(GALAXIES, [GALAXY_PROFILE, PROTEIN_PROFILE])
        assert scorer.encodings == 3  # the baseline was kept
    finally:
        hook.remove()
    prompt_lengths = {len(context_ids(tokenizer, PROTEINS)), len(context_ids(tokenizer, GALAXIES)),
                      len(context_ids(tokenizer, ()))}
    assert sum(shape[1] in prompt_lengths for shape in calls) == 3
    # Every other pass carried a batch of profiles (all of a sample's fit in one here).
    assert [shape[0] for shape in calls if shape[1] not in prompt_lengths] == [3, 3, 2, 2]


@pytest.mark.model
def test_the_abstracts_raise_the_profile_that_describes_them(scorer):
    on_proteins = scorer.score(PROTEINS, [PROTEIN_PROFILE, GALAXY_PROFILE], baselines=[GALAXIES])
    assert decide(*on_proteins, margin=0.0).preferred == A
    on_galaxies = scorer.score(GALAXIES, [PROTEIN_PROFILE, GALAXY_PROFILE], baselines=[PROTEINS])
    assert decide(*on_galaxies, margin=0.0).preferred == B


@pytest.mark.model
def test_an_empty_profile_gets_no_score_and_loses(scorer):
    progress = []
    empty, blank, real = scorer.score(PROTEINS, ["", "  \n ", PROTEIN_PROFILE], baselines=[GALAXIES],
                                      on_progress=lambda done, total: progress.append((done, total)))
    assert empty.pmi is None and blank.pmi is None and "empty" in empty.error
    assert real.pmi is not None and real.error == ""
    assert decide(empty, real, 0.5).preferred == B
    assert decide(empty, blank, 0.5).preferred == TIE
    assert progress[-1] == (2, 2)  # one real profile, read in two contexts


@pytest.mark.model
def test_baseline_other_needs_other_abstracts(scorer):
    with pytest.raises(ValueError, match="other"):
        scorer.score(PROTEINS, [PROTEIN_PROFILE])
    with pytest.raises(ValueError, match="abstract"):
        scorer.score([], [PROTEIN_PROFILE], baselines=[GALAXIES])


@pytest.mark.model
def test_competencies_part_scores_only_the_lines_after_the_header(fp32_model):
    _, tokenizer = fp32_model
    whole = profile_target(tokenizer, PROTEIN_PROFILE, "whole", 512)
    part = profile_target(tokenizer, PROTEIN_PROFILE, "competencies", 512)
    assert whole.ids == part.ids and whole.scored_from == 0
    scored = tokenizer.decode(part.ids[part.scored_from:])
    assert scored.lstrip().startswith("- Graph neural networks") and "Domain" not in scored


@pytest.mark.model
def test_a_model_without_chat_template_gets_a_plain_prompt_after_bos(fp32_model):
    _, tokenizer = fp32_model
    chat = context_prompt(tokenizer, PROTEINS)
    assert chat.startswith("<|im_start|>system\nYou read the abstracts") and "SmolLM" not in chat
    plain_tokenizer = copy.deepcopy(tokenizer)
    plain_tokenizer.chat_template = None
    plain = context_prompt(plain_tokenizer, PROTEINS)
    assert plain.startswith(PLAIN_HEADER) and "<|im_start|>" not in plain
    assert "Abstract" not in context_prompt(plain_tokenizer, ())
    ids = context_ids(plain_tokenizer, PROTEINS)
    assert ids[0] == plain_tokenizer.bos_token_id


@pytest.fixture(scope="module")
def gemma(model_cache):
    from training.ml.models import load_model, offline_model_dir

    # make install converts it; a bare checkout converts it here once (about a minute).
    return load_model(str(offline_model_dir(model_cache, "gemma")), model_cache, device="cpu", dtype="fp32")


@pytest.mark.model
def test_gemma_scores_past_its_sliding_window_as_a_full_pass_does(gemma):
    model, tokenizer = gemma
    assert not tokenizer.chat_template  # a base model: the plain prompt, BOS first
    window = model.config.sliding_window
    long_text = " ".join([PROTEINS[0][1]] * 24)
    abstracts = [(PROTEINS[0][0], long_text)]
    assert len(context_ids(tokenizer, abstracts)) > window  # the sliding layers' cache is already cut
    scorer = Scorer(model, tokenizer, ScorerSettings(baseline="none"))
    targets = scorer.targets([PROTEIN_PROFILE, GENERIC_PROFILE])
    cached = scorer.token_logprobs(abstracts, targets)
    uncached = scorer.token_logprobs_uncached(abstracts, targets[:1])
    torch.testing.assert_close(cached[0], uncached[0], atol=1e-4, rtol=1e-4)
    grounded, generic = scorer.score(PROTEINS, [PROTEIN_PROFILE, GALAXY_PROFILE])
    assert decide(grounded, generic, margin=0.0).preferred == A
