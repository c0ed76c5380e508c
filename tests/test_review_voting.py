"""Answering a pair over HTTP: canonical storage, timing, one round trip, double submits, undo, the judge modes."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from annotation.models import Assignment, Vote
from tests.review_factories import add_verdicts, fast_passwords, make_campaign, make_judge  # noqa: F401

pytestmark = pytest.mark.django_db
HTMX = {"HX-Request": "true"}


def shown_pk(page: str) -> int | None:
    match = re.search(r'data-assignment="(\d+)"', page)
    return int(match.group(1)) if match else None


def open_pair(client, campaign) -> Assignment:
    pk = shown_pk(client.get(f"/review/{campaign.pk}/").content.decode())
    return Assignment.objects.select_related("item__comparison").get(pk=pk)


def vote(client, assignment, choice="left", **data):
    return client.post(f"/review/assignment/{assignment.pk}/vote", {"choice": choice, **data}, headers=HTMX)


@pytest.mark.parametrize("flipped, shown, stored", [(False, "left", "a"), (True, "left", "b"), (True, "right", "a"),
                                                    (True, "tie", "tie"), (False, "both_bad", "both_bad")])
def test_a_vote_is_stored_in_canonical_terms(client_for, alice, flipped, shown, stored):
    campaign = make_campaign([alice], pairs=1)
    client = client_for(alice)
    assignment = open_pair(client, campaign)
    Assignment.objects.filter(pk=assignment.pk).update(flipped=flipped)
    vote(client, assignment, shown)
    saved = Vote.objects.get()
    assert (saved.choice, saved.first_choice, saved.shown_flipped) == (stored, stored, flipped)


def test_left_and_right_are_randomised_per_expert_and_kept(client_for, alice, make_user):
    experts = [make_user(f"e{i}", expert=True) for i in range(24)]
    campaign = make_campaign(experts, pairs=1, overlap=24)
    for expert in experts:
        client_for(expert).get(f"/review/{campaign.pk}/")
    flips = set(Assignment.objects.values_list("flipped", flat=True))
    assert flips == {True, False}  # 24 coin flips all alike: one chance in 8 million


def test_the_time_from_showing_to_voting_is_measured_on_the_server(client_for, alice):
    campaign = make_campaign([alice], pairs=1)
    client = client_for(alice)
    assignment = open_pair(client, campaign)
    Assignment.objects.filter(pk=assignment.pk).update(shown_at=timezone.now() - timedelta(seconds=42))
    vote(client, assignment, seconds_spent="1")  # whatever a client claims is ignored
    assert 42 <= Vote.objects.get().seconds_spent < 52


def test_rationale_and_competency_flags_are_kept_by_profile_and_name(client_for, alice):
    campaign = make_campaign([alice], pairs=1)
    client = client_for(alice)
    assignment = open_pair(client, campaign)
    Assignment.objects.filter(pk=assignment.pk).update(flipped=True)
    vote(client, assignment, "right", rationale="B invents quantum chemistry.",
         **{"flag-left-2": "unsupported", "flag-right-0": "irrelevant", "flag-right-1": "nonsense"})
    saved = Vote.objects.get()
    # Flipped: left shows profile b, right shows profile a.
    assert saved.rationale == "B invents quantum chemistry."
    assert saved.competency_flags == {"b": {"Quantum chemistry": "unsupported"}, "a": {"Bayesian statistics": "irrelevant"}}


def test_a_vote_answers_htmx_with_the_next_pair_in_one_round_trip(client_for, alice):
    campaign = make_campaign([alice], pairs=2)
    client = client_for(alice)
    first = open_pair(client, campaign)
    response = vote(client, first)
    page = response.content.decode()
    assert response.status_code == 200 and "<html" not in page
    second = shown_pk(page)
    assert second and second != first.pk
    assert "1 of 2 judgments done or under way · yours: 1" in re.sub(r"<[^>]+>", "", page)


def test_a_plain_form_post_redirects_to_the_next_pair(client_for, alice):
    campaign = make_campaign([alice], pairs=2)
    client = client_for(alice)
    first = open_pair(client, campaign)
    response = client.post(f"/review/assignment/{first.pk}/vote", {"choice": "tie"})
    assert response.status_code == 302 and response["Location"] == f"/review/{campaign.pk}/"
    page = client.get(response["Location"]).content.decode()
    assert shown_pk(page) not in (None, first.pk)


def test_a_double_submit_or_stale_page_makes_no_second_vote(client_for, alice):
    campaign = make_campaign([alice], pairs=2)
    client = client_for(alice)
    first = open_pair(client, campaign)
    next_pk = shown_pk(vote(client, first, "left").content.decode())
    again = vote(client, first, "right").content.decode()
    assert "already had your answer" in again and shown_pk(again) == next_pk
    assert list(Vote.objects.values_list("choice", flat=True)) == [Vote.objects.get().choice]
    assert Vote.objects.count() == 1 and Assignment.objects.count() == 2


def test_a_pair_skipped_in_another_tab_cannot_be_voted_on(client_for, alice):
    campaign = make_campaign([alice], pairs=2)
    client = client_for(alice)
    first = open_pair(client, campaign)
    client.post(f"/review/assignment/{first.pk}/skip", headers=HTMX)
    assert "already had your answer" in vote(client, first).content.decode()
    assert not Vote.objects.exists()


def test_a_vote_without_a_choice_is_refused_with_a_reason(client_for, alice):
    campaign = make_campaign([alice], pairs=1)
    client = client_for(alice)
    assignment = open_pair(client, campaign)
    response = client.post(f"/review/assignment/{assignment.pk}/vote", {"rationale": "kept"}, headers=HTMX)
    page = response.content.decode()
    assert response.status_code == 422 and "Choose A, B, tie or both bad" in page
    assert ">kept</textarea>" in page and shown_pk(page) == assignment.pk
    assert not Vote.objects.exists()


def test_undo_brings_back_the_last_pair_and_allows_a_new_answer(client_for, alice):
    campaign = make_campaign([alice], pairs=2)
    client = client_for(alice)
    first = open_pair(client, campaign)
    vote(client, first, "left")
    last = Vote.objects.get()
    page = client.post(f"/review/{campaign.pk}/undo", {"undo_vote": last.pk}, headers=HTMX).content.decode()
    assert shown_pk(page) == first.pk and not Vote.objects.exists()
    vote(client, first, "right")
    assert Vote.objects.get().assignment_id == first.pk


def test_after_an_undo_the_pair_left_open_comes_next_before_a_new_one(client_for, alice):
    # The undo reopens the first pair while the second, claimed by the vote, is still open: answering the
    # first must bring back the second, not claim a third (and leave the second open for good).
    campaign = make_campaign([alice], pairs=3)
    client = client_for(alice)
    first = open_pair(client, campaign)
    second_pk = shown_pk(vote(client, first, "left").content.decode())
    client.post(f"/review/{campaign.pk}/undo", {"undo_vote": Vote.objects.get().pk}, headers=HTMX)
    assert shown_pk(vote(client, first, "right").content.decode()) == second_pk
    assert Assignment.objects.filter(expert=alice).count() == 2


def test_undo_twice_takes_back_only_one_vote(client_for, alice):
    campaign = make_campaign([alice], pairs=3)
    client = client_for(alice)
    vote(client, open_pair(client, campaign))
    vote(client, open_pair(client, campaign))
    latest = Vote.objects.order_by("-created_at").first()
    for _ in range(2):
        client.post(f"/review/{campaign.pk}/undo", {"undo_vote": latest.pk}, headers=HTMX)
    assert Vote.objects.count() == 1


def test_undo_without_javascript_redirects_to_the_reopened_pair(client_for, alice):
    campaign = make_campaign([alice], pairs=2)
    client = client_for(alice)
    first = open_pair(client, campaign)
    client.post(f"/review/assignment/{first.pk}/vote", {"choice": "left"})
    response = client.post(f"/review/{campaign.pk}/undo", {"undo_vote": Vote.objects.get().pk})
    assert response["Location"] == f"/review/assignment/{first.pk}/"
    assert shown_pk(client.get(response["Location"]).content.decode()) == first.pk


def test_the_last_pair_leads_to_a_calm_end(client_for, alice):
    campaign = make_campaign([alice], pairs=1)
    client = client_for(alice)
    page = vote(client, open_pair(client, campaign)).content.decode()
    assert "Nothing left for you here" in page and "Undo last vote" in page
    overview = client.get("/review/")
    assert overview.status_code == 200 and campaign.name in overview.content.decode()


# Judge display modes


@pytest.fixture
def judged(alice):
    def make(display: str, ab: str = "a", ba: str = "a", reasoning: str = "A grounds every claim."):
        judge = make_judge()
        campaign = make_campaign([alice], pairs=2, judge_display=display, judge=judge)
        for item in campaign.items.all():
            add_verdicts(item.comparison, judge, ab, ba, reasoning)
        return campaign
    return make


def test_hidden_mode_never_shows_the_judge(client_for, alice, judged):
    campaign = judged("hidden")
    client = client_for(alice)
    assignment = open_pair(client, campaign)
    assert "A grounds every claim" not in client.get(f"/review/{campaign.pk}/").content.decode()
    assert "A grounds every claim" not in vote(client, assignment).content.decode()


@pytest.mark.parametrize("flipped, shown", [(False, "prefers A"), (True, "prefers B")])
def test_alongside_mode_shows_the_verdict_in_the_experts_own_labels(client_for, alice, judged, flipped, shown):
    campaign = judged("alongside", "a", "a")
    client = client_for(alice)
    assignment = open_pair(client, campaign)
    Assignment.objects.filter(pk=assignment.pk).update(flipped=flipped)
    page = client.get(f"/review/{campaign.pk}/").content.decode()
    assert f"The judge {shown}, in both presentation orders" in page
    assert "A grounds every claim. (ab)" in page and "A grounds every claim. (ba)" in page


def test_a_verdict_that_flips_with_the_order_is_shown_as_inconsistent(client_for, alice, judged):
    campaign = judged("alongside", "a", "b")
    page = client_for(alice).get(f"/review/{campaign.pk}/").content.decode()
    assert "The judge was inconsistent" in page


def test_reveal_mode_shows_the_verdict_after_the_vote_and_keeps_both_answers(client_for, alice, judged):
    campaign = judged("reveal", "b", "b")
    client = client_for(alice)
    assignment = open_pair(client, campaign)
    Assignment.objects.filter(pk=assignment.pk).update(flipped=False)
    assert "A grounds every claim" not in client.get(f"/review/{campaign.pk}/").content.decode()
    revealed = vote(client, assignment, "left", rationale="first thought").content.decode()
    assert "The judge prefers B" in revealed and shown_pk(revealed) == assignment.pk
    assert f'hx-post="/review/assignment/{assignment.pk}/revise"' in revealed
    assert 'value="left" required checked' in revealed and "first thought</textarea>" in revealed
    page = client.post(f"/review/assignment/{assignment.pk}/revise", {"choice": "right", "rationale": "judge is right"},
                       headers=HTMX).content.decode()
    assert shown_pk(page) not in (None, assignment.pk)
    saved = Vote.objects.get()
    assert (saved.first_choice, saved.choice, saved.revised_after_reveal) == ("a", "b", True)
    assert saved.rationale == "judge is right"


def test_confirming_the_same_answer_after_the_reveal_is_not_a_revision(client_for, alice, judged):
    campaign = judged("reveal")
    client = client_for(alice)
    assignment = open_pair(client, campaign)
    vote(client, assignment, "tie")
    client.post(f"/review/assignment/{assignment.pk}/revise", {"choice": "tie"}, headers=HTMX)
    saved = Vote.objects.get()
    assert (saved.first_choice, saved.choice, saved.revised_after_reveal) == ("tie", "tie", False)


def test_reveal_without_javascript_goes_through_the_pairs_own_page(client_for, alice, judged):
    campaign = judged("reveal")
    client = client_for(alice)
    assignment = open_pair(client, campaign)
    response = client.post(f"/review/assignment/{assignment.pk}/vote", {"choice": "left"})
    assert response["Location"] == f"/review/assignment/{assignment.pk}/"
    assert "Your answer is saved" in client.get(response["Location"]).content.decode()


def test_only_the_latest_vote_can_be_revised(client_for, alice, judged):
    campaign = judged("reveal")
    client = client_for(alice)
    first = open_pair(client, campaign)
    vote(client, first, "left")
    client.post(f"/review/assignment/{first.pk}/revise", {"choice": "left"}, headers=HTMX)
    vote(client, open_pair(client, campaign), "left")
    page = client.post(f"/review/assignment/{first.pk}/revise", {"choice": "right"}, headers=HTMX).content.decode()
    assert "can no longer be changed" in page
    assert Vote.objects.get(assignment=first).revised_after_reveal is False


def test_revising_is_refused_outside_reveal_campaigns(client_for, alice, judged):
    campaign = judged("alongside")
    client = client_for(alice)
    assignment = open_pair(client, campaign)
    vote(client, assignment, "left")
    client.post(f"/review/assignment/{assignment.pk}/revise", {"choice": "right"}, headers=HTMX)
    assert Vote.objects.get().choice == Vote.objects.get().first_choice


def test_reveal_goes_straight_on_when_the_judge_has_no_valid_verdict(client_for, alice, judged):
    campaign = judged("reveal", "", "")
    client = client_for(alice)
    assignment = open_pair(client, campaign)
    assert shown_pk(vote(client, assignment).content.decode()) != assignment.pk


# Cost of a round trip


def _queries(response) -> int:
    return int(re.search(r'desc="(\d+) queries"', response["Server-Timing"]).group(1))


def _vote_and_next_queries(client, alice, display: str, size: int) -> int:
    campaign = make_campaign([alice], pairs=size, judge_display=display, judge=make_judge(f"judge-{size}"))
    for item in campaign.items.all():
        add_verdicts(item.comparison, campaign.judge, "a", "a")
    assignment = open_pair(client, campaign)
    response = vote(client, assignment)
    if display == "reveal":  # the vote showed the verdict; the confirmation brings the next pair
        response = client.post(f"/review/assignment/{assignment.pk}/revise", {"choice": "left"}, headers=HTMX)
    assert shown_pk(response.content.decode()) not in (None, assignment.pk)
    return _queries(response)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("display", ["hidden", "reveal", "alongside"])
def test_the_queries_of_a_vote_do_not_grow_with_the_queue(client_for, alice, display):
    client = client_for(alice)
    assert _vote_and_next_queries(client, alice, display, 2) == _vote_and_next_queries(client, alice, display, 40)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("display, budget", [("hidden", 10), ("reveal", 10), ("alongside", 11)])
def test_a_vote_and_the_next_pair_stay_within_the_query_budget(client_for, alice, display, budget, settings):
    # Two of these are the session and the user with the expert role; alongside adds the verdicts. The
    # campaign's totals are cached, as in production (the page that shows the first pair counts them).
    settings.REVIEW_PROGRESS_CACHE_SECONDS = 60
    assert _vote_and_next_queries(client_for(alice), alice, display, 10) <= budget


def test_a_skip_is_taken_back_with_u_and_the_pair_shown_again(client_for, alice):
    campaign = make_campaign([alice], pairs=2)
    client = client_for(alice)
    first = open_pair(client, campaign)
    page = client.post(f"/review/assignment/{first.pk}/skip", headers=HTMX).content.decode()
    assert "comes back at the end of your queue" in page and f'name="undo_skip" value="{first.pk}"' in page
    back = client.post(f"/review/{campaign.pk}/undo", {"undo_skip": first.pk}, headers=HTMX).content.decode()
    assert shown_pk(back) == first.pk and Assignment.objects.get(pk=first.pk).skipped_at is None


def test_someone_elses_skip_cannot_be_taken_back(client_for, alice, bob):
    campaign = make_campaign([alice, bob], pairs=2)
    first = open_pair(client_for(alice), campaign)
    client_for(alice).post(f"/review/assignment/{first.pk}/skip", headers=HTMX)
    page = client_for(bob).post(f"/review/{campaign.pk}/undo", {"undo_skip": first.pk}, headers=HTMX).content.decode()
    assert "cannot be taken back" in page and Assignment.objects.get(pk=first.pk).skipped_at is not None


def test_the_done_screen_counts_the_pairs_set_aside(client_for, alice):
    campaign = make_campaign([alice], pairs=1)
    client = client_for(alice)
    first = open_pair(client, campaign)
    again = client.post(f"/review/assignment/{first.pk}/skip", headers=HTMX).content.decode()
    assert shown_pk(again) == first.pk and "You skipped this pair earlier" in again
    done = client.post(f"/review/assignment/{first.pk}/skip", headers=HTMX).content.decode()
    assert "Nothing left for you here" in done and "You skipped 1 pair" in done
