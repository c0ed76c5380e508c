"""Who reviews what: handing out comparisons fairly, and recording, skipping, revising and undoing votes.

Fair means least reviewed first, never the same comparison twice to one expert, and never more than the
campaign's overlap of experts on one comparison (``CampaignItem.objects.claimable_for``). Two experts asking
at once cannot both take an item's last slot: the slot is taken by a conditional UPDATE that only one wins
(``CampaignItem.take_slot``), and on PostgreSQL the candidate row is locked with SKIP LOCKED, so the second
expert moves on to the next item instead of waiting for the first. Answers are guarded the same way
(``Assignment.mark_answered``): a double submit, a stale page or a skip from another tab adds no second answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import caches
from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, F, Max, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from ..models import (
    Assignment, Campaign, CampaignItem, Document, Job, JobKind, JudgeVerdict, SupersededReason, SupersededVote, Vote,
)

# A skipped pair comes back at the end of the expert's queue this many times; skipped again, it stays aside.
RETURNS_AFTER_SKIP = 1
# Each failed attempt means another expert took that item a moment ago; a handful is plenty.
CLAIM_ATTEMPTS = 5
# What the comparison screen shows of an item: its comparison and the two profiles, and of those only the
# fields it reads (a profile also carries its generation's settings and costs).
PAIR = ("comparison__profile_a", "comparison__profile_b")
PAIR_FIELDS = ("campaign_id", "gold_answer", "assignment_count", "comparison__sample_id",
               *(f"comparison__{profile}__{field}" for profile in ("profile_a", "profile_b")
                 for field in ("domain", "competencies", "raw_text")))


@dataclass(frozen=True)
class Progress:
    """Where the campaign stands: the judgments it needs (non-gold pairs × overlap), those done or under way,
    and this expert's own votes.

    "Taken" sums the items' assignment counts, which reads only the campaign's items, not its votes; it runs
    ahead of the votes by the pairs open on screens right now. Needed and taken may be up to
    settings.REVIEW_PROGRESS_CACHE_SECONDS old; the expert's own count is always exact.
    """

    needed: int
    taken: int
    mine: int
    # The expert's latest vote in the campaign: the only one undo may take back.
    last_vote_id: int | None

    @property
    def percent(self) -> int:
        # An empty campaign is not a finished one: its bar stays empty.
        return min(100, round(100 * self.taken / self.needed)) if self.needed else 0


def campaign_progress(campaign: Campaign, expert) -> Progress:
    totals = _campaign_totals(campaign)
    theirs = Vote.objects.filter(campaign_id=campaign.pk, expert_id=expert.pk)
    if totals.gold:
        mine = theirs.aggregate(mine=Count("pk"), counted=Count("pk", filter=Q(assignment__item__gold_answer="")),
                                last=Max("pk"))
    else:  # no gold pairs: every vote counts, and the count needs no join to the items
        mine = theirs.aggregate(mine=Count("pk"), last=Max("pk"))
        mine["counted"] = mine["mine"]
    # The totals may be a moment old; they never show less than the expert has just done themselves (gold
    # pairs are extra: the totals leave them out).
    taken = max(totals.taken, mine["counted"])
    return Progress(needed=max(totals.items * campaign.overlap, taken), taken=taken, mine=mine["mine"],
                    last_vote_id=mine["last"])


def skipped_count(expert, campaign: Campaign) -> int:
    """The pairs the expert skipped and that stay set aside (read on the done screen only)."""
    return Assignment.objects.filter(expert=expert, item__campaign=campaign, skipped_at__isnull=False).count()


@dataclass(frozen=True)
class Totals:
    items: int  # non-gold items not withdrawn
    taken: int  # the sum of their assignment counts
    gold: int  # gold items, withdrawn ones included


def _campaign_totals(campaign: Campaign) -> Totals:
    """The campaign's totals, counted at most once per settings.REVIEW_PROGRESS_CACHE_SECONDS in each process:
    the count reads every item of the campaign."""

    def count() -> Totals:
        counted = Q(gold_answer="", withdrawn_at__isnull=True)
        return Totals(**CampaignItem.objects.filter(campaign_id=campaign.pk).aggregate(
            items=Count("pk", filter=counted), taken=Coalesce(Sum("assignment_count", filter=counted), 0),
            gold=Count("pk", filter=~Q(gold_answer=""))))

    seconds = settings.REVIEW_PROGRESS_CACHE_SECONDS
    return caches["process"].get_or_set(f"review-totals:{campaign.pk}", count, seconds) if seconds else count()


def _samples(n: int) -> str:
    return f"{n} more sample{'s are' if n != 1 else ' is'}"


def still_coming(campaign: Campaign) -> str:
    """What background work will still add pairs to the campaign, for an expert with nothing left to do; "" if
    none. Read only on that screen, never in the vote round trip."""
    jobs = Job.objects.active().filter(kind=JobKind.JUDGE, params__campaign_id=campaign.pk)
    parts = []
    for job in jobs:
        if job.params.get("after_job"):
            waiting = job.stats.get("samples_waiting", len(job.params.get("sample_ids") or ()))
            judging = job.stats.get("samples_judging", 0)
            if waiting:
                parts.append(f"{_samples(waiting)} being generated")
            if judging:
                parts.append(f"{_samples(judging)} being judged")
        else:
            parts.append("the judge is still at work on this campaign")
    if not parts:
        return ""
    text = "; ".join(parts)
    return f"{text[0].upper()}{text[1:]}; new pairs appear here."


def has_work(expert, campaign: Campaign) -> bool:
    """Whether the expert has anything left to do in the campaign (a pair waiting, or one to claim), without
    claiming it."""
    waiting = Assignment.objects.waiting_for(expert).filter(item__campaign=campaign, item__withdrawn_at__isnull=True)
    claimable = CampaignItem.objects.claimable_for(expert, campaign)
    coming_back = skipped_to_return(expert, campaign)
    return (Campaign.objects.filter(pk=campaign.pk)
            .filter(Exists(waiting) | Exists(claimable) | Exists(coming_back)).exists())


def abstracts_of(assignment: Assignment) -> list[Document]:
    """The documents of the pair's sample, in the sample's order: the abstracts the screen shows."""
    return list(Document.objects.filter(sampledocument__sample=assignment.item.comparison.sample_id)
                .order_by("sampledocument__position").only("title", "year", "abstract"))


def verdicts_on(assignment: Assignment, judge_id: int) -> list[JudgeVerdict]:
    """The judge's verdicts on the pair, both presentation orders."""
    return list(JudgeVerdict.objects.filter(comparison=assignment.item.comparison_id, judge=judge_id)
                .select_related("judge"))


def for_answer(expert):
    """The expert's own assignments as a vote or a skip needs them: with their campaign, and ``others_open``
    (whether the expert has other pairs waiting in that campaign, so the look for one after the answer is
    spared when there is none). The answer is stored by the assignment's ``flipped``: no profiles."""
    others = Assignment.objects.waiting_for(expert).filter(item__campaign_id=OuterRef("item__campaign_id"))
    return (Assignment.objects.of_expert(expert).select_related("item__campaign")
            .annotate(others_open=Exists(others.exclude(pk=OuterRef("pk")))))


def for_screen(expert):
    """The expert's own assignments as showing one again needs them: also the pair, the vote, and
    ``latest_vote_id`` (their latest vote in the campaign, the only one they may revise)."""
    latest = Vote.objects.filter(expert=expert, campaign=OuterRef("item__campaign")).latest_first()
    return (for_answer(expert).select_related("vote", *(f"item__{path}" for path in PAIR))
            .annotate(latest_vote_id=Subquery(latest.values("pk")[:1])))


def next_assignment(expert, campaign: Campaign, *, may_have_open: bool = True) -> tuple[Assignment | None, Progress]:
    """The expert's next comparison in the campaign: one left open (after an undo, a reload), else a new one.

    ``may_have_open=False`` skips the look for an open one when the caller already knows there is none.
    """
    # Counted before a claim, so the bar shows where the campaign stood when the expert asked for the pair.
    progress = campaign_progress(campaign, expert)
    if may_have_open:
        waiting = (Assignment.objects.waiting_for(expert).filter(item__campaign=campaign, item__withdrawn_at__isnull=True)
                   .select_related(*(f"item__{path}" for path in PAIR)).order_by("created_at", "pk"))
        open_one = waiting.first()
        if open_one is not None:
            return open_one, progress
    # A skipped pair comes back only when nothing new is left: the look costs the vote round trip nothing.
    return claim(expert, campaign) or bring_back_skipped(expert, campaign), progress


def skipped_to_return(expert, campaign: Campaign):
    """The expert's skipped pairs in the campaign that may still come back (not withdrawn meanwhile)."""
    return Assignment.objects.filter(expert=expert, item__campaign=campaign, item__withdrawn_at__isnull=True,
                                     skipped_at__isnull=False, skips__lte=RETURNS_AFTER_SKIP)


def bring_back_skipped(expert, campaign: Campaign) -> Assignment | None:
    """Reopen the expert's earliest skipped pair that has come back fewer than RETURNS_AFTER_SKIP times, if a
    slot is still free (another expert may have taken it since); None when there is none."""
    skipped = (skipped_to_return(expert, campaign)
               .select_related(*(f"item__{path}" for path in PAIR)).order_by("skipped_at", "pk"))
    for assignment in skipped[:CLAIM_ATTEMPTS]:
        if reopen(assignment, campaign):
            return assignment
    return None


def reopen(assignment: Assignment, campaign: Campaign) -> bool:
    """Make a skipped assignment open again, taking back its slot; False if the overlap is met meanwhile or it
    is no longer skipped (another tab)."""
    now = timezone.now()
    with transaction.atomic():
        if not assignment.item.gold_answer and not assignment.item.take_slot(campaign.overlap):
            return False
        if not Assignment.objects.filter(pk=assignment.pk, skipped_at__isnull=False).update(skipped_at=None,
                                                                                            shown_at=now):
            transaction.set_rollback(True)
            return False
    assignment.skipped_at, assignment.shown_at = None, now
    return True


def claim(expert, campaign: Campaign) -> Assignment | None:
    """Give the expert the least reviewed item they may still take; None when there is none."""
    for _ in range(CLAIM_ATTEMPTS):
        try:
            with transaction.atomic():
                item = (CampaignItem.objects.claimable_for(expert, campaign)
                        .select_for_update(skip_locked=True, of=("self",))
                        .select_related(*PAIR).only(*PAIR_FIELDS).first())
                if item is None:
                    return None
                if not item.gold_answer and not item.take_slot(campaign.overlap):
                    continue
                return Assignment.objects.create(
                    item=item, expert=expert, flipped=random.random() < 0.5, shown_at=timezone.now()
                )
        except IntegrityError:
            continue  # the same expert claimed this item in another tab a moment ago
    return None


def record_vote(assignment: Assignment, *, choice: str, rationale: str, flags: dict,
                revealed: bool = False) -> Vote | None:
    """Store the expert's answer, in canonical terms; None if the assignment was already answered.

    ``revealed``: the judge's verdict is shown next. A blind answer kept from before an undo stays the first
    choice (``Assignment.blind_choice``).
    """
    now = timezone.now()
    first_choice = assignment.blind_choice or choice
    with transaction.atomic():
        if not assignment.mark_answered("voted_at", now):
            return None
        shown_at = assignment.shown_at or now
        return Vote.objects.create(
            assignment=assignment,
            expert_id=assignment.expert_id,
            comparison_id=assignment.item.comparison_id,
            campaign_id=assignment.item.campaign_id,
            choice=choice,
            first_choice=first_choice,
            revised_after_reveal=choice != first_choice,
            revealed=revealed or bool(assignment.blind_choice),
            rationale=rationale,
            competency_flags=flags,
            shown_flipped=assignment.flipped,
            seconds_spent=max(0.0, (now - shown_at).total_seconds()),
        )


def skip(assignment: Assignment) -> bool:
    """Set the comparison aside and give its slot back for another expert; it comes back at the end of this
    expert's queue (``bring_back_skipped``) if no one has taken it by then."""
    with transaction.atomic():
        won = assignment.mark_answered("skipped_at", timezone.now(), skips=F("skips") + 1)
        if won and not assignment.item.gold_answer:
            assignment.item.give_back_slot()
    return won


def undo_skip(expert, campaign: Campaign, assignment_id: int) -> Assignment | None:
    """Take back a skip of the expert's in the campaign: the pair is open again (with its slot), or None if it
    is not skipped any more or another expert has filled its overlap meanwhile."""
    assignment = (Assignment.objects.filter(pk=assignment_id, expert=expert, item__campaign=campaign,
                                            skipped_at__isnull=False)
                  .select_related(*(f"item__{path}" for path in PAIR)).first())
    if assignment is None or not reopen(assignment, campaign):
        return None
    Assignment.objects.filter(pk=assignment.pk, skips__gt=0).update(skips=F("skips") - 1)
    return assignment


def revise(vote: Vote, *, choice: str, rationale: str, flags: dict) -> None:
    """The expert's final answer after seeing the judge; the first one stays in ``first_choice``, and the answer
    it replaces is kept as a ``SupersededVote``."""
    with transaction.atomic():
        SupersededVote.record(vote, SupersededReason.REVISED)
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

    Naming the vote keeps a repeated undo (a double key press, a stale page) from reaching further back. The
    undone answer is kept as a ``SupersededVote``; once the judge was shown after it, its blind first choice
    stays the pair's first choice (``Assignment.blind_choice``).
    """
    with transaction.atomic():
        latest = (
            Vote.objects.in_campaign(campaign)
            .filter(expert=expert)
            .select_for_update(of=("self",))
            .latest_first()
            .first()
        )
        if latest is None or latest.pk != vote_id:
            return None
        SupersededVote.record(latest, SupersededReason.UNDONE)
        # The row goes, its answer kept above: the pair's one current vote is the next one given.
        Vote.objects.filter(pk=latest.pk).delete()
        # The clock restarts: the next vote's time is measured from this showing.
        Assignment.objects.filter(pk=latest.assignment_id).update(
            voted_at=None, shown_at=timezone.now(), blind_choice=latest.first_choice if latest.revealed else "")
    return latest.assignment_id
