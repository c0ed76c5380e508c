"""Who reviews what: handing out comparisons fairly, and recording, skipping, revising and undoing votes.

Fair means least reviewed first, never the same comparison twice to one expert, and never more than the
campaign's overlap of experts on one comparison. Two experts asking at the same moment must not both take
the last slot of an item:

- PostgreSQL locks the candidate row with ``SELECT … FOR UPDATE SKIP LOCKED``, so the second expert moves
  on to the next item instead of queueing behind the first.
- SQLite has no row locks. There the count is raised by a conditional UPDATE
  (``… WHERE assignment_count < overlap``) that only one writer can win; the loser tries the next item.

Both databases run the same code: the conditional UPDATE is what guarantees the overlap, the lock is what
keeps PostgreSQL from wasting attempts on it.

Answers are guarded the same way: a vote first sets ``Assignment.voted_at`` with a conditional UPDATE, a skip
sets ``skipped_at``, each only while neither is set. A double submit, a stale page or a skip from another
tab therefore never adds a second answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from django.db import IntegrityError, connection, transaction
from django.db.models import BigIntegerField, F
from django.db.models.expressions import RawSQL
from django.utils import timezone

from .models import Assignment, Campaign, CampaignItem, Vote

# Each failed attempt means another expert took that item a moment ago; a handful is plenty.
CLAIM_ATTEMPTS = 5
# What the next comparison is shown with; one query fetches it all. The documents come by the sample's id.
SCREEN_RELATED = ("comparison__profile_a", "comparison__profile_b")


@dataclass(frozen=True)
class Progress:
    """Where the campaign stands: the judgments it needs (non-gold pairs × overlap), those done or under way,
    and this expert's own votes.

    "Taken" sums the items' assignment counts instead of counting votes: a count of votes joins every vote
    of the campaign on every request, while the sum reads only the campaign's items. It runs ahead of the
    votes by the pairs open on screens right now.
    """

    needed: int
    taken: int
    mine: int
    # The expert's latest vote in the campaign: the only one undo may take back.
    last_vote_id: int | None

    @property
    def percent(self) -> int:
        return min(100, round(100 * self.taken / self.needed)) if self.needed else 100


# The campaign's item count and the sum of their assignment counts travel as one number, items × 2³² + taken:
# one pass over the campaign's items instead of two (the only part of the progress that grows with the queue).
# taken ≤ items × overlap stays far below 2³² for any campaign a team of experts can review.
_TOTALS_SHIFT = 2**32


def progress_annotations(campaign: Campaign, expert) -> dict:
    """Progress as annotations, so it rides along with a query the screen makes anyway.

    Written as SQL: the same subqueries built from querysets cost ~1.5 ms of CPU per request to compile, more
    than running them. Standard SQL, the same on PostgreSQL and SQLite.
    """
    item, assignment, vote = (connection.ops.quote_name(model._meta.db_table)
                              for model in (CampaignItem, Assignment, Vote))
    mine = (f"FROM {vote} v INNER JOIN {assignment} a ON a.id = v.assignment_id "
            f"INNER JOIN {item} i ON i.id = a.item_id WHERE i.campaign_id = %s AND v.expert_id = %s")
    return {
        "progress_totals": RawSQL(
            f"SELECT COUNT(*) * {_TOTALS_SHIFT} + COALESCE(SUM(assignment_count), 0) FROM {item} "
            "WHERE campaign_id = %s AND gold_answer = ''", (campaign.pk,), BigIntegerField()
        ),
        "progress_mine": RawSQL(f"SELECT COUNT(*) {mine}", (campaign.pk, expert.pk), BigIntegerField()),
        "progress_last_vote": RawSQL(f"SELECT v.id {mine} ORDER BY v.created_at DESC, v.id DESC LIMIT 1",
                                     (campaign.pk, expert.pk), BigIntegerField()),
    }


def progress_from(row, campaign: Campaign) -> Progress:
    items, taken = divmod(int(row.progress_totals), _TOTALS_SHIFT)
    return Progress(
        needed=items * campaign.overlap,
        taken=taken,
        mine=row.progress_mine,
        last_vote_id=row.progress_last_vote,
    )


def campaign_progress(campaign: Campaign, expert) -> Progress:
    row = Campaign.objects.filter(pk=campaign.pk).annotate(**progress_annotations(campaign, expert)).get()
    return progress_from(row, campaign)


def has_work(expert, campaign: Campaign) -> bool:
    """Whether the expert has anything left to do in the campaign, without claiming it."""
    return (
        Assignment.objects.open().filter(expert=expert, item__campaign=campaign).exists()
        or CampaignItem.objects.next_for(expert, campaign).exists()
    )


def next_assignment(expert, campaign: Campaign, *, may_have_open: bool = True) -> tuple[Assignment | None, Progress]:
    """The expert's next comparison in the campaign: one left open (after an undo, a reload), else a new one.

    ``may_have_open=False`` skips the look for an open one when the caller already knows there is none.
    """
    if may_have_open:
        open_one = (
            Assignment.objects.open()
            .filter(expert=expert, item__campaign=campaign)
            .select_related(*(f"item__{path}" for path in SCREEN_RELATED))
            .annotate(**progress_annotations(campaign, expert))
            .order_by("created_at", "pk")
            .first()
        )
        if open_one:
            return open_one, progress_from(open_one, campaign)
    claimed = claim(expert, campaign)
    if claimed is None:
        return None, campaign_progress(campaign, expert)
    return claimed, progress_from(claimed.item, campaign)


def claim(expert, campaign: Campaign) -> Assignment | None:
    """Give the expert the least reviewed item they may still take; None when there is none."""
    for _ in range(CLAIM_ATTEMPTS):
        try:
            with transaction.atomic():
                item = (
                    CampaignItem.objects.next_for(expert, campaign)
                    .select_for_update(skip_locked=True, of=("self",))
                    .select_related(*SCREEN_RELATED)
                    .annotate(**progress_annotations(campaign, expert))
                    .first()
                )
                if item is None:
                    return None
                if not item.gold_answer and not _take_slot(item, campaign):
                    continue
                return Assignment.objects.create(
                    item=item, expert=expert, flipped=random.random() < 0.5, shown_at=timezone.now()
                )
        except IntegrityError:
            continue  # the same expert claimed this item in another tab a moment ago
    return None


def _take_slot(item: CampaignItem, campaign: Campaign) -> bool:
    taken = CampaignItem.objects.filter(pk=item.pk, assignment_count__lt=campaign.overlap).update(
        assignment_count=F("assignment_count") + 1
    )
    return taken == 1


def record_vote(assignment: Assignment, *, choice: str, rationale: str, flags: dict) -> Vote | None:
    """Store the expert's answer, in canonical terms; None if the assignment was already answered."""
    now = timezone.now()
    with transaction.atomic():
        won = Assignment.objects.filter(pk=assignment.pk, voted_at__isnull=True, skipped_at__isnull=True).update(
            voted_at=now
        )
        if not won:
            return None
        shown_at = assignment.shown_at or now
        return Vote.objects.create(
            assignment=assignment,
            expert_id=assignment.expert_id,
            comparison_id=assignment.item.comparison_id,
            choice=choice,
            first_choice=choice,
            rationale=rationale,
            competency_flags=flags,
            shown_flipped=assignment.flipped,
            seconds_spent=max(0.0, (now - shown_at).total_seconds()),
        )


def skip(assignment: Assignment) -> bool:
    """Set the comparison aside for this expert for good, and give its slot back for someone else."""
    with transaction.atomic():
        won = Assignment.objects.filter(pk=assignment.pk, voted_at__isnull=True, skipped_at__isnull=True).update(
            skipped_at=timezone.now()
        )
        if won and not assignment.item.gold_answer:
            CampaignItem.objects.filter(pk=assignment.item_id, assignment_count__gt=0).update(
                assignment_count=F("assignment_count") - 1
            )
    return bool(won)


def revise(vote: Vote, *, choice: str, rationale: str, flags: dict) -> None:
    """The expert's final answer after seeing the judge; the first one stays in ``first_choice``."""
    Vote.objects.filter(pk=vote.pk).update(
        choice=choice,
        revised_after_reveal=choice != vote.first_choice,
        rationale=rationale,
        competency_flags=flags,
        updated_at=timezone.now(),
    )


def undo_last_vote(expert, campaign: Campaign, vote_id: int) -> int | None:
    """Take back ``vote_id`` if it is still the expert's latest vote in the campaign; the reopened
    assignment's id, or None.

    Naming the vote keeps a repeated undo (a double key press, a stale page) from reaching further back.
    """
    with transaction.atomic():
        latest = (
            Vote.objects.in_campaign(campaign)
            .filter(expert=expert)
            .select_for_update(of=("self",))
            .order_by("-created_at", "-pk")
            .first()
        )
        if latest is None or latest.pk != vote_id:
            return None
        latest.delete()
        # The clock restarts: the next vote's time is measured from this showing.
        Assignment.objects.filter(pk=latest.assignment_id).update(voted_at=None, shown_at=timezone.now())
    return latest.assignment_id
