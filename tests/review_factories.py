"""Campaign data for the review tests: samples with abstracts, two profiles per pair, judge verdicts."""

from __future__ import annotations

import itertools

import pytest

from annotation.models import (
    Campaign,
    CampaignItem,
    Comparison,
    Document,
    Generator,
    Judge,
    JudgeVerdict,
    Profile,
    Sample,
    SampleDocument,
)

ABSTRACTS = [
    ("Bayesian models of protein folding", "We develop Bayesian statistical models of protein folding and validate "
     "them on molecular dynamics simulations of small proteins."),
    ("Deep learning for cryo-EM", "A convolutional network denoises cryo-EM micrographs; learning from simulated "
     "data improves the reconstruction of protein structures."),
]
PROFILE_A = {
    "domain": "Computational structural biology",
    "competencies": [
        {"name": "Bayesian statistics", "description": "Builds Bayesian models of folding."},
        {"name": "Molecular dynamics", "description": "Validates models on simulations."},
        {"name": "Protein structure", "description": "Studies how proteins fold."},
    ],
}
PROFILE_B = {
    "domain": "Machine learning for biology",
    "competencies": [
        {"name": "Deep learning", "description": "Trains convolutional networks on micrographs."},
        {"name": "Protein structures", "description": "Reconstructs protein structures."},
        {"name": "Quantum chemistry", "description": "Not in the abstracts at all."},
    ],
}
_counter = itertools.count(1)


def raw_text(profile: dict) -> str:
    lines = [f'Domain: "{profile["domain"]}"', "", "Competencies:"]
    lines += [f"- {c['name']}: {c['description']}" for c in profile["competencies"]]
    return "\n".join(lines)


def make_comparison(profile_a: dict = PROFILE_A, profile_b: dict = PROFILE_B, *, abstracts=ABSTRACTS) -> Comparison:
    n = next(_counter)
    sample = Sample.objects.create(name=f"sample-{n}")
    for position, (title, text) in enumerate(abstracts):
        document = Document.objects.create(external_id=f"doc-{n}-{position}", title=title, abstract=text,
                                           year=2020 + position, content_hash=f"{n}-{position}")
        SampleDocument.objects.create(sample=sample, document=document, position=position)
    generator, _ = Generator.objects.get_or_create(name="secret-generator-name")
    first, second = (
        Profile.objects.create(sample=sample, generator=generator, candidate_index=index, raw_text=raw_text(p),
                               domain=p["domain"], competencies=p["competencies"], is_valid=True)
        for index, p in enumerate((profile_a, profile_b))
    )
    return Comparison.objects.create(sample=sample, profile_a=first, profile_b=second)


def make_campaign(experts=(), *, pairs: int = 3, overlap: int = 1, judge_display: str = "hidden",
                  judge: Judge | None = None, guidelines: str = "", gold: dict[int, str] | None = None,
                  name: str | None = None) -> Campaign:
    """A campaign of ``pairs`` comparisons; ``gold`` maps a pair's position to its known answer."""
    campaign = Campaign.objects.create(name=name or f"campaign-{next(_counter)}", overlap=overlap,
                                       judge_display=judge_display, judge=judge, guidelines=guidelines)
    campaign.experts.add(*experts)
    for position in range(pairs):
        CampaignItem.objects.create(campaign=campaign, comparison=make_comparison(),
                                    gold_answer=(gold or {}).get(position, ""))
    return campaign


def make_judge(name: str = "judge") -> Judge:
    return Judge.objects.create(name=name, model="m")


def add_verdicts(comparison: Comparison, judge: Judge, ab: str, ba: str, reasoning: str = "Because.") -> None:
    """Canonical verdicts for both orders; "" stores an invalid answer."""
    for order, preferred in (("ab", ab), ("ba", ba)):
        JudgeVerdict.objects.create(comparison=comparison, judge=judge, order=order, preferred=preferred,
                                    is_valid=bool(preferred), reasoning=f"{reasoning} ({order})",
                                    error="" if preferred else "no JSON")


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """The personas' passwords are hashed with a fast hasher: the default one costs ~0.2 s per user."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
