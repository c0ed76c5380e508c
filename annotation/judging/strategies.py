"""Which comparisons a judging job judges, and the job itself (``run_judging``).

``existing`` comparisons (a campaign's, or all), ``all`` pairs of each sample's pairable profiles, the knockout
``tournament`` of the thesis, and ``active`` pairs (where the judges are least sure) added to a campaign.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import Avg, Count, QuerySet

from ..jobs.lifecycle import JobProgress, run_job
from ..jobs.slots import would_wait_on_itself
from ..llm_client import EndpointError
from ..models import (
    Campaign, Comparison, Generator, Job, JobStatus, Judge, JudgeVerdict, PairingSource, Profile, Sample,
    TournamentPreference,
)
from .pairing import PairStats, Tournament, active_pairs, all_pairs
from .session import Session
from .verdicts import INCONSISTENT, combine_asked

# Samples per step of the "all" strategy and comparisons per step of "existing"/"active": bounds the
# size of each query and of each batch of prompts held in memory.
SAMPLES_PER_STEP = 8
COMPARISONS_PER_STEP = 200
ACTIVE_DEFAULT_LIMIT = 20
# How often a judging job that follows a generation job looks for samples it has finished.
FOLLOW_POLL_S = 2.0
GENERATE_TASK = "annotation.tasks.generate_profiles_task"  # what a judging job that follows generation waits for


class GenerationFailed(Exception):
    """The generation job a judging job followed ended without finishing its samples."""


def pairable_by_sample(sample_ids: Iterable[int]) -> dict[int, list[int]]:
    """Each sample's pairable profile ids (valid, not a near-duplicate), in id order; one query."""
    rows = (Profile.objects.pairable().filter(sample_id__in=list(sample_ids)).order_by("sample_id", "id")
            .values_list("sample_id", "id"))
    found: dict[int, list[int]] = defaultdict(list)
    for sample_id, profile_id in rows:
        found[sample_id].append(profile_id)
    return found


def seeded(profile_ids: list[int], sample_id: int) -> list[int]:
    """The bracket order: shuffled so seeding does not follow generation order, yet fixed per sample, so a
    re-run plays the same matches and reuses their stored verdicts."""
    order = list(profile_ids)
    random.Random(sample_id).shuffle(order)
    return order


def judge_all_pairs(session: Session, sample_ids: Sequence[int], campaign: Campaign | None = None) -> str:
    pairable = pairable_by_sample(sample_ids)
    samples = [s for s in sample_ids if len(pairable.get(s, ())) >= 2]
    for start in range(0, len(samples), SAMPLES_PER_STEP):
        step = samples[start:start + SAMPLES_PER_STEP]
        pairs = [(s, p, q) for s in step for p, q in all_pairs(pairable[s])]
        comparisons = Comparison.objects.ensure(pairs, PairingSource.ALL)
        if campaign:
            campaign.add_comparisons(comparisons)
        session.judge_comparisons(comparisons)
    return f"all pairs of {len(samples)} samples"


def generated_samples(generation: Job) -> set[int]:
    """The generation job's samples that have all their candidates (one sample's are stored in one transaction,
    so a sample with k of them is finished); one query."""
    params = generation.params
    k = params.get("candidates") or Generator.objects.get(pk=params["generator_id"]).candidates
    return set(Profile.objects.filter(generator_id=params["generator_id"], sample_id__in=params["sample_ids"])
               .order_by().values("sample_id").annotate(n=Count("pk")).filter(n__gte=k)
               .values_list("sample_id", flat=True))


def generate_here_if_none_else_can(generation: Job, progress: JobProgress) -> bool:
    """Run the queued generation job in this process when this worker's one slot, the slot this judging job
    holds, is the only one that could (annotation.jobs.slots): waiting for it would never end. True if it ran."""
    from ..profiles.generation import run_generation

    if generation.status != JobStatus.QUEUED or not would_wait_on_itself(GENERATE_TASK):
        return False
    progress.advance(progress.job.done, f"generating here first: this worker's one slot would wait for job "
                     f"#{generation.pk} forever")
    try:
        run_job(generation.pk, run_generation, worker=progress.job.worker)
    except Exception:  # the generation job keeps its error; what it stored is judged, then this job fails
        pass
    return True


def pause_for_generation() -> None:
    time.sleep(FOLLOW_POLL_S)


def judge_as_generated(session: Session, sample_ids: Sequence[int], campaign: Campaign | None, generation_id: int,
                       progress: JobProgress) -> str:
    """All pairs of each sample as soon as the generation job has stored its candidates, while it goes on with
    the next ones; each pair joins the campaign once it is judged, so experts start on it at once."""
    left = list(sample_ids)
    judged = 0
    while left:
        generation = Job.objects.get(pk=generation_id)
        ready = set(left) if generation.is_finished else generated_samples(generation)
        now = [s for s in left if s in ready]
        stats = {"samples_waiting": len(left) - len(now), "samples_judging": len(now)}
        if not now:
            progress.advance(session.tally.done, f"waiting for generation: {generation.done} of "
                             f"{generation.total} samples generated", **stats)
            if not generate_here_if_none_else_can(generation, progress):
                pause_for_generation()
            continue
        progress.advance(session.tally.done, progress.job.message, **stats)
        for sample_id in now:
            judged += judge_sample_pairs(session, sample_id, campaign, progress)
            left.remove(sample_id)
            stats["samples_judging"] -= 1
            progress.advance(session.tally.done, progress.job.message, **stats)
    generation = Job.objects.get(pk=generation_id)
    if generation.status != JobStatus.SUCCEEDED:
        raise GenerationFailed(f"generating the candidates failed (job #{generation.pk} {generation.status}); "
                               f"judged what it had finished")
    return f"all pairs of {judged} samples, each as soon as it was generated"


def judge_sample_pairs(session: Session, sample_id: int, campaign: Campaign | None, progress: JobProgress) -> int:
    """Judge every pair of the sample's pairable profiles, one pair at a time, and put each in the campaign as
    soon as it is judged; 1 if the sample had a pair, else 0."""
    pairable = pairable_by_sample([sample_id]).get(sample_id, [])
    if len(pairable) < 2:
        return 0
    comparisons = Comparison.objects.ensure([(sample_id, p, q) for p, q in all_pairs(pairable)], PairingSource.ALL)
    progress.expect(progress.job.total + session.judge.orders_asked * len(comparisons))
    for comparison in comparisons:
        session.judge_comparisons([comparison])
        if campaign:
            campaign.add_comparisons([comparison])
    return 1


def planned_all(sample_ids: Sequence[int], orders: int = 2) -> int:
    return sum(orders * len(ids) * (len(ids) - 1) // 2 for ids in pairable_by_sample(sample_ids).values())


@dataclass
class Bracket:
    """One sample's tournament, and the comparison behind each of its matches."""

    sample_id: int
    tournament: Tournament
    comparisons: dict[tuple[int, int], Comparison] = field(default_factory=dict)
    incomplete: bool = False


def run_tournaments(session: Session, sample_ids: Sequence[int], campaign: Campaign | None = None) -> str:
    """Knockout tournaments for the samples, all advancing together round by round.

    Each round's matches (of every sample) are judged together, so an HTTP judge has enough requests in
    flight. A match's winner is the profile both orders agree on; a tie, a flip or an invalid answer sends
    the match's first candidate on without a preference (``Tournament.record``). A match whose verdicts
    are missing (transient failures) stops its sample's tournament for this run: its preferences are not
    stored, and a re-run replays the stored verdicts and asks only what is missing.
    """
    pairable = pairable_by_sample(sample_ids)
    brackets = [Bracket(s, Tournament(seeded(pairable[s], s))) for s in sample_ids if len(pairable.get(s, ())) >= 2]
    while playing := [b for b in brackets if not b.tournament.done and not b.incomplete]:
        _play_round(session, playing, campaign)
    finished = [b for b in brackets if not b.incomplete]
    counts = [store_tournament(session.judge, b) for b in finished]
    text = (f"{len(finished)} tournaments, {sum(c[0] for c in counts)} preferences "
            f"({sum(c[1] for c in counts)} implied)")
    if len(finished) < len(brackets):
        text += f"; {len(brackets) - len(finished)} incomplete (requests failed) — run again to finish them"
    return text


def _play_round(session: Session, playing: list[Bracket], campaign: Campaign | None) -> None:
    matches = [(b, a, c) for b in playing for a, c in b.tournament.next_matches()]
    comparisons = Comparison.objects.ensure([(b.sample_id, a, c) for b, a, c in matches], PairingSource.TOURNAMENT)
    if campaign:
        campaign.add_comparisons(comparisons)
    session.judge_comparisons(comparisons)
    verdicts = {row["comparison_id"]: row for row in JudgeVerdict.objects.filter(
        judge=session.judge, comparison__in=[c.pk for c in comparisons]).per_pair()}
    for (bracket, first, second), comparison in zip(matches, comparisons):
        bracket.comparisons[(comparison.profile_a_id, comparison.profile_b_id)] = comparison
        found = verdicts.get(comparison.pk)
        if found is None or found["answered"] < session.judge.orders_asked:
            bracket.incomplete = True
            continue
        combined = combine_asked(found["ab"], found["ba"], found["answered"])
        winner = {"a": comparison.profile_a_id, "b": comparison.profile_b_id}.get(combined)
        if not bracket.incomplete:
            bracket.tournament.record(first, second, winner)


@transaction.atomic
def store_tournament(judge: Judge, bracket: Bracket) -> tuple[int, int]:
    """Replace the judge's preferences for the sample with this tournament's; (preferences, implied)."""
    TournamentPreference.objects.filter(judge=judge, sample_id=bracket.sample_id).delete()
    rows = [
        TournamentPreference(judge=judge, sample_id=bracket.sample_id, chosen_id=p.chosen, rejected_id=p.rejected,
                             implied=p.implied, comparison=bracket.comparisons[(min(p.match), max(p.match))])
        for p in bracket.tournament.preferences()
    ]
    TournamentPreference.objects.bulk_create(rows)
    return len(rows), sum(r.implied for r in rows)


def planned_tournament(sample_ids: Sequence[int], orders: int = 2) -> int:
    # A knockout of n entrants plays n − 1 matches whatever the byes and ties; each in every order asked.
    return sum(orders * (len(ids) - 1) for ids in pairable_by_sample(sample_ids).values() if len(ids) >= 2)


def judge_existing(session: Session, comparisons: QuerySet) -> str:
    ids = list(comparisons.order_by("pk").values_list("pk", flat=True))
    for start in range(0, len(ids), COMPARISONS_PER_STEP):
        step = ids[start:start + COMPARISONS_PER_STEP]
        session.judge_comparisons(list(Comparison.objects.filter(pk__in=step).order_by("pk")
                                       .select_related("profile_a", "profile_b")))
    return f"{len(ids)} existing comparisons"


def pair_stats(comparisons: QuerySet) -> list[PairStats]:
    """What all judges say about each comparison (combined verdicts, mean canonical confidence), in id order.

    Three queries, whatever the number of comparisons and judges.
    """
    ids = list(comparisons.order_by("pk").values_list("pk", flat=True))
    verdicts = JudgeVerdict.objects.filter(comparison__in=comparisons.values("pk"))
    counts: dict[int, Counter] = defaultdict(Counter)
    for (comparison_id, _), combined in verdicts.combined().items():
        counts[comparison_id][combined] += 1
    confidence = dict(verdicts.filter(is_valid=True, confidence__isnull=False).order_by().values("comparison_id")
                      .annotate(c=Avg("confidence")).values_list("comparison_id", "c"))
    return [PairStats(pair=(c,), a=counts[c]["a"], b=counts[c]["b"], tie=counts[c]["tie"],
                      inconsistent=counts[c][INCONSISTENT], confidence=confidence.get(c)) for c in ids]


def select_active(session: Session, candidates: QuerySet, campaign: Campaign, limit: int) -> str:
    """Add the ``limit`` comparisons the judges are least sure about to the campaign, for experts.

    Candidates are the existing comparisons not yet in the campaign; this judge first answers any order it
    has not, so every candidate has its say. Uncertainty is ``pairing.uncertainty``: inconsistent across
    orders, judges disagreeing, ties, confidence near ½.
    """
    candidates = candidates.exclude(campaign_items__campaign=campaign)
    judge_existing(session, candidates)
    scored = pair_stats(candidates)
    chosen = [s.pair[0] for s in active_pairs(scored, limit)]
    campaign.add_comparisons(Comparison.objects.filter(pk__in=chosen))
    return f"{len(chosen)} most uncertain of {len(scored)} comparisons added to {campaign.name}"


def _scope(params: dict) -> tuple[list[int], Campaign | None, int]:
    """The samples to judge, the campaign, and how many title-only samples were left out (they have no
    abstracts to show a judge; start_judging refuses them when they are named)."""
    campaign = Campaign.objects.get(pk=params["campaign_id"]) if params.get("campaign_id") else None
    samples = Sample.objects.order_by("pk")
    if params.get("sample_ids") is not None:
        samples = samples.filter(pk__in=params["sample_ids"])
    left_out = samples.title_only().count()
    return list(samples.with_abstracts().values_list("pk", flat=True)), campaign, left_out


def _existing_scope(params: dict, campaign: Campaign | None, sample_ids: list[int], limit: int | None) -> QuerySet:
    if params.get("comparison_ids") is not None:
        comparisons = Comparison.objects.filter(pk__in=params["comparison_ids"], sample_id__in=sample_ids)
    elif campaign:
        comparisons = campaign.comparisons.filter(sample_id__in=sample_ids)
    else:
        comparisons = Comparison.objects.filter(sample_id__in=sample_ids)
    if limit:
        comparisons = Comparison.objects.filter(pk__in=list(comparisons.order_by("pk").values_list("pk", flat=True)[:limit]))
    return comparisons


def run_judging(job: Job, progress: JobProgress) -> str:
    """The judging job: ``job.params`` names the judge, the pairing, and the samples, the campaign or (pairing
    "existing") the comparisons."""
    params = job.params
    judge = Judge.objects.get(pk=params["judge_id"])
    pairing = params.get("pairing", "tournament")
    sample_ids, campaign, title_only = _scope(params)
    limit = params.get("limit")
    session = Session(judge, report=lambda t: progress.advance(t.done, f"{t.done} of {progress.job.total} judgements",
                                                               **t.stats()))
    if pairing in ("all", "tournament") and limit:
        sample_ids = sample_ids[:limit]
    if pairing == "all" and params.get("after_job"):
        progress.start(total=0)
        what = judge_as_generated(session, sample_ids, campaign, params["after_job"], progress)
    elif pairing == "all":
        progress.start(total=planned_all(sample_ids, judge.orders_asked))
        what = judge_all_pairs(session, sample_ids, campaign)
    elif pairing == "tournament":
        progress.start(total=planned_tournament(sample_ids, judge.orders_asked))
        what = run_tournaments(session, sample_ids, campaign)
    elif pairing == "active":
        if campaign is None:
            raise ValueError("active pairing adds the most uncertain pairs to a campaign: choose one")
        candidates = Comparison.objects.filter(sample_id__in=sample_ids)
        progress.start(total=judge.orders_asked * candidates.exclude(campaign_items__campaign=campaign).count())
        what = select_active(session, candidates, campaign, limit or ACTIVE_DEFAULT_LIMIT)
    else:
        comparisons = _existing_scope(params, campaign, sample_ids, limit)
        progress.start(total=judge.orders_asked * comparisons.count())
        what = judge_existing(session, comparisons)
    tally = session.tally
    if tally.failed and not tally.stored and not tally.reused:
        raise EndpointError(f"every request failed: {tally.last_failure}")
    skipped = f"; {title_only} title-only samples left out (no abstracts)" if title_only else ""
    return f"{judge.name} ({pairing}): {what}; {tally.summary()}{skipped}"


