"""Starting background work from a web request or a command: create the job, send its task after the commit.

This is the only module (with the demo) that imports ``annotation.tasks``; the tasks import the logic they run,
and the logic imports neither.
"""

from __future__ import annotations

from django.db.models import QuerySet

from .jobs.lifecycle import create_job
from .documents.models import refuse_title_only
from .models import PAIRINGS, Campaign, DatasetExport, Generator, Job, JobKind, Judge, Sample
from .tasks import export_dataset_task, generate_profiles_task, judge_comparisons_task, ping_task


def start_ping() -> Job:
    """A job any worker answers with its name: proves that workers run and share our database."""
    job = create_job(JobKind.PING)
    ping_task.delay_on_commit(job.pk)
    return job


def start_generation(generator: Generator, samples: QuerySet, candidates: int | None = None, user=None) -> Job:
    """A generation job for the samples, on the generation queue; TitleOnly when any sample has no abstracts."""
    refuse_title_only(samples, "Generation")
    sample_ids = list(samples.order_by("pk").values_list("pk", flat=True))
    params = {"generator_id": generator.pk, "generator": generator.name, "sample_ids": sample_ids,
              "candidates": candidates or generator.candidates}
    job = create_job(JobKind.GENERATE, params, user=user, total=len(sample_ids))
    generate_profiles_task.delay_on_commit(job.pk)
    return job


def start_judging(judge: Judge, pairing: str, samples: QuerySet | None = None, campaign: Campaign | None = None,
                  limit: int | None = None, user=None) -> Job:
    """A judging job (``pairing`` is one of PAIRINGS, see annotation.judging.strategies), on the judging queue."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    # Samples chosen by name are refused when title-only; "all samples" leaves those out (the job says so).
    if samples is not None:
        refuse_title_only(samples, "Judging")
    elif campaign is not None and pairing == "existing":
        refuse_title_only(Sample.objects.filter(comparisons__campaign_items__campaign=campaign).distinct(),
                          f"Judging campaign {campaign.name!r}")
    params = {"judge_id": judge.pk, "judge": judge.name, "pairing": pairing, "limit": limit,
              "campaign_id": campaign.pk if campaign else None, "campaign": campaign.name if campaign else None,
              "sample_ids": list(samples.values_list("pk", flat=True)) if samples is not None else None}
    job = create_job(JobKind.JUDGE, params, user=user)
    judge_comparisons_task.delay_on_commit(job.pk)
    return job


def start_export(export: DatasetExport, user=None) -> Job:
    """Write the export's snapshot on a worker; its job shows the progress live."""
    job = create_job(JobKind.EXPORT, {"export_id": export.pk, "name": export.name}, user=user)
    export_dataset_task.delay_on_commit(export.pk)
    return job
