"""A real worker killed (SIGKILL) in the middle of a real generation job on the offline model.

The job must end failed, saying the worker died and what to do: within the watchdog window when another worker
is alive to notice, at once when the same worker starts again. A later delivery of the dead job's message
must not run it again, and starting the generation again fills in only what is missing.
The workers run with a small heartbeat and stale window (COMPX_HEARTBEAT_S / COMPX_STALE_AFTER_S /
COMPX_WATCHDOG_S), which a model load and a batch of generation must survive on the heartbeat thread alone.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from django.db.models import Q

from annotation.jobs.lifecycle import create_job
from annotation.models import FINISHED_STATUSES, Job, JobKind, JobStatus, Profile, Sample
from annotation.start import start_generation
from annotation.tasks import generate_profiles_task, ping_task
from tests.conftest import LOG_DIR, wait_for
from tests.test_generation import local_generator, make_samples

pytestmark = [pytest.mark.worker, pytest.mark.model]

SLOW = 600  # the real model on a shared two-core machine
SAMPLES = 12  # three batches of four: killed after the first, the job is mid-way
GENERATE_AGAIN = "Start it again: generation fills in only what is missing."


def fast_liveness(monkeypatch, stale_s: float) -> None:
    """What the workers started next run with (they read it from the environment at start)."""
    monkeypatch.setenv("COMPX_HEARTBEAT_S", "0.5")
    monkeypatch.setenv("COMPX_STALE_AFTER_S", str(stale_s))
    monkeypatch.setenv("COMPX_WATCHDOG_S", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def ready(name: str) -> None:
    log = LOG_DIR / f"test-worker-{name}.log"
    wait_for(lambda: log.exists() and " ready." in log.read_text(), timeout=120, what=f"worker {name} to be ready")


def generation_job() -> tuple[Job, object]:
    samples = make_samples(SAMPLES)
    generator = local_generator(max_new_tokens=24, candidates=1, temperature=0.8)
    job = start_generation(generator, Sample.objects.filter(pk__in=[s.pk for s in samples]))
    return job, generator


def mid_job(job: Job) -> Job:
    """Past the model load and the first batch, with batches to go."""
    # Or its end: without the heartbeat thread the watchdog would fail it during the model load or the batch.
    job = wait_for(lambda: Job.objects.filter(pk=job.pk).filter(Q(done__gte=4) | Q(status__in=FINISHED_STATUSES))
                   .first(), timeout=SLOW, interval=0.1, what="the first batch of generation")
    assert job.status == JobStatus.RUNNING and job.done < job.total == SAMPLES, (job.status, job.error)
    return job


def kill(worker) -> float:
    worker.send_signal(signal.SIGKILL)  # no goodbye: nothing in the worker can record anything
    worker.wait(timeout=10)
    return time.monotonic()


def test_a_killed_workers_job_is_failed_by_another_workers_watchdog(start_worker, monkeypatch, client_for,
                                                                      admin_user):
    stale_s, watchdog_s = 4, 1
    fast_liveness(monkeypatch, stale_s)
    start_worker("default", name="watcher")  # does nothing but watch
    generating = start_worker("generation", name="gen")
    ready("watcher")
    job, _ = generation_job()
    job = mid_job(job)
    assert job.worker.startswith(f"gen-{os.getpid()}@")

    killed_at = kill(generating)
    assert Job.objects.get(pk=job.pk).status == JobStatus.RUNNING

    job = wait_for(lambda: Job.objects.filter(pk=job.pk).exclude(status=JobStatus.RUNNING).first(), timeout=60,
                   interval=0.1, what="the watchdog to fail the dead worker's job")
    noticed_s = time.monotonic() - killed_at
    assert noticed_s < stale_s + watchdog_s + 5, noticed_s  # slack: a loaded machine, the last beat's age
    assert job.status == JobStatus.FAILED and job.message == "the worker died" and job.finished_at
    assert re.fullmatch(
        rf"No heartbeat from {re.escape(job.worker)} since [0-9: -]+ UTC \(more than {stale_s} s\): the worker "
        rf"died \(killed, out of memory, or its machine stopped\) with \d+ of {SAMPLES} done\. {GENERATE_AGAIN}",
        job.error), job.error

    page = client_for(admin_user).get(f"/jobs/{job.pk}/").content.decode()
    assert "Failed" in page and job.error in page and "hx-trigger" not in page


def test_a_restarted_worker_fails_its_dead_job_at_once_and_a_redelivery_does_not_run_it(start_worker, monkeypatch):
    fast_liveness(monkeypatch, stale_s=600)  # only the restart can explain a failure within this test
    generating = start_worker("generation", name="gen")
    job, generator = generation_job()
    job = mid_job(job)
    kill(generating)
    assert Job.objects.get(pk=job.pk).status == JobStatus.RUNNING
    stored = Profile.objects.filter(generator=generator).count()
    assert 4 <= stored < SAMPLES  # whole batches only: store_candidates commits per sample after a batch

    start_worker("generation", name="gen")  # the same node name: the same worker starting again
    job = wait_for(lambda: Job.objects.filter(pk=job.pk, status=JobStatus.FAILED).first(), timeout=120,
                   what="the restarted worker to fail its dead job")
    assert job.message == "the worker died"
    assert job.error.startswith(f"The worker {job.worker} restarted while this was running (last heartbeat ")
    assert "the worker died (killed or crashed)" in job.error and job.error.endswith(GENERATE_AGAIN)

    # The broker hands the dead job's message out again (Redis: after its visibility timeout). It must not run
    # the job a second time or make it look alive: a ping behind it on the same queue shows it was handled.
    generate_profiles_task.delay(job.pk)
    ping = create_job(JobKind.PING)
    ping_task.apply_async((ping.pk,), queue="generation")
    wait_for(lambda: Job.objects.filter(pk=ping.pk, status=JobStatus.SUCCEEDED).exists(), timeout=120,
             what="the ping queued behind the redelivered message")
    after = Job.objects.get(pk=job.pk)
    assert (after.status, after.error, after.finished_at, after.done, after.worker) == (
        JobStatus.FAILED, job.error, job.finished_at, job.done, job.worker)
    assert Profile.objects.filter(generator=generator).count() == stored

    # What the error says to do: start it again, and only what is missing is generated.
    again = start_generation(generator, Sample.objects.filter(name__startswith="hydro-"))
    again = wait_for(lambda: Job.objects.filter(pk=again.pk, status__in=[
        JobStatus.SUCCEEDED, JobStatus.FAILED]).first(), timeout=SLOW, what="the generation started again")
    assert again.status == JobStatus.SUCCEEDED, again.error
    assert again.total == SAMPLES - stored and again.worker == job.worker
    assert Profile.objects.filter(generator=generator).count() == SAMPLES
