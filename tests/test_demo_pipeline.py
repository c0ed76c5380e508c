"""The demo's first start runs generation then judging in a real worker, and never leaves a job queued forever."""

import pytest

from annotation import demo
from annotation.models import Backend, Generator, Job, JobStatus, Profile
from tests.conftest import wait_for
from tests.test_generation import make_samples

pytestmark = pytest.mark.worker


def finished(jobs):
    return all(Job.objects.get(pk=j.pk).is_finished for j in jobs)


@pytest.mark.model
def test_the_pipeline_generates_then_judges_in_the_worker(celery_worker_process, django_user_model):
    make_samples(2)
    generator, _, campaign = demo.ensure_demo_objects()
    Generator.objects.filter(pk=generator.pk).update(max_new_tokens=12, candidates=2)  # keep the test short
    jobs = demo.start_pipeline()
    wait_for(lambda: finished(jobs), timeout=300, what="the demo pipeline")
    generate, judging = (Job.objects.get(pk=j.pk) for j in jobs)
    assert generate.status == JobStatus.SUCCEEDED, generate.error
    assert judging.status == JobStatus.SUCCEEDED, judging.error
    assert Profile.objects.filter(generator=generator).count() == 4
    assert demo.pipeline_status([generate, judging]) == "ready"
    assert demo.start_pipeline() == jobs, "a second start leaves the first pipeline be"


def test_a_failed_generation_marks_the_judging_step_failed(celery_worker_process):
    make_samples(1)
    generator, _, _ = demo.ensure_demo_objects()
    Generator.objects.filter(pk=generator.pk).update(backend=Backend.OPENAI, base_url="http://127.0.0.1:9/v1")
    jobs = demo.start_pipeline()
    wait_for(lambda: finished(jobs), timeout=120, what="both demo jobs to end")
    generate, judging = (Job.objects.get(pk=j.pk) for j in jobs)
    assert generate.status == JobStatus.FAILED and "cannot reach" in generate.error
    assert judging.status == JobStatus.FAILED and "generating the candidates failed" in judging.error
    assert demo.pipeline_status([generate, judging]) == "failed"


@pytest.mark.django_db
def test_a_pipeline_a_stopped_demo_left_unfinished_is_started_again(django_capture_on_commit_callbacks):
    make_samples(1)
    with django_capture_on_commit_callbacks() as sent:
        first = demo.start_pipeline()
    assert len(sent) == 1
    # Ctrl-C during the first start: generation was running and judging queued, and their workers are gone.
    Job.objects.filter(pk=first[0].pk).update(status=JobStatus.RUNNING)
    with django_capture_on_commit_callbacks() as sent:
        again = demo.start_pipeline()
    assert len(sent) == 1 and {job.pk for job in again}.isdisjoint(job.pk for job in first)
    assert demo.pipeline_jobs() == again and demo.pipeline_status(again) == "running"
    for job in first:
        job.refresh_from_db()
        assert job.status == JobStatus.FAILED and "the next `make demo` started it again" in job.error
    Job.objects.filter(pk__in=[job.pk for job in again]).update(status=JobStatus.SUCCEEDED)
    with django_capture_on_commit_callbacks() as sent:
        assert demo.start_pipeline() == again  # done: later starts leave it be
    assert not sent
