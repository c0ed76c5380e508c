"""Every review view × every role: anonymous, the assigned expert, an unassigned expert, an outsider, an admin."""

from types import SimpleNamespace

import pytest

from annotation.review import assignments
from annotation.models import Assignment, Vote
from tests.review_factories import add_verdicts, fast_passwords, make_campaign, make_judge  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture
def review(alice):
    """Alice's reveal-after-vote campaign: one pair she voted on (revisable, undoable), one open pair."""
    judge = make_judge()
    campaign = make_campaign([alice], pairs=3, judge_display="reveal", judge=judge)
    for item in campaign.items.all():
        add_verdicts(item.comparison, judge, "a", "a")
    voted = assignments.claim(alice, campaign)
    vote = assignments.record_vote(voted, choice="a", rationale="", flags={})
    open_one = assignments.claim(alice, campaign)
    return SimpleNamespace(campaign=campaign, voted=voted, vote=vote, open=open_one)


# (name, method, url, form data, alice's status without htmx)
VIEWS = [
    ("queue", "get", lambda r: "/review/", {}, 302),
    ("campaign", "get", lambda r: f"/review/{r.campaign.pk}/", {}, 200),
    ("assignment", "get", lambda r: f"/review/assignment/{r.open.pk}/", {}, 200),
    ("vote", "post", lambda r: f"/review/assignment/{r.open.pk}/vote", {"choice": "left"}, 302),
    ("skip", "post", lambda r: f"/review/assignment/{r.open.pk}/skip", {}, 302),
    ("revise", "post", lambda r: f"/review/assignment/{r.voted.pk}/revise", {"choice": "right"}, 302),
    ("undo", "post", lambda r: f"/review/{r.campaign.pk}/undo", {"undo_vote": "VOTE"}, 302),
]
IDS = [view[0] for view in VIEWS]


def _call(client, review, method, url, data, **headers):
    data = {key: (str(review.vote.pk) if value == "VOTE" else value) for key, value in data.items()}
    return getattr(client, method)(url(review), data, headers=headers)


@pytest.mark.parametrize("name, method, url, data, status", VIEWS, ids=IDS)
def test_anonymous_users_are_sent_to_log_in(client, review, name, method, url, data, status):
    response = _call(client, review, method, url, data)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=")


@pytest.mark.parametrize("name, method, url, data, status", VIEWS, ids=IDS)
def test_the_assigned_expert_can_use_every_view(client_for, alice, review, name, method, url, data, status):
    response = _call(client_for(alice), review, method, url, data)
    assert response.status_code == status
    assert "Server-Timing" in response


@pytest.mark.parametrize("name, method, url, data, status", VIEWS[1:], ids=IDS[1:])  # the queue is a page
def test_every_view_answers_htmx_with_the_panel_only(client_for, alice, review, name, method, url, data, status):
    response = _call(client_for(alice), review, method, url, data, HX_Request="true")
    page = response.content.decode()
    assert response.status_code == 200
    assert page.lstrip().startswith('<form id="review"') and "<html" not in page


@pytest.mark.parametrize("name, method, url, data, status", VIEWS[1:], ids=IDS[1:])
def test_an_unassigned_expert_gets_404_and_changes_nothing(client_for, bob, review, name, method, url, data, status):
    before = list(Vote.objects.values_list("pk", "choice")), list(Assignment.objects.values_list("pk", "skipped_at"))
    assert _call(client_for(bob), review, method, url, data).status_code == 404
    after = list(Vote.objects.values_list("pk", "choice")), list(Assignment.objects.values_list("pk", "skipped_at"))
    assert after == before


def test_an_unassigned_expert_sees_an_empty_queue(client_for, bob, review):
    response = client_for(bob).get("/review/")
    assert response.status_code == 200
    assert "No review campaign is assigned to you" in response.content.decode()
    assert review.campaign.name not in response.content.decode()


def test_an_expert_of_the_same_campaign_cannot_open_anothers_pair(client_for, bob, review):
    review.campaign.experts.add(bob)
    client = client_for(bob)
    assert client.get(f"/review/assignment/{review.open.pk}/").status_code == 404
    assert client.post(f"/review/assignment/{review.open.pk}/vote", {"choice": "left"}).status_code == 404
    assert client.post(f"/review/{review.campaign.pk}/undo", {"undo_vote": review.vote.pk}).status_code == 302
    assert Vote.objects.filter(pk=review.vote.pk).exists()  # bob's undo cannot reach alice's vote


@pytest.mark.parametrize("persona", ["admin_user", "charlie"])
@pytest.mark.parametrize("name, method, url, data, status", VIEWS, ids=IDS)
def test_non_experts_get_403(client_for, request, review, persona, name, method, url, data, status):
    response = _call(client_for(request.getfixturevalue(persona)), review, method, url, data)
    assert response.status_code == 403


@pytest.mark.parametrize("name, method, url, data, status", [v for v in VIEWS if v[1] == "post"],
                         ids=[v[0] for v in VIEWS if v[1] == "post"])
def test_answers_need_a_post(client_for, alice, review, name, method, url, data, status):
    assert client_for(alice).get(url(review)).status_code == 405


def test_answers_need_the_csrf_token(alice, review):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post(f"/review/assignment/{review.open.pk}/vote", {"choice": "left"}).status_code == 403
    assert not Vote.objects.filter(assignment=review.open).exists()


def test_an_inactive_campaign_is_closed_to_its_experts(client_for, alice, review):
    review.campaign.is_active = False
    review.campaign.save()
    client = client_for(alice)
    assert client.get(f"/review/{review.campaign.pk}/").status_code == 404
    assert client.post(f"/review/assignment/{review.open.pk}/vote", {"choice": "left"}).status_code == 404


def test_an_expert_removed_from_a_campaign_can_no_longer_answer(client_for, alice, review):
    review.campaign.experts.remove(alice)
    assert client_for(alice).post(f"/review/assignment/{review.open.pk}/vote", {"choice": "left"}).status_code == 404
