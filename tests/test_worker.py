"""A real Celery worker process, on the real broker, sees a job through."""

import pytest

from annotation.jobs.lifecycle import create_job
from annotation.models import Job, JobKind, JobStatus
from annotation.tasks import ping_task
from tests.conftest import wait_for

pytestmark = pytest.mark.worker


def test_a_real_worker_runs_a_job_and_records_it(celery_worker_process):
    job = create_job(JobKind.PING)
    ping_task.delay(job.pk)
    finished = wait_for(lambda: Job.objects.filter(pk=job.pk, status=JobStatus.SUCCEEDED).first(),
                        timeout=90, what="the worker to finish the ping job")
    assert finished.message.startswith("pong from ")
    assert finished.started_at <= finished.finished_at


def test_a_job_cancelled_before_it_starts_is_not_run(celery_worker_process):
    job = create_job(JobKind.PING)
    Job.objects.filter(pk=job.pk).update(cancel_requested=True)
    ping_task.delay(job.pk)
    finished = wait_for(lambda: Job.objects.filter(pk=job.pk, status=JobStatus.CANCELLED).first(),
                        timeout=90, what="the worker to see the cancellation")
    assert finished.message == "cancelled before it started"
