"""Integrity lives in the database: these writes bypass forms and must still be refused."""

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from annotation.models import (
    Assignment, Campaign, CampaignItem, Comparison, Document, Generator, Judge, JudgeVerdict, Profile, Sample, Vote,
)

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


@pytest.fixture
def pair():
    sample = Sample.objects.create(name="s")
    generator = Generator.objects.create(name="g")
    a = Profile.objects.create(sample=sample, generator=generator, candidate_index=0, raw_text="x", is_valid=True)
    b = Profile.objects.create(sample=sample, generator=generator, candidate_index=1, raw_text="y", is_valid=True)
    return sample, a, b




def assert_refused(create):
    with pytest.raises(IntegrityError), transaction.atomic():
        create()


def test_documents_need_a_title_and_a_unique_id():
    Document.objects.create(external_id="d", title="t", abstract="a", content_hash="h")
    assert_refused(lambda: Document.objects.create(external_id="d", title="t2", abstract="a", content_hash="h"))
    assert_refused(lambda: Document.objects.create(external_id="e", title="", abstract="a", content_hash="h"))


def test_a_sample_split_must_be_known():
    assert_refused(lambda: Sample.objects.create(name="s", split="validation"))


def test_generator_settings_are_checked():
    assert_refused(lambda: Generator.objects.create(name="g", top_p=1.5))
    assert_refused(lambda: Generator.objects.create(name="h", temperature=-1))


def test_a_profile_is_valid_or_says_why_not(pair):
    sample, a, _ = pair
    assert_refused(lambda: Profile.objects.create(sample=sample, generator=a.generator, candidate_index=5,
                                                  raw_text="z", is_valid=False, invalid_reason=""))
    assert_refused(lambda: Profile.objects.create(sample=sample, generator=a.generator, candidate_index=0,
                                                  raw_text="dup", is_valid=True))


def test_comparisons_are_unordered_and_unique(pair):
    sample, a, b = pair
    Comparison.objects.create(sample=sample, profile_a=a, profile_b=b)
    assert_refused(lambda: Comparison.objects.create(sample=sample, profile_a=a, profile_b=b))
    assert_refused(lambda: Comparison.objects.create(sample=sample, profile_a=b, profile_b=a))


def test_a_judge_gives_one_verdict_per_order_and_an_invalid_one_has_no_preference(pair):
    sample, a, b = pair
    comparison = Comparison.objects.create(sample=sample, profile_a=a, profile_b=b)
    judge = Judge.objects.create(name="j", model="m")
    JudgeVerdict.objects.create(comparison=comparison, judge=judge, order="ab", preferred="a", is_valid=True)
    assert_refused(lambda: JudgeVerdict.objects.create(comparison=comparison, judge=judge, order="ab",
                                                       preferred="b", is_valid=True))
    assert_refused(lambda: JudgeVerdict.objects.create(comparison=comparison, judge=judge, order="ba",
                                                       preferred="a", is_valid=False))
    assert_refused(lambda: JudgeVerdict.objects.create(comparison=comparison, judge=judge, order="ba",
                                                       preferred="", is_valid=True, confidence=1.5))


def test_an_expert_votes_once_per_comparison(pair):
    sample, a, b = pair
    comparison = Comparison.objects.create(sample=sample, profile_a=a, profile_b=b)
    expert = get_user_model().objects.create(username="e")
    campaign = Campaign.objects.create(name="c")
    other = Campaign.objects.create(name="c2")
    first = Assignment.objects.create(item=CampaignItem.objects.create(campaign=campaign, comparison=comparison),
                                      expert=expert)
    second = Assignment.objects.create(item=CampaignItem.objects.create(campaign=other, comparison=comparison),
                                       expert=expert)
    Vote.objects.create(assignment=first, expert=expert, comparison=comparison, campaign=first.item.campaign,
                        choice="a", first_choice="a")
    assert_refused(lambda: Vote.objects.create(assignment=second, expert=expert, comparison=comparison,
                                               campaign=second.item.campaign, choice="b", first_choice="b"))
    assert_refused(lambda: Assignment.objects.create(item=first.item, expert=expert))


def test_a_vote_choice_must_be_known(pair):
    sample, a, b = pair
    comparison = Comparison.objects.create(sample=sample, profile_a=a, profile_b=b)
    expert = get_user_model().objects.create(username="e")
    item = CampaignItem.objects.create(campaign=Campaign.objects.create(name="c"), comparison=comparison)
    assignment = Assignment.objects.create(item=item, expert=expert)
    assert_refused(lambda: Vote.objects.create(assignment=assignment, expert=expert, comparison=comparison,
                                               campaign=item.campaign, choice="maybe", first_choice="a"))


def test_campaign_overlap_is_at_least_one():
    assert_refused(lambda: Campaign.objects.create(name="c", overlap=0))
