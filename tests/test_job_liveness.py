"""Jobs whose worker died: failed with the reason by a stale heartbeat or a restarted worker, never run twice.

The same mechanism as training runs (annotation.jobs.liveness); tests/test_job_worker_death.py kills real workers.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from annotation.jobs.lifecycle import JobProgress, Lost, create_job, run_job
from annotation.jobs.liveness import mark_stale, mark_worker_restarted
from annotation.models import DatasetExport, ExportPolicy, Job, JobKind, JobStatus

pytestmark = pytest.mark.django_db

GENERATE_AGAIN = "Start it again: generation fills in only what is missing."


def running(kind: str = JobKind.GENERATE, ago_s: float = 120, worker: str = "w1@host", **fields) -> Job:
    params = fields.pop("params", {"generator": "g"})
    job = create_job(kind, params, total=10)
    now = timezone.now()
    fields = {"status": JobStatus.RUNNING, "worker": worker, "started_at": now - timedelta(minutes=10),
              "heartbeat_at": now - timedelta(seconds=ago_s), "done": 3, **fields}
    Job.objects.filter(pk=job.pk).update(**fields)
    job.refresh_from_db()
    return job


def test_a_silent_running_job_is_failed_with_what_happened_and_what_to_do():
    job = running()
    assert mark_stale() == 1
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.finished_at and job.message == "the worker died"
    assert job.error.startswith("No heartbeat from w1@host since ")
    assert "(more than 45 s): the worker died (killed, out of memory, or its machine stopped)" in job.error
    assert job.error.endswith(f" with 3 of 10 done. {GENERATE_AGAIN}")
    assert mark_stale() == 0  # once


def test_live_queued_and_finished_jobs_are_left_alone():
    fresh = running(ago_s=10)
    queued = create_job(JobKind.GENERATE)
    Job.objects.filter(pk=queued.pk).update(created_at=timezone.now() - timedelta(hours=2))
    done = running(ago_s=3600)
    Job.objects.filter(pk=done.pk).update(status=JobStatus.SUCCEEDED, message="done")
    never_beat = running(heartbeat_at=None)  # started ten minutes ago, no heartbeat since
    just_started = running(heartbeat_at=None, started_at=timezone.now())

    assert mark_stale() == 1
    statuses = dict(Job.objects.values_list("pk", "status"))
    assert statuses == {fresh.pk: JobStatus.RUNNING, queued.pk: JobStatus.QUEUED, done.pk: JobStatus.SUCCEEDED,
                        never_beat.pk: JobStatus.FAILED, just_started.pk: JobStatus.RUNNING}
    assert Job.objects.get(pk=never_beat.pk).error.startswith("No heartbeat from w1@host since never")


def test_the_window_is_a_setting(settings):
    job = running(ago_s=10)
    settings.WORKER_STALE_AFTER_S = 5
    assert mark_stale() == 1
    assert "(more than 5 s)" in Job.objects.get(pk=job.pk).error


@pytest.mark.parametrize(("kind", "params", "hint"), [
    (JobKind.JUDGE, {"judge": "j"}, "Start it again: judging fills in only what is missing"),
    (JobKind.PING, {}, "Start it again."),
    (JobKind.GENERATE, {"evaluation_id": 7}, "It ran inside evaluation #7, which failed with it: start that "
                                             "evaluation again (generation and judging fill in only what is missing)."),
])
def test_the_error_says_what_to_do_for_each_kind(kind, params, hint):
    job = running(kind, params=params)
    mark_stale()
    assert hint in Job.objects.get(pk=job.pk).error


def test_a_dead_export_job_fails_its_export_too():
    export = DatasetExport.objects.create(name="v1", policy=ExportPolicy.EXPERT, status=JobStatus.RUNNING)
    finished = DatasetExport.objects.create(name="v0", policy=ExportPolicy.EXPERT, status=JobStatus.SUCCEEDED)
    job = running(JobKind.EXPORT, params={"export_id": export.pk, "name": "v1"})
    old = running(JobKind.EXPORT, params={"export_id": finished.pk, "name": "v0"})
    assert mark_stale() == 2
    export.refresh_from_db()
    assert export.status == JobStatus.FAILED and export.finished_at
    assert export.error == Job.objects.get(pk=job.pk).error
    assert "the worker died" in export.error and "Export again as a new snapshot" in export.error
    assert DatasetExport.objects.get(pk=finished.pk).status == JobStatus.SUCCEEDED  # a snapshot stays a snapshot
    assert Job.objects.get(pk=old.pk).status == JobStatus.FAILED


def test_a_restarted_worker_fails_only_what_it_left_behind_at_once():
    mine, theirs = running(ago_s=1, worker="gen@host"), running(ago_s=1, worker="other@host")
    assert mark_worker_restarted("gen@host") == 1
    assert mark_worker_restarted("") == 0
    mine.refresh_from_db()
    assert mine.status == JobStatus.FAILED and mine.message == "the worker died"
    assert mine.error.startswith("The worker gen@host restarted while this was running (last heartbeat ")
    assert "the worker died (killed or crashed)" in mine.error and mine.error.endswith(GENERATE_AGAIN)
    assert Job.objects.get(pk=theirs.pk).status == JobStatus.RUNNING


def test_the_job_page_notices_and_shows_the_reason(client_for, admin_user):
    job = running()
    page = client_for(admin_user).get(f"/jobs/{job.pk}/").content.decode()
    assert "Failed" in page and "the worker died" in page and GENERATE_AGAIN in page
    assert "No heartbeat from w1@host" in page and "hx-trigger" not in page
    assert "· on w1@host" in page  # which worker it was


def test_the_job_list_notices(client_for, admin_user):
    job = running()
    assert client_for(admin_user).get("/admin/annotation/job/").status_code == 200
    assert Job.objects.get(pk=job.pk).status == JobStatus.FAILED


# --- running a job: claimed once, never revived --------------------------------------------------------


def test_run_job_records_the_worker_and_a_heartbeat():
    job = create_job(JobKind.PING)
    run_job(job.pk, lambda job, progress: "pong", worker="gen@host")
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.worker == "gen@host" and job.heartbeat_at


def test_a_message_for_a_running_job_does_not_run_it_again():
    """A duplicate delivery, or the broker handing a dead worker's message out before anyone noticed."""
    job = running(ago_s=1, worker="first@host")
    calls = []
    run_job(job.pk, lambda job, progress: calls.append(job), worker="second@host")
    assert calls == []
    after = Job.objects.get(pk=job.pk)
    assert (after.status, after.worker, after.heartbeat_at) == (JobStatus.RUNNING, "first@host", job.heartbeat_at)


def test_a_message_for_a_job_the_watchdog_failed_leaves_it_failed():
    job = running()
    mark_stale()
    failed = Job.objects.get(pk=job.pk)
    run_job(job.pk, lambda job, progress: pytest.fail("ran a job that had died"), worker="gen@host")
    after = Job.objects.get(pk=job.pk)
    assert (after.status, after.error, after.finished_at, after.worker) == (
        JobStatus.FAILED, failed.error, failed.finished_at, "w1@host")


def test_a_job_failed_behind_the_workers_back_stops_it_and_stays_failed():
    job = create_job(JobKind.GENERATE, total=10)
    seen = []

    def work(job, progress):
        progress.advance(1, "one")
        Job.objects.filter(pk=job.pk).update(status=JobStatus.FAILED, error="No heartbeat: the worker died")
        seen.append("failed")
        progress.advance(2, "two")  # raises Lost: the job is not this worker's any more
        seen.append("went on")

    with pytest.raises(Lost):  # an evaluation running the job, or the task's log, hears of it
        run_job(job.pk, work)
    assert seen == ["failed"]
    job.refresh_from_db()
    assert (job.status, job.error, job.done) == (JobStatus.FAILED, "No heartbeat: the worker died", 1)


def test_a_job_failed_behind_the_workers_back_is_not_marked_succeeded_when_the_work_returns():
    job = create_job(JobKind.GENERATE)

    def work(job, progress):
        Job.objects.filter(pk=job.pk).update(status=JobStatus.FAILED, error="the worker died")
        return "all done"

    run_job(job.pk, work)
    assert Job.objects.get(pk=job.pk).status == JobStatus.FAILED


def test_a_worker_shutting_down_mid_job_says_so():
    job = create_job(JobKind.GENERATE)

    def work(job, progress):
        raise SystemExit(1)

    with pytest.raises(SystemExit):
        run_job(job.pk, work)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.message == "the worker stopped"
    assert job.error == f"The worker stopped during the job (SystemExit). {GENERATE_AGAIN}"


def test_job_progress_on_a_queued_job_still_works():
    """What the in-process callers (tests, commands) do: JobProgress on a job nobody claimed."""
    job = create_job(JobKind.GENERATE)
    progress = JobProgress(job)
    progress.start(total=4)
    progress.advance(2, "half")
    progress.finish(JobStatus.SUCCEEDED, "done")
    job.refresh_from_db()
    assert (job.status, job.done, job.total, job.message) == (JobStatus.SUCCEEDED, 2, 4, "done")


@pytest.mark.django_db(transaction=True)  # the heartbeat thread has its own connection: it must see the row
def test_a_long_step_without_progress_is_kept_alive_by_the_heartbeat(settings):
    """A generation batch can take minutes between two advances; the heartbeat thread covers the gap."""
    settings.WORKER_HEARTBEAT_S = 0.1
    settings.WORKER_STALE_AFTER_S = 1.5
    job = create_job(JobKind.GENERATE, total=1)
    marked = []

    def work(job, progress):
        progress.start(total=1)
        deadline = time.monotonic() + 3 * settings.WORKER_STALE_AFTER_S
        while time.monotonic() < deadline:  # no advance at all: only the heartbeat thread writes
            time.sleep(0.25)
            marked.append(mark_stale())
        return "one long step"

    run_job(job.pk, work)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert sum(marked) == 0 and len(marked) >= 12
    assert job.heartbeat_at > job.started_at + timedelta(seconds=3)
