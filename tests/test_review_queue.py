"""Fair assignment: least reviewed first, never twice to one expert, overlap met exactly, even under a race."""

import re
import threading
from collections import Counter

import pytest
from django.db import connection
from django.test import Client

from annotation.review import assignments
from annotation.models import Assignment, CampaignItem, Vote
from tests.review_factories import fast_passwords, make_campaign  # noqa: F401


def _answer_all(expert, campaign) -> int:
    """Vote on everything the campaign gives this expert; how many votes that made."""
    votes = 0
    for _ in range(100):  # bounded: a campaign in these tests has far fewer pairs
        assignment, _ = assignments.next_assignment(expert, campaign)
        if assignment is None:
            return votes
        votes += assignments.record_vote(assignment, choice="a", rationale="", flags={}) is not None
    raise AssertionError("the queue never ran dry")


@pytest.mark.django_db
def test_the_least_reviewed_pair_comes_first(alice, bob, make_user):
    campaign = make_campaign([alice, bob], pairs=2, overlap=2)
    first, _ = assignments.next_assignment(alice, campaign)
    second, _ = assignments.next_assignment(bob, campaign)
    assert first.item != second.item
    third = make_user("carol", expert=True)
    campaign.experts.add(third)
    _answer_all(alice, campaign)
    # Both pairs now have one reviewer each; carol takes the lower id first, and never a full one.
    assert assignments.next_assignment(third, campaign)[0].item == min(first.item, second.item, key=lambda i: i.pk)


@pytest.mark.django_db
def test_a_reload_shows_the_same_open_pair_instead_of_claiming_another(alice):
    campaign = make_campaign([alice], pairs=3)
    first, _ = assignments.next_assignment(alice, campaign)
    again, _ = assignments.next_assignment(alice, campaign)
    assert again == first and Assignment.objects.count() == 1


@pytest.mark.django_db
def test_an_expert_never_gets_the_same_comparison_twice_even_across_campaigns(alice):
    campaign = make_campaign([alice], pairs=2)
    other = make_campaign([alice], pairs=0)
    for item in campaign.items.all():
        CampaignItem.objects.create(campaign=other, comparison=item.comparison)
    assert _answer_all(alice, campaign) == 2
    assert assignments.next_assignment(alice, other)[0] is None


@pytest.mark.django_db
def test_overlap_is_met_exactly(alice, bob, make_user):
    experts = [alice, bob, make_user("carol", expert=True)]
    campaign = make_campaign(experts, pairs=4, overlap=2)
    done = [_answer_all(expert, campaign) for expert in experts]
    assert sum(done) == 8
    assert set(Counter(Vote.objects.values_list("comparison", flat=True)).values()) == {2}
    assert set(campaign.items.values_list("assignment_count", flat=True)) == {2}


@pytest.mark.django_db
def test_a_skip_gives_the_slot_to_someone_else(alice, bob):
    campaign = make_campaign([alice, bob], pairs=1, overlap=1)
    assignment, _ = assignments.next_assignment(alice, campaign)
    assert assignments.next_assignment(bob, campaign)[0] is None  # the only slot is alice's
    assert assignments.skip(assignment)
    assert assignments.next_assignment(bob, campaign)[0].item == assignment.item
    # bob has the only slot now: the skipped pair cannot come back to alice.
    assert assignments.next_assignment(alice, campaign)[0] is None


@pytest.mark.django_db
def test_a_skipped_pair_comes_back_once_at_the_end_of_the_queue(alice):
    campaign = make_campaign([alice], pairs=3, overlap=1)
    skipped, _ = assignments.next_assignment(alice, campaign)
    assert assignments.skip(skipped)
    shown = []
    for _ in range(3):
        assignment, _ = assignments.next_assignment(alice, campaign)
        shown.append(assignment.pk)
        if assignment.pk != skipped.pk:
            assignments.record_vote(assignment, choice="a", rationale="", flags={})
    assert shown[-1] == skipped.pk and shown.count(skipped.pk) == 1, "after the two new pairs, not before"
    assert campaign.items.get(pk=skipped.item_id).assignment_count == 1, "it took its slot back"
    assert assignments.skip(Assignment.objects.get(pk=skipped.pk))
    assert assignments.next_assignment(alice, campaign)[0] is None, "skipped twice, it stays aside"
    assert assignments.skipped_count(alice, campaign) == 1


@pytest.mark.django_db
def test_a_skip_is_undone_with_its_slot_unless_another_expert_took_it(alice, bob):
    campaign = make_campaign([alice, bob], pairs=1, overlap=1)
    assignment, _ = assignments.next_assignment(alice, campaign)
    assignments.skip(assignment)
    reopened = assignments.undo_skip(alice, campaign, assignment.pk)
    assert reopened.pk == assignment.pk and reopened.skipped_at is None
    assert Assignment.objects.get(pk=assignment.pk).skips == 0 and campaign.items.get().assignment_count == 1
    assert assignments.next_assignment(bob, campaign)[0] is None
    assignments.skip(Assignment.objects.get(pk=assignment.pk))
    assert assignments.next_assignment(bob, campaign)[0] is not None
    assert assignments.undo_skip(alice, campaign, assignment.pk) is None
    assert assignments.undo_skip(bob, campaign, assignment.pk) is None, "only one's own skip"


@pytest.mark.django_db
def test_the_shown_total_is_never_below_the_experts_own_votes(alice, settings):
    from django.core.cache import caches

    settings.REVIEW_PROGRESS_CACHE_SECONDS = 60
    caches["process"].clear()
    campaign = make_campaign([alice], pairs=4, overlap=1)
    assert assignments.campaign_progress(campaign, alice).taken == 0  # counted now, reused for a minute
    for _ in range(3):
        assignments.record_vote(assignments.next_assignment(alice, campaign)[0], choice="a", rationale="", flags={})
    progress = assignments.campaign_progress(campaign, alice)
    assert progress.mine == 3 and progress.taken >= 3 and progress.needed >= progress.taken


@pytest.mark.django_db
def test_gold_pairs_go_to_every_expert_whatever_the_overlap(alice, bob, make_user):
    experts = [alice, bob, make_user("carol", expert=True)]
    campaign = make_campaign(experts, pairs=3, overlap=1, gold={2: "a"})
    gold = campaign.items.get(gold_answer="a")
    assert [_answer_all(expert, campaign) for expert in experts] == [3, 1, 1]
    assert Vote.objects.filter(comparison=gold.comparison).count() == 3
    # Gold pairs never fill up, so they stay among the least reviewed for everyone who comes later.
    assert gold.assignments.count() == 3 and CampaignItem.objects.get(pk=gold.pk).assignment_count == 0
    # Progress counts the judgments the overlap asks for; gold ones are extra.
    progress = assignments.campaign_progress(campaign, alice)
    assert (progress.needed, progress.taken, progress.mine) == (2, 2, 3)


@pytest.mark.django_db
def test_a_second_answer_to_the_same_pair_is_refused(alice):
    campaign = make_campaign([alice], pairs=1)
    assignment, _ = assignments.next_assignment(alice, campaign)
    assert assignments.record_vote(assignment, choice="a", rationale="", flags={}) is not None
    assert assignments.record_vote(assignment, choice="b", rationale="", flags={}) is None
    assert not assignments.skip(assignment)
    assert list(Vote.objects.values_list("choice", flat=True)) == ["a"]
    assert campaign.items.get().assignment_count == 1


@pytest.mark.django_db
def test_undo_reaches_only_the_latest_vote_once(alice):
    campaign = make_campaign([alice], pairs=2)
    first = assignments.record_vote(assignments.next_assignment(alice, campaign)[0], choice="a", rationale="",
                                    flags={})
    second = assignments.record_vote(assignments.next_assignment(alice, campaign)[0], choice="b", rationale="",
                                     flags={})
    assert assignments.undo_last_vote(alice, campaign, first.pk) is None
    assert assignments.undo_last_vote(alice, campaign, second.pk) == second.assignment_id
    assert assignments.undo_last_vote(alice, campaign, second.pk) is None  # a repeated undo stops here
    assert list(Vote.objects.values_list("pk", flat=True)) == [first.pk]
    assert assignments.next_assignment(alice, campaign)[0].pk == second.assignment_id


def _race_in_threads(experts, campaign) -> list[int]:
    """Every expert answers the whole campaign at once, each in its own thread and database connection."""
    barrier = threading.Barrier(len(experts))
    counts, errors = [0] * len(experts), []

    def work(index, expert):
        try:
            barrier.wait()
            counts[index] = _answer_all(expert, campaign)
        except Exception as error:  # reported below, in the test's thread
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=pair) for pair in enumerate(experts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return counts


def _assert_overlap_exact(campaign, overlap: int, total: int):
    per_pair = Counter(Vote.objects.values_list("comparison", flat=True))
    assert len(per_pair) == campaign.items.count() and set(per_pair.values()) == {overlap}
    assert set(campaign.items.values_list("assignment_count", flat=True)) == {overlap}
    assert Vote.objects.count() == total
    assert Assignment.objects.count() == total  # no stray claims left open
    assert len(set(Vote.objects.values_list("expert", "comparison"))) == total


@pytest.mark.django_db(transaction=True)
def test_experts_racing_on_sqlite_never_exceed_the_overlap(make_user):
    experts = [make_user(f"expert{i}", expert=True) for i in range(6)]
    campaign = make_campaign(experts, pairs=8, overlap=2)
    counts = _race_in_threads(experts, campaign)
    assert sum(counts) == 16
    _assert_overlap_exact(campaign, overlap=2, total=16)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_twenty_experts_racing_over_http_meet_the_overlap_exactly(make_user):
    """20 experts, each a browser-like client in its own thread, vote until their queues run dry.

    Each also re-sends its previous vote now and then (a double submit from a stale page), which must be
    answered with the next pair and create nothing.
    """
    experts = [make_user(f"expert{i:02}", expert=True) for i in range(20)]
    campaign = make_campaign(experts, pairs=30, overlap=3)
    clients = []
    for expert in experts:
        client = Client()
        client.force_login(expert)
        clients.append(client)
    barrier = threading.Barrier(len(experts))
    confirmed: list[list[int]] = [[] for _ in experts]
    errors = []

    def work(index, client):
        try:
            barrier.wait()
            page = client.get(f"/review/{campaign.pk}/").content.decode()
            previous = None
            for step in range(60):  # bounded: nobody can get more than the 30 pairs
                match = re.search(r'data-assignment="(\d+)"', page)
                if match is None:
                    return
                pk = int(match.group(1))
                if previous and step % 4 == 0:
                    stale = client.post(f"/review/assignment/{previous}/vote", {"choice": "left"}, HTTP_HX_REQUEST="true")
                    assert "already had your answer" in stale.content.decode()
                response = client.post(f"/review/assignment/{pk}/vote", {"choice": "right"}, HTTP_HX_REQUEST="true")
                assert response.status_code == 200, response.status_code
                confirmed[index].append(pk)
                page, previous = response.content.decode(), pk
            raise AssertionError("the queue never ran dry")
        except Exception as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=pair) for pair in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors[:3]
    assert sum(map(len, confirmed)) == 90
    # None lost: every vote a client saw accepted is stored, on the pair it was shown.
    stored = set(Vote.objects.values_list("assignment_id", flat=True))
    assert stored == {pk for pks in confirmed for pk in pks}
    _assert_overlap_exact(campaign, overlap=3, total=90)
