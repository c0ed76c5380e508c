"""The demo's first start: a generator, a judge and a campaign, filled by the real workers — nothing canned.

Generation and judging run at once, as a pipeline: the judging job follows the generation job and judges each
sample as soon as its candidates are stored, so the first pairs reach the experts while later samples are still
being generated. Like ``annotation.start`` it sends tasks, so it may import ``annotation.tasks``.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Sum
from django.db.models.functions import Length
from django.utils import timezone

from training.ml.scoring import SCORER_PROMPT_VERSION

from .jobs.lifecycle import create_job
from .models import (
    Backend, Campaign, FINISHED_STATUSES, Generator, Job, JobKind, JobStatus, Judge, JudgeBackend, JudgeDisplay,
    JudgeOrders, Sample, Split,
)
from .tasks import generate_profiles_task, judge_comparisons_task

GENERATOR = "smollm2-base"
# The demo's judge scores each profile (PMI with its abstracts): the A/B judge on this model labels nothing
# (it prefers whichever profile is shown first; bench/data/README.md).
JUDGE = "smollm2-scorer"
CAMPAIGN = "Demo: which profile fits the abstracts?"
EXPERTS = ("expert1", "expert2")
GUIDELINES = """\
Each screen shows one researcher's abstracts and two competency profiles written by a language model.

**Choose the profile that better reflects what the abstracts show**:

- the *domain* is right and specific;
- each competency is supported by the abstracts (flag the ones that are not);
- 3 to 8 competencies, no repetition, no junk.

Pick **Tie** when both are equally good and **Both bad** when neither is usable.
Keys: `1` A · `2` B · `3` tie · `4` both bad · `Enter` submit · `s` skip · `u` undo · `?` help.
"""


def ensure_demo_objects() -> tuple[Generator, Judge, Campaign]:
    generator, _ = Generator.objects.get_or_create(name=GENERATOR, defaults={
        "backend": Backend.LOCAL, "model": "default", "temperature": 0.5, "top_p": 0.95,
        "repetition_penalty": 1.15, "max_new_tokens": 256, "candidates": 4, "format_guide": True,
    })
    judge, _ = Judge.objects.get_or_create(name=JUDGE, defaults={
        "backend": JudgeBackend.SCORING, "model": "default", "orders": JudgeOrders.NONE,
        "prompt_version": SCORER_PROMPT_VERSION,
    })
    campaign, _ = Campaign.objects.get_or_create(name=CAMPAIGN, defaults={
        "description": "Candidate profiles of the demo researchers, judged by the offline model.",
        "guidelines": GUIDELINES, "judge_display": JudgeDisplay.REVEAL, "judge": judge, "overlap": 2,
    })
    campaign.experts.add(*get_user_model().objects.filter(username__in=EXPERTS))
    return generator, judge, campaign


STOPPED = ("The demo stopped before this job finished (Ctrl-C during the first start?); the next `make demo` "
           "started it again, and generation and judging fill in only what is missing.")


def pipeline_jobs() -> list[Job]:
    """The latest start's jobs: generation, then judging."""
    return list(Job.objects.filter(params__demo=True).order_by("-pk")[:2])[::-1]


def samples_soonest_first() -> tuple[list[int], list[int]]:
    """Every sample and the train ones, train samples first and shortest abstracts first: the first sample's
    candidates are written soonest and its pairs are judged into the campaign, so experts can start early;
    held-out samples (never reviewed) come last."""
    samples = (Sample.objects.annotate(chars=Sum(Length("documents__abstract")) + Sum(Length("documents__title")))
               .order_by("chars", "pk").values_list("pk", "split"))
    ordered = sorted(samples, key=lambda row: row[1] != Split.TRAIN)  # stable: keeps the length order
    return [pk for pk, _ in ordered], [pk for pk, split in ordered if split == Split.TRAIN]


def start_pipeline() -> list[Job]:
    """Generate candidates for every sample and, at the same time, judge each train sample's pairs into the
    campaign as soon as they are generated (a separate worker on the judging queue: run_demo starts one).

    Done once: a later `make demo` finds the jobs succeeded and leaves them be. Jobs that a stopped demo left
    queued or running (its workers are gone: `make demo` starts its own) are failed as such, and a failed
    pipeline is started again; generation and judging fill in only what is missing.
    """
    existing = pipeline_jobs()
    if existing and pipeline_status(existing) == "ready":
        return existing
    left = Job.objects.filter(pk__in=[job.pk for job in existing], status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
    left.update(status=JobStatus.FAILED, message="stopped with the demo", error=STOPPED, finished_at=timezone.now())

    generator, judge, campaign = ensure_demo_objects()
    sample_ids, train_ids = samples_soonest_first()
    generate = create_job(JobKind.GENERATE, {"demo": True, "generator_id": generator.pk, "generator": generator.name,
                                             "sample_ids": sample_ids, "candidates": generator.candidates},
                          total=len(sample_ids))
    judging = create_job(JobKind.JUDGE, {"demo": True, "judge_id": judge.pk, "judge": judge.name, "pairing": "all",
                                         "campaign_id": campaign.pk, "campaign": campaign.name,
                                         "sample_ids": train_ids, "limit": None, "after_job": generate.pk})
    generate_profiles_task.delay_on_commit(generate.pk)
    judge_comparisons_task.delay_on_commit(judging.pk)
    return [generate, judging]


def pipeline_status(jobs: list[Job]) -> str:
    if all(job.status == JobStatus.SUCCEEDED for job in jobs):
        return "ready"
    if any(job.status in FINISHED_STATUSES and job.status != JobStatus.SUCCEEDED for job in jobs):
        return "failed"
    return "running"
