"""No answer is ever lost: undo and revise keep what they replace, the blind first answer survives the reveal,
answered items are withdrawn and never deleted, and figures and exports read only the current answers."""

import re

import pytest
from django.db.models import ProtectedError

from annotation.models import Assignment, CampaignItem, SupersededVote, Vote
from tests.review_factories import add_verdicts, fast_passwords, make_campaign, make_judge  # noqa: F401

pytestmark = pytest.mark.django_db
HTMX = {"HX-Request": "true"}


def open_pair(client, campaign) -> Assignment:
    pk = int(re.search(r'data-assignment="(\d+)"', client.get(f"/review/{campaign.pk}/").content.decode()).group(1))
    Assignment.objects.filter(pk=pk).update(flipped=False)  # "left" is canonical "a"
    return Assignment.objects.get(pk=pk)


def vote(client, assignment, choice="left", **data):
    return client.post(f"/review/assignment/{assignment.pk}/vote", {"choice": choice, **data}, headers=HTMX)


def undo(client, campaign, vote_obj):
    return client.post(f"/review/{campaign.pk}/undo", {"undo_vote": vote_obj.pk}, headers=HTMX)


def reveal_campaign(alice, ab="b", ba="b"):
    judge = make_judge()
    campaign = make_campaign([alice], pairs=2, judge_display="reveal", judge=judge)
    for item in campaign.items.all():
        add_verdicts(item.comparison, judge, ab, ba)
    return campaign


def test_undo_after_the_reveal_keeps_the_blind_first_answer(client_for, alice):
    campaign = reveal_campaign(alice)
    client = client_for(alice)
    assignment = open_pair(client, campaign)
    assert "The judge prefers B" in vote(client, assignment, "left", rationale="blind").content.decode()
    undo(client, campaign, Vote.objects.get())
    # The expert saw the judge prefer B, undid, and now answers B: that is a change after the reveal, not a
    # blind B.
    vote(client, assignment, "right")
    current = Vote.objects.get()
    assert (current.first_choice, current.choice, current.revised_after_reveal) == ("a", "b", True)
    old = SupersededVote.objects.get()
    assert (old.reason, old.choice, old.first_choice, old.rationale) == ("undone", "a", "a", "blind")


def test_undo_before_any_reveal_lets_the_expert_change_the_blind_answer(client_for, alice):
    campaign = make_campaign([alice], pairs=2, judge_display="hidden")
    client = client_for(alice)
    assignment = open_pair(client, campaign)
    vote(client, assignment, "left")
    undo(client, campaign, Vote.objects.get())
    vote(client, assignment, "right")
    assert (Vote.objects.get().first_choice, Vote.objects.get().revised_after_reveal) == ("b", False)
    assert SupersededVote.objects.get().choice == "a"


def test_a_revision_keeps_the_answer_it_replaces(client_for, alice):
    campaign = reveal_campaign(alice)
    client = client_for(alice)
    assignment = open_pair(client, campaign)
    vote(client, assignment, "left", rationale="first")
    client.post(f"/review/assignment/{assignment.pk}/revise", {"choice": "right", "rationale": "second"},
                headers=HTMX)
    current, old = Vote.objects.get(), SupersededVote.objects.get()
    assert (current.first_choice, current.choice, current.rationale) == ("a", "b", "second")
    assert (old.vote_id, old.reason, old.choice, old.rationale) == (current.pk, "revised", "a", "first")


def test_votes_and_answered_items_cannot_be_deleted(client_for, alice):
    campaign = make_campaign([alice], pairs=2)
    client = client_for(alice)
    vote(client, open_pair(client, campaign))
    with pytest.raises(ProtectedError):
        campaign.delete()
    with pytest.raises(ProtectedError):
        alice.delete()
    assert Vote.objects.count() == 1


def test_ticking_delete_on_an_answered_item_inline_is_refused_with_a_message(client_for, alice, admin_user):
    campaign = make_campaign([alice], pairs=2)
    expert = client_for(alice)
    vote(expert, open_pair(expert, campaign))
    answered = CampaignItem.objects.answered().get()
    client = client_for(admin_user)
    items = list(campaign.items.order_by("pk"))
    data = {"name": campaign.name, "judge_display": "hidden", "overlap": 1, "is_active": "on",
            "experts": [alice.pk], "items-TOTAL_FORMS": len(items), "items-INITIAL_FORMS": len(items),
            "items-MIN_NUM_FORMS": 0, "items-MAX_NUM_FORMS": 1000}
    for i, item in enumerate(items):
        data.update({f"items-{i}-id": item.pk, f"items-{i}-campaign": campaign.pk,
                     f"items-{i}-comparison": item.comparison_id, f"items-{i}-gold_answer": ""})
        if item == answered:
            data[f"items-{i}-DELETE"] = "on"
    response = client.post(f"/admin/annotation/campaign/{campaign.pk}/change/", data)
    assert response.status_code == 200 and "protected related objects: vote alice" in response.content.decode()
    assert CampaignItem.objects.filter(pk=answered.pk).exists() and Vote.objects.count() == 1
    assert client.get(f"/admin/annotation/campaignitem/{answered.pk}/delete/").status_code == 403


def test_a_withdrawn_item_keeps_its_votes_out_of_figures_and_queues(client_for, alice, admin_user, bob):
    from annotation.agreement import figures

    campaign = make_campaign([alice, bob], pairs=2)
    client = client_for(alice)
    first = open_pair(client, campaign)
    vote(client, first)
    admin = client_for(admin_user)
    admin.post("/admin/annotation/campaignitem/", {"action": "withdraw", "_selected_action": [first.item_id]})
    assert CampaignItem.objects.get(pk=first.item_id).withdrawn_at is not None
    labels = figures.gather(campaign)
    assert labels.votes == [] and labels.withdrawn == 1 and Vote.objects.count() == 1
    # Bob is never handed the withdrawn pair.
    bobs = client_for(bob)
    for _ in range(2):
        pk = re.search(r'data-assignment="(\d+)"', bobs.get(f"/review/{campaign.pk}/").content.decode())
        if pk:
            assert Assignment.objects.get(pk=pk.group(1)).item_id != first.item_id
            bobs.post(f"/review/assignment/{pk.group(1)}/vote", {"choice": "left"})


def test_the_admin_shows_an_items_full_history(client_for, alice, admin_user):
    campaign = reveal_campaign(alice)
    client = client_for(alice)
    assignment = open_pair(client, campaign)
    vote(client, assignment, "left", rationale="blind")
    undo(client, campaign, Vote.objects.get())
    vote(client, assignment, "tie")
    client.post(f"/review/assignment/{assignment.pk}/revise", {"choice": "right"}, headers=HTMX)
    page = client_for(admin_user).get(f"/admin/annotation/campaignitem/{assignment.item_id}/change/").content.decode()
    history = page[page.index("History (every answer"):]
    assert history.count("<tr>") == 4  # header, undone, revised, current
    assert "Undone at" in history and "replaced by the next answer on the pair" in history
    assert "Revised after the reveal at" in history and "current" in history and "A → B" in history


def test_agreement_and_exports_say_how_many_superseded_answers_there_are(client_for, alice, admin_user):
    from annotation.agreement import figures

    campaign = make_campaign([alice], pairs=2)
    client = client_for(alice)
    assignment = open_pair(client, campaign)
    vote(client, assignment, "left")
    undo(client, campaign, Vote.objects.get())
    vote(client, assignment, "right")
    labels = figures.gather(campaign)
    assert [v.choice for v in labels.votes] == ["b"] and labels.superseded == 1
    page = client_for(admin_user).get(f"/admin-tools/agreement/?campaign={campaign.pk}").content.decode()
    assert "1 answer superseded by an undo or a revision" in page
