"""Evaluating a tuned model: tuned vs base (and optionally a third model) on held-out samples.

An evaluation (``run_evaluation``, on the training queue) generates each model's profiles, pairs profile *i*
of the tuned model with profile *i* of each other one (an invalid profile loses without a judge: a forfeit),
judges the pairs in both orders, and reports win rates with Wilson intervals. "Send to experts" puts a sample
of the judged pairs into a blind campaign; ``expert_figures`` reads the votes back beside the judge's.

The evaluation's judge should not be one that labelled the training data (``training.grading``): the task
refuses it unless the evaluation was created with the override. The labelling judges grade the same pairs
too, reported apart (``results["judges"]``), so the distance between "the judge it was tuned towards" and
"an independent judge" is on the page. So is what a win could have been bought with
(``results["profiles"]``): each model's profile length, competencies and share of words copied from the
abstracts (``training.ml.copying``), beside its valid-profile rate.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any

from django.db import transaction
from django.utils import timezone

from annotation.jobs.eta import add_point
from annotation.jobs.lifecycle import Cancelled, WorkRunner, create_job, run_job
from annotation.judging.strategies import run_judging
from annotation.models import (
    Backend, Campaign, Comparison, Generator, Job, JobKind, JobStatus, JudgeDisplay, JudgeVerdict, PairingSource,
    Profile, Sample, Vote,
)
from annotation.profiles.generation import run_generation
from annotation.stats import win_rate, wilson_interval
from training.ml.copying import COPY_SPAN_WORDS, copy_share, words

from .models import EvaluationRun
from .grading import Provenance, check_grader, provenance
from .runs import TrainingError, tuned_generator, unique_name

WIN, LOSS, TIE, INCONSISTENT, INVALID = "win", "loss", "tie", "inconsistent", "invalid"


# ---------------------------------------------------------------------------------------------------------
# Statistics: plain functions on labels, tested on known counts


def judged_outcome(combined: str, candidate_is_a: bool) -> str:
    """A judge's combined verdict on one comparison, from the candidate's side."""
    if combined in ("a", "b"):
        return WIN if (combined == "a") == candidate_is_a else LOSS
    if combined == "tie":
        return TIE
    if combined == "inconsistent":
        return INCONSISTENT  # flipped with the order: not a win, counted as a tie
    return INVALID


def forfeit_outcome(candidate_valid: bool, other_valid: bool) -> str | None:
    """The outcome of a pair the judge never sees (None when both are valid and it must be judged)."""
    if candidate_valid and other_valid:
        return None
    if candidate_valid != other_valid:
        return WIN if candidate_valid else LOSS
    return TIE


def expert_outcome(choices: Iterable[str], candidate_is_a: bool) -> str | None:
    """The experts' verdict on one comparison: the strict majority of their votes; None without votes.

    "both bad" and a split vote say "no better one": a tie.
    """
    counts = Counter(choices)
    if not counts:
        return None
    (top, n), *rest = counts.most_common()
    if rest and rest[0][1] == n or top not in ("a", "b"):
        return TIE
    return WIN if (top == "a") == candidate_is_a else LOSS


def summarise(outcomes: Iterable[str]) -> dict[str, Any]:
    """Counts and the win rate (ties and order flips count half) with a Wilson 95% interval."""
    counts = Counter(outcomes)
    unknown = set(counts) - {WIN, LOSS, TIE, INCONSISTENT, INVALID}
    if unknown:
        raise ValueError(f"unknown outcomes: {sorted(unknown)}")
    ties = counts[TIE] + counts[INCONSISTENT]
    rate = win_rate(counts[WIN], ties, counts[LOSS])
    return {"wins": counts[WIN], "ties": ties, "losses": counts[LOSS], "inconsistent": counts[INCONSISTENT],
            "invalid": counts[INVALID], "n": rate.n, "win_rate": _num(rate.rate), "ci": [_num(rate.low), _num(rate.high)]}


def valid_rate(valid: int, total: int) -> dict[str, Any]:
    low, high = wilson_interval(valid, total)
    return {"valid": valid, "total": total, "rate": _num(valid / total if total else float("nan")),
            "ci": [_num(low), _num(high)]}


def mean_interval(values: Iterable[float]) -> dict[str, Any]:
    """Mean with a 95% interval (normal approximation, 1.96 standard errors) and n."""
    values = [v for v in values if v is not None]
    n = len(values)
    if not n:
        return {"n": 0, "mean": None, "ci": [None, None]}
    mean = sum(values) / n
    if n == 1:
        return {"n": 1, "mean": _num(mean), "ci": [None, None]}
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    half = 1.96 * sd / n ** 0.5
    return {"n": n, "mean": _num(mean), "ci": [_num(mean - half), _num(mean + half)]}


def profile_figures(profiles: Iterable[Profile], abstracts: dict[int, list[str]]) -> dict[str, Any]:
    """What a win could be bought with, over a model's valid profiles (what the judge saw): length in words,
    competencies, and the share of words copied from the sample's abstracts in runs of ≥ COPY_SPAN_WORDS."""
    valid = [p for p in profiles if p.is_valid]
    return {
        "words": mean_interval(len(words(p.raw_text)) for p in valid),
        "competencies": mean_interval(len(p.competencies or []) for p in valid),
        "copy_share": mean_interval(copy_share(p.raw_text, abstracts.get(p.sample_id, [])) for p in valid),
        "copy_span_words": COPY_SPAN_WORDS,
    }


def _num(value: float) -> float | None:
    # JSON has no NaN: "undefined" (nothing to count) is stored as null.
    return None if value != value else round(value, 4)


# ---------------------------------------------------------------------------------------------------------
# Running (the task)


class _Runner(WorkRunner):
    model = EvaluationRun
    starting = "starting"

    def __init__(self, evaluation: EvaluationRun):
        super().__init__(evaluation)
        self.evaluation = evaluation
        self.samples = list(Sample.objects.heldout()[:evaluation.sample_limit])
        self.k = evaluation.candidates
        self.results: dict[str, Any] = {"candidates": self.k, "samples": len(self.samples), "jobs": []}

    def say(self, message: str) -> None:
        if not self.evaluation.save_progress(message=message, heartbeat_at=timezone.now(), results=self.results) \
                or self.evaluation.cancel_wanted():
            raise Cancelled

    def run_job(self, kind: str, params: dict, work, track=None) -> Job:
        job = create_job(kind, {**params, "evaluation_id": self.evaluation.pk})
        self.results["jobs"].append(job.pk)
        self.say(f"{job.get_kind_display().lower()}: {params.get('generator') or params.get('judge')}")
        run_job(job.pk, work if track is None else _tracked(work, lambda sub_job: self.track(track(sub_job))))
        job.refresh_from_db()
        if job.status == JobStatus.CANCELLED:
            raise Cancelled
        return job

    # --- its own progress: profiles generated of all, then pairs judged of all (the sub-jobs count otherwise) ---

    def phase(self, name: str, total: int) -> None:
        """A new count from 0 (EvaluationRun.unit names it), with a rate and ETA of its own."""
        self.results["phase"] = name
        self.evaluation.save_progress(done=0, total=total, progress_points=[[round(time.time(), 3), 0]],
                                      results=self.results, heartbeat_at=timezone.now())

    def track(self, done: float) -> None:
        """Where the phase stands; a fraction (a batch half generated) moves the rate and the ETA, not ``done``."""
        ev = self.evaluation
        done = min(done, ev.total)
        # A row that has ended refuses the write: the next ``say`` stops the evaluation.
        ev.save_progress(done=int(done), progress_points=add_point(ev.progress_points, time.time(), done),
                         heartbeat_at=timezone.now())

    def profiles_generated(self, job: Job | None = None) -> float:
        stored = Profile.objects.filter(generator__in=self.models.values(), sample__in=self.samples,
                                        candidate_index__lt=self.k).count()
        # The batch being decoded, as the generation job's own points guess it: a share of a sample.
        partial = job.progress_points[-1][1] - job.done if job and job.progress_points else 0
        return stored + max(0.0, partial) * self.k

    def pairs_judged(self, judges_before: int, pairs: int):
        return lambda job: (judges_before + (min(1.0, job.done / job.total) if job.total else 0.0)) * pairs

    def generate(self, generator: Generator) -> None:
        params = {"generator_id": generator.pk, "generator": generator.name, "candidates": self.k,
                  "sample_ids": [s.pk for s in self.samples]}
        self.run_job(JobKind.GENERATE, params, run_generation, track=self.profiles_generated)

    def profiles(self, generator: Generator) -> dict[tuple[int, int], Profile]:
        rows = Profile.objects.filter(generator=generator, sample__in=self.samples, candidate_index__lt=self.k)
        return {(p.sample_id, p.candidate_index): p for p in rows}

    def pair_up(self, mine: dict, theirs: dict) -> tuple[list[tuple[Comparison, bool]], list[str]]:
        """Comparisons to judge (with "candidate is profile_a"), and the forfeit outcomes."""
        to_judge, forfeits = [], []
        for key, own in sorted(mine.items()):
            other = theirs.get(key)
            if other is None:
                continue
            forfeit = forfeit_outcome(own.is_valid, other.is_valid)
            if forfeit is not None:
                forfeits.append(forfeit)
            else:
                to_judge.append((own, other))
        comparisons = Comparison.objects.ensure([(a.sample_id, a.pk, b.pk) for a, b in to_judge],
                                                PairingSource.EVALUATION)
        return [(c, c.profile_a_id == own.pk) for c, (own, _) in zip(comparisons, to_judge)], forfeits

    def judge(self, judge, comparisons: list[Comparison], judges_before: int = 0) -> None:
        self.run_job(JobKind.JUDGE, {"judge_id": judge.pk, "judge": judge.name, "pairing": "existing",
                                     "comparison_ids": [c.pk for c in comparisons]}, run_judging,
                     track=self.pairs_judged(judges_before, len(comparisons)))

    def graders(self) -> tuple[list, set[int]]:
        """The evaluation's judge first, then each judge that labelled the training data (reported apart).

        Refuses a labelling judge as the evaluation's own judge without the override: a row made by hand (the
        shell, an old form) gets the same check as ``start_evaluation``.
        """
        ev = self.evaluation
        labelled_by = provenance(ev.training_run)
        labelling = {j.pk: j for j in [*labelled_by.judges, *ev.labelling_judges.all()]}
        check_grader(ev.judge, Provenance(labelled_by.source, tuple(labelling.values())), ev.same_judge_allowed)
        return [ev.judge, *(j for pk, j in sorted(labelling.items()) if pk != ev.judge_id)], set(labelling)

    def abstracts(self) -> dict[int, list[str]]:
        return {s.pk: [f"{d.title}\n{d.abstract}" for d in s.ordered_documents()] for s in self.samples}

    def run(self) -> str:
        ev = self.evaluation
        graders, labelling = self.graders()
        models = {"candidate": ev.candidate, "baseline": ev.baseline, "third": ev.third}
        models = self.models = {role: g for role, g in models.items() if g is not None}
        self.phase("generate", len(self.samples) * self.k * len(models))
        self.track(self.profiles_generated())  # what an earlier attempt stored counts as done
        for generator in models.values():
            self.generate(generator)
        profiles = {role: self.profiles(g) for role, g in models.items()}
        self.results["valid"] = {
            role: {"generator": g.name, **valid_rate(sum(p.is_valid for p in profiles[role].values()),
                                                      len(profiles[role]))}
            for role, g in models.items()
        }
        abstracts = self.abstracts()
        self.results["profiles"] = {role: {"generator": g.name, **profile_figures(profiles[role].values(), abstracts)}
                                    for role, g in models.items()}
        pairs = {role: self.pair_up(profiles["candidate"], profiles[role]) for role in models if role != "candidate"}
        everything = [c for judged, _ in pairs.values() for c, _ in judged]
        self.results["judges"] = []
        self.phase("judge", len(everything) * len(graders))
        for n, judge in enumerate(graders):
            if everything:
                self.judge(judge, everything, judges_before=n)
            versus = self.versus(judge, pairs, models, everything)
            self.results["judges"].append({"judge": judge.name, "judge_id": judge.pk, "backend": judge.backend,
                                           "labelled_training_data": judge.pk in labelling,
                                           "versus": {role: {k: v[k] for k in ("judged", "with_forfeits")}
                                                      for role, v in versus.items()}})
            if judge.pk == ev.judge_id:
                self.results["versus"] = versus
        return headline(self.results)

    def versus(self, judge, pairs: dict, models: dict, everything: list[Comparison]) -> dict[str, Any]:
        combined = JudgeVerdict.objects.filter(comparison__in=[c.pk for c in everything], judge=judge).combined()
        found = {}
        for role, (judged, forfeits) in pairs.items():
            outcomes = [judged_outcome(combined.get((c.pk, judge.pk), "invalid"), a) for c, a in judged]
            found[role] = {
                "opponent": models[role].name,
                "judged": summarise(outcomes),
                "with_forfeits": summarise(outcomes + forfeits),
                "forfeits": summarise(forfeits),
                "comparison_ids": [c.pk for c, _ in judged],
            }
        return found

    def ending(self, status: str) -> dict[str, Any]:
        return {"results": self.results}

    @contextmanager
    def running(self):
        from training.ml.models import clear_model_cache

        try:
            yield
        finally:
            clear_model_cache()  # the training worker needs the memory back for the next run


class _Tracked:
    """A sub-job's progress that tells the evaluation after each update (``after(job)``)."""

    def __init__(self, progress, after):
        self._progress, self._after = progress, after

    def __getattr__(self, name: str):
        return getattr(self._progress, name)

    def advance(self, *args, **kwargs) -> None:
        self._progress.advance(*args, **kwargs)
        self._after(self._progress.job)

    def within(self, *args, **kwargs) -> None:
        self._progress.within(*args, **kwargs)
        self._after(self._progress.job)


def _tracked(work, after):
    return lambda job, progress: work(job, _Tracked(progress, after))


def headline(results: dict[str, Any]) -> str:
    versus = results.get("versus", {}).get("baseline")
    if not versus:
        return "no result"
    judged, overall = versus["judged"], versus["with_forfeits"]
    first = (f"judged pairs: win rate {_pct(judged['win_rate'])} {_ci(judged['ci'])} over {judged['n']} "
             f"({judged['wins']}/{judged['ties']}/{judged['losses']})" if judged["n"] else "no judged pairs")
    return f"{first}; with forfeits {_pct(overall['win_rate'])} {_ci(overall['ci'])} over {overall['n']}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def _ci(ci: list) -> str:
    return "" if ci[0] is None else f"[{100 * ci[0]:.0f}–{100 * ci[1]:.0f}%]"


def run_evaluation(evaluation_id: int, worker: str = "") -> str:
    """Generate, pair, judge and report one queued evaluation; returns its final status."""
    return _Runner.start(evaluation_id, worker)


# ---------------------------------------------------------------------------------------------------------
# The loop back to experts


def judged_pairs(evaluation: EvaluationRun) -> list[int]:
    """The tuned-vs-base comparisons the judge saw (both profiles valid)."""
    return list(evaluation.results.get("versus", {}).get("baseline", {}).get("comparison_ids", []))


CHECK_GUIDELINES = """\
Each screen shows one researcher's abstracts and two competency profiles, written by two different models.

**Choose the profile that better reflects what the abstracts show**:

- the *domain* is right and specific;
- each competency is supported by the abstracts (flag the ones that are not);
- 3 to 8 competencies, no repetition, no junk.

Pick **Tie** when both are equally good and **Both bad** when neither is usable. The judge's verdict is not shown.
Keys: `1` A · `2` B · `3` tie · `4` both bad · `Enter` submit · `s` skip · `u` undo · `?` help.
"""


def send_to_experts(evaluation: EvaluationRun, experts, size: int, overlap: int = 1, user=None) -> Campaign:
    """A blind campaign with a random sample of the judged tuned-vs-base pairs (judge verdict hidden)."""
    ids = judged_pairs(evaluation)
    if evaluation.status != JobStatus.SUCCEEDED or not ids:
        raise TrainingError("this evaluation has no judged pairs to send (it needs two valid profiles per pair)")
    if evaluation.expert_campaign_id:
        raise TrainingError(f"already sent to experts as {evaluation.expert_campaign}")
    chosen = random.Random(evaluation.pk).sample(ids, min(size, len(ids)))
    with transaction.atomic():
        # Experts see the title and description: neither names a model (the admin finds the evaluation from the
        # campaign's own page, through evaluation.expert_campaign).
        campaign = Campaign.objects.create(
            name=unique_name(f"Check #{evaluation.pk}: which profile fits the abstracts?", Campaign),
            description=f"{len(chosen)} pairs of profiles, drawn at random from {len(ids)}. Which model wrote "
                        "which is not shown.",
            guidelines=CHECK_GUIDELINES, judge_display=JudgeDisplay.HIDDEN, judge=evaluation.judge, overlap=overlap,
        )
        campaign.experts.set(experts)
        campaign.add_comparisons(Comparison.objects.filter(pk__in=chosen))
        evaluation.expert_campaign = campaign
        evaluation.save(update_fields=["expert_campaign"])
    return campaign


def expert_figures(evaluation: EvaluationRun) -> dict[str, Any] | None:
    """Judge and experts on the same pairs: the campaign's comparisons that have at least one vote."""
    campaign = evaluation.expert_campaign
    if campaign is None:
        return None
    comparisons = {c.pk: c for c in Comparison.objects.filter(campaign_items__campaign=campaign)
                   .select_related("profile_a")}
    votes: dict[int, list[str]] = {}
    for comparison_id, choice in Vote.objects.counted().in_campaign(campaign).values_list("comparison_id", "choice"):
        votes.setdefault(comparison_id, []).append(choice)
    candidate_is_a = {pk: c.profile_a.generator_id == evaluation.candidate_id for pk, c in comparisons.items()}
    voted = sorted(votes)
    combined = JudgeVerdict.objects.filter(comparison__in=voted, judge=evaluation.judge_id).combined()
    return {
        "campaign": campaign,
        "items": len(comparisons),
        "voted": len(voted),
        "votes": sum(len(v) for v in votes.values()),
        "experts": summarise(expert_outcome(votes[c], candidate_is_a[c]) for c in voted),
        "judge_same_pairs": summarise(judged_outcome(combined.get((c, evaluation.judge_id), "invalid"),
                                                     candidate_is_a[c]) for c in voted),
    }


def next_round_generator(evaluation: EvaluationRun) -> Generator:
    """The tuned model as a generator for the next round: the evaluation's candidate when it is one."""
    if evaluation.candidate.adapter_path and evaluation.candidate.backend == Backend.LOCAL:
        return evaluation.candidate
    if evaluation.training_run is None:
        raise TrainingError("this evaluation's candidate is not a tuned model")
    return tuned_generator(evaluation.training_run, like=evaluation.baseline)
