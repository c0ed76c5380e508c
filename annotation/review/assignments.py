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
from functools import lru_cache

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from ..models import (
    Assignment, Campaign, CampaignItem, Comparison, Document, JudgeVerdict, Profile, SampleDocument, Vote,
)
from .rows import Columns, RowReader, columns, table

# Each failed attempt means another expert took that item a moment ago; a handful is plenty.
CLAIM_ATTEMPTS = 5


@dataclass(frozen=True)
class Progress:
    """Where the campaign stands: the judgments it needs (non-gold pairs × overlap), those done or under way,
    and this expert's own votes.

    "Taken" sums the items' assignment counts instead of counting votes: a count of votes joins every vote
    of the campaign on every request, while the sum reads only the campaign's items. It runs ahead of the
    votes by the pairs open on screens right now. Needed and taken may be up to
    settings.REVIEW_PROGRESS_CACHE_SECONDS old; the expert's own count is always exact.
    """

    needed: int
    taken: int
    mine: int
    # The expert's latest vote in the campaign: the only one undo may take back.
    last_vote_id: int | None

    @property
    def percent(self) -> int:
        return min(100, round(100 * self.taken / self.needed)) if self.needed else 100


# The reads below are SQL written once per process (see annotation/review/rows.py for why), standard SQL that
# PostgreSQL and SQLite both run. Tables and column lists come from the models.
@lru_cache(maxsize=None)
def _sql(vendor: str, skip_locked: bool, totals: bool) -> dict[str, str]:
    """The statements; ``totals=False``: without the campaign totals, when they come from the cache."""
    t = {name: table(model) for name, model in [
        ("item", CampaignItem), ("assignment", Assignment), ("vote", Vote), ("campaign", Campaign),
        ("comparison", Comparison), ("profile", Profile), ("members", Campaign.experts.through)]}
    # The expert's votes in a campaign; the latest is the one with the highest id (undo_last_vote agrees).
    votes_in = f"FROM {t['vote']} pv WHERE pv.expert_id = %(expert)s AND pv.campaign_id ="
    # Progress rides along with a query the screen makes anyway, as one-row tables joined to it: the campaign's
    # totals (when they are not cached) and the expert's votes.
    progress = ("tot.items, tot.taken, " if totals else "") + "p.mine, p.last_vote"
    progress_joins = (
        (f"CROSS JOIN (SELECT COUNT(*) AS items, COALESCE(SUM(assignment_count), 0) AS taken FROM {t['item']} "
         "WHERE campaign_id = %(campaign)s AND gold_answer = '') tot " if totals else "")
        + f"CROSS JOIN (SELECT COUNT(*) AS mine, MAX(pv.id) AS last_vote {votes_in} %(campaign)s) p"
    )
    pair = ", ".join(columns(model, alias).sql for model, alias in _PAIR)
    pair_joins = (f"INNER JOIN {t['comparison']} c ON c.id = i.comparison_id "
                  f"INNER JOIN {t['profile']} pfa ON pfa.id = c.profile_a_id "
                  f"INNER JOIN {t['profile']} pfb ON pfb.id = c.profile_b_id")
    # Still waiting for the expert: neither voted on nor skipped. voted_at is set with every vote, so testing
    # it too changes nothing but lets the small index of waiting pairs serve.
    def waiting(alias: str) -> str:
        return (f"{alias}.voted_at IS NULL AND {alias}.skipped_at IS NULL "
                f"AND NOT EXISTS (SELECT 1 FROM {t['vote']} w WHERE w.assignment_id = {alias}.id)")

    # What the expert may be given next, least reviewed first: never a comparison they already have, in any
    # campaign (a vote is unique per expert and comparison); gold items go to every expert, uncapped.
    next_items = (
        f"FROM {t['item']} i WHERE i.campaign_id = %(campaign)s "
        "AND (i.assignment_count < %(overlap)s OR i.gold_answer <> '') "
        f"AND NOT EXISTS (SELECT 1 FROM {t['assignment']} x INNER JOIN {t['item']} xi ON xi.id = x.item_id "
        "WHERE x.expert_id = %(expert)s AND xi.comparison_id = i.comparison_id)"
    )
    # PostgreSQL plans the lookup on every request; kept out of its join search (an EXISTS it cannot pull up
    # into the join, a campaign found per row), the membership check and the open pairs halve that planning.
    fence = " OFFSET 0" if vendor == "postgresql" else ""
    lookup = (
        f"SELECT {columns(Assignment, 'a').sql}, {columns(CampaignItem, 'i').sql}, {columns(Campaign, 'k').sql}, "
        f"{columns(Vote, 'v').sql}, "
        # Other pairs open for the expert in the campaign, by voted_at (a hint that spares the look for one
        # after a vote when there is none): the few waiting pairs, each one's campaign looked up by its key.
        f"EXISTS (SELECT 1 FROM {t['assignment']} o WHERE o.expert_id = %(expert)s AND o.id <> a.id "
        "AND o.voted_at IS NULL AND o.skipped_at IS NULL "
        f"AND (SELECT oi.campaign_id FROM {t['item']} oi WHERE oi.id = o.item_id) = i.campaign_id)"
        "{screen_columns} "
        f"FROM {t['assignment']} a INNER JOIN {t['item']} i ON i.id = a.item_id "
        f"INNER JOIN {t['campaign']} k ON k.id = i.campaign_id "
        f"LEFT OUTER JOIN {t['vote']} v ON v.assignment_id = a.id "
        "{screen_joins} WHERE a.id = %(pk)s AND a.expert_id = %(expert)s AND k.is_active = %(active)s "
        f"AND EXISTS (SELECT 1 FROM {t['members']} m WHERE m.campaign_id = k.id AND m.user_id = %(expert)s{fence})"
    )
    return {
        "progress": f"SELECT {progress} FROM (SELECT 1 AS one) q {progress_joins}",
        "has_work": (
            f"SELECT 1 WHERE EXISTS (SELECT 1 FROM {t['assignment']} a INNER JOIN {t['item']} i ON i.id = a.item_id "
            f"WHERE a.expert_id = %(expert)s AND i.campaign_id = %(campaign)s AND {waiting('a')}) "
            f"OR EXISTS (SELECT 1 {next_items})"
        ),
        "open": (
            f"SELECT {columns(Assignment, 'a').sql}, {pair}, {progress} FROM {t['assignment']} a "
            f"INNER JOIN {t['item']} i ON i.id = a.item_id {pair_joins} {progress_joins} "
            f"WHERE a.expert_id = %(expert)s AND i.campaign_id = %(campaign)s AND {waiting('a')} "
            "ORDER BY a.created_at, a.id LIMIT 1"
        ),
        # The row lock makes a second expert asking at the same moment move on to the next item instead of
        # queueing behind the first (PostgreSQL); the conditional UPDATE in _take_slot is what guarantees the
        # overlap, on SQLite too.
        "claim": (
            f"SELECT {pair}, {progress} FROM ("
            f"SELECT i.id {next_items} ORDER BY i.assignment_count, i.id LIMIT 1"
            + (" FOR UPDATE OF i SKIP LOCKED" if skip_locked else "")
            + f") n INNER JOIN {t['item']} i ON i.id = n.id {pair_joins} {progress_joins}"
        ),
        "abstracts": (
            f"SELECT {columns(Document, 'd').sql} FROM {table(Document)} d "
            f"INNER JOIN {table(SampleDocument)} sd ON sd.document_id = d.id "
            "WHERE sd.sample_id = %(sample)s ORDER BY sd.position"
        ),
        "verdicts": (
            f"SELECT {columns(JudgeVerdict, 'jv').sql} FROM {table(JudgeVerdict)} jv "
            "WHERE jv.comparison_id = %(comparison)s AND jv.judge_id = %(judge)s"
        ),
        "lookup": lookup.format(screen_columns="", screen_joins=""),
        "lookup_screen": lookup.format(
            screen_columns=f", (SELECT MAX(pv.id) {votes_in} i.campaign_id), {pair}", screen_joins=pair_joins),
    }


# The comparison screen's pair: the item, its comparison and the comparison's two profiles.
_PAIR = ((CampaignItem, "i"), (Comparison, "c"), (Profile, "pfa"), (Profile, "pfb"))


def _fetch(name: str, *, totals: bool = False, **params) -> list[tuple]:
    statements = _sql(connection.vendor, connection.features.has_select_for_update_skip_locked, totals)
    with connection.cursor() as cursor:
        cursor.execute(statements[name], params)
        return cursor.fetchall()


def _fetch_one(name: str, *, totals: bool = False, **params) -> tuple | None:
    rows = _fetch(name, totals=totals, **params)
    return rows[0] if rows else None


def _fetch_models(name: str, model_columns: Columns, **params) -> list:
    """A statement that selects one model's columns: its instances."""
    return [model_columns.load(row, 0) for row in _fetch(name, **params)]


def _plan_once() -> None:
    """Let PostgreSQL reuse its plan of the claim on this connection for the rest of the transaction.

    It would otherwise plan the statement anew on every vote (its estimate of a plan for any expert is worse
    than its plans for each one), and planning a statement of ten tables costs more than running it: the
    plan it reuses reads the same few index entries for every expert and campaign.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")


def _cached_totals(campaign: Campaign) -> tuple[int, int] | None:
    """The campaign's (items, taken) as counted at most REVIEW_PROGRESS_CACHE_SECONDS ago, if they were."""
    if not settings.REVIEW_PROGRESS_CACHE_SECONDS:
        return None
    return cache.get(_totals_key(campaign))


def _totals_key(campaign: Campaign) -> str:
    return f"compx:review-totals:{campaign.pk}"


def _read_pair(reader: RowReader) -> CampaignItem:
    item, comparison, profile_a, profile_b = (reader.model(columns(model, alias)) for model, alias in _PAIR)
    comparison.profile_a, comparison.profile_b = profile_a, profile_b
    item.comparison = comparison
    return item


def _read_progress(reader: RowReader, campaign: Campaign, totals: tuple[int, int] | None) -> Progress:
    """The progress columns of a row fetched with ``totals=totals is None``."""
    if totals is None:
        totals = (reader.value(), reader.value())
        if settings.REVIEW_PROGRESS_CACHE_SECONDS:
            cache.set(_totals_key(campaign), totals, settings.REVIEW_PROGRESS_CACHE_SECONDS)
    items, taken = totals
    mine, last_vote_id = reader.value(), reader.value()
    return Progress(needed=items * campaign.overlap, taken=taken, mine=mine, last_vote_id=last_vote_id)


def campaign_progress(campaign: Campaign, expert) -> Progress:
    totals = _cached_totals(campaign)
    row = _fetch_one("progress", totals=totals is None, campaign=campaign.pk, expert=expert.pk)
    return _read_progress(RowReader(row), campaign, totals)


def has_work(expert, campaign: Campaign) -> bool:
    """Whether the expert has anything left to do in the campaign, without claiming it."""
    return _fetch_one("has_work", expert=expert.pk, campaign=campaign.pk, overlap=campaign.overlap) is not None


def abstracts_of(assignment: Assignment) -> list[Document]:
    """The documents of the pair's sample, in the sample's order: the abstracts the screen shows."""
    return _fetch_models("abstracts", columns(Document, "d"), sample=assignment.item.comparison.sample_id)


def verdicts_on(assignment: Assignment, judge_id: int) -> list[JudgeVerdict]:
    """The judge's verdicts on the pair, both presentation orders."""
    return _fetch_models("verdicts", columns(JudgeVerdict, "jv"), comparison=assignment.item.comparison_id,
                         judge=judge_id)


def assignment_for(expert, pk: int, *, screen: bool = True) -> Assignment | None:
    """The expert's own assignment ``pk`` in one of their active campaigns, with its item, campaign and vote,
    and ``others_open`` (whether the expert may have other pairs open in the campaign: False means none, True
    is checked by the look for one); None if there is no such assignment.

    ``screen=True`` adds what showing the pair again needs: the two profiles, and ``latest_vote_id`` (the
    expert's latest vote in the campaign, the only one they may revise). A vote or a skip needs neither: it
    stores its answer by the assignment's ``flipped``.
    """
    row = _fetch_one("lookup_screen" if screen else "lookup", pk=pk, expert=expert.pk, active=True)
    if row is None:
        return None
    reader = RowReader(row)
    assignment, item, campaign = (reader.model(columns(model, alias))
                                  for model, alias in ((Assignment, "a"), (CampaignItem, "i"), (Campaign, "k")))
    vote = reader.model(columns(Vote, "v"))
    assignment.others_open = bool(reader.value())
    if screen:
        assignment.latest_vote_id = reader.value()
        item = _read_pair(reader)
    item.campaign = campaign
    assignment.item = item
    Assignment.vote.related.set_cached_value(assignment, vote)
    return assignment


def next_assignment(expert, campaign: Campaign, *, may_have_open: bool = True) -> tuple[Assignment | None, Progress]:
    """The expert's next comparison in the campaign: one left open (after an undo, a reload), else a new one.

    ``may_have_open=False`` skips the look for an open one when the caller already knows there is none.
    """
    totals = _cached_totals(campaign)
    if may_have_open:
        row = _fetch_one("open", totals=totals is None, expert=expert.pk, campaign=campaign.pk)
        if row is not None:
            reader = RowReader(row)
            assignment = reader.model(columns(Assignment, "a"))
            assignment.item = _read_pair(reader)
            return assignment, _read_progress(reader, campaign, totals)
    return claim(expert, campaign, totals=totals)


def claim(expert, campaign: Campaign, *, totals: tuple[int, int] | None = None) -> tuple[Assignment | None, Progress]:
    """Give the expert the least reviewed item they may still take, with the campaign's progress.

    ``totals``: the campaign's cached totals, if the caller has looked them up.
    """
    for _ in range(CLAIM_ATTEMPTS):
        try:
            with transaction.atomic():
                _plan_once()
                row = _fetch_one("claim", totals=totals is None, expert=expert.pk, campaign=campaign.pk,
                                 overlap=campaign.overlap)
                if row is None:
                    break
                reader = RowReader(row)
                item = _read_pair(reader)
                if not item.gold_answer and not _take_slot(item, campaign):
                    continue
                assignment = Assignment.objects.create(
                    item=item, expert=expert, flipped=random.random() < 0.5, shown_at=timezone.now()
                )
                return assignment, _read_progress(reader, campaign, totals)
        except IntegrityError:
            continue  # the same expert claimed this item in another tab a moment ago
    return None, campaign_progress(campaign, expert)


def _take_slot(item: CampaignItem, campaign: Campaign) -> bool:
    return _execute("take_slot", item=item.pk, overlap=campaign.overlap) == 1


def _mark_answered(assignment: Assignment, column: str, now) -> bool:
    """Set ``voted_at`` or ``skipped_at``, only while neither is set: one request wins, on SQLite too."""
    return _execute(f"mark_{column}", pk=assignment.pk, now=connection.ops.adapt_datetimefield_value(now)) == 1


def _execute(name: str, **params) -> int:
    """A write of the round trip, as SQL written once (the ORM's UPDATE costs 0.4 ms of CPU to build); the
    rows it changed."""
    with connection.cursor() as cursor:
        cursor.execute(_writes(connection.vendor)[name], params)
        return cursor.rowcount


@lru_cache(maxsize=None)
def _writes(vendor: str) -> dict[str, str]:
    item, assignment = table(CampaignItem), table(Assignment)
    unanswered = "WHERE id = %(pk)s AND voted_at IS NULL AND skipped_at IS NULL"
    return {
        "take_slot": f"UPDATE {item} SET assignment_count = assignment_count + 1 "
                     "WHERE id = %(item)s AND assignment_count < %(overlap)s",
        "give_back_slot": f"UPDATE {item} SET assignment_count = assignment_count - 1 "
                          "WHERE id = %(item)s AND assignment_count > 0",
        "mark_voted_at": f"UPDATE {assignment} SET voted_at = %(now)s {unanswered}",
        "mark_skipped_at": f"UPDATE {assignment} SET skipped_at = %(now)s {unanswered}",
    }


def record_vote(assignment: Assignment, *, choice: str, rationale: str, flags: dict) -> Vote | None:
    """Store the expert's answer, in canonical terms; None if the assignment was already answered."""
    now = timezone.now()
    with transaction.atomic():
        if not _mark_answered(assignment, "voted_at", now):
            return None
        shown_at = assignment.shown_at or now
        return Vote.objects.create(
            assignment=assignment,
            expert_id=assignment.expert_id,
            comparison_id=assignment.item.comparison_id,
            campaign_id=assignment.item.campaign_id,
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
        won = _mark_answered(assignment, "skipped_at", timezone.now())
        if won and not assignment.item.gold_answer:
            _execute("give_back_slot", item=assignment.item_id)
    return won


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
            .order_by("-pk")
            .first()
        )
        if latest is None or latest.pk != vote_id:
            return None
        latest.delete()
        # The clock restarts: the next vote's time is measured from this showing.
        Assignment.objects.filter(pk=latest.assignment_id).update(voted_at=None, shown_at=timezone.now())
    return latest.assignment_id
