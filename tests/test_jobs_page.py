import pytest
from django.utils import timezone

from annotation.jobs.lifecycle import Cancelled, JobProgress, create_job, run_job
from annotation.models import Job, JobKind, JobStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def job():
    return create_job(JobKind.GENERATE, {"generator": "g"}, total=10)


def test_the_job_page_shows_live_progress_to_admins(client_for, admin_user, job):
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, done=4, started_at=timezone.now(),
                                         stats={"tokens": 400}, message="sample 4 of 10")
    page = client_for(admin_user).get(f"/jobs/{job.pk}/").content.decode()
    assert "4 / 10" in page and "sample 4 of 10" in page and "tokens/s" in page
    assert 'hx-trigger="every 1s"' in page
    assert "CompX administration" in page and "Django administration" not in page  # the admin's own header


def test_the_parameters_read_as_a_table_not_a_python_dict(client_for, admin_user):
    job = create_job(JobKind.GENERATE, {"generator": "smollm2-base", "sample_ids": list(range(1, 31)), "demo": True,
                                        "limit": None}, total=30)
    page = client_for(admin_user).get(f"/jobs/{job.pk}/").content.decode()
    assert "<th scope=\"row\">sample ids</th><td>1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, … (30 in all)</td>" in page
    assert "<th scope=\"row\">demo</th><td>yes</td>" in page and "<th scope=\"row\">limit</th><td>–</td>" in page
    assert "{&#x27;" not in page and "True" not in page


def test_polling_stops_when_the_job_has_ended(client_for, admin_user, job):
    client = client_for(admin_user)
    assert client.get(f"/jobs/{job.pk}/", headers={"HX-Request": "true"}).status_code == 200
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED, done=10)
    response = client.get(f"/jobs/{job.pk}/", headers={"HX-Request": "true"})
    assert response.status_code == 286
    assert "hx-trigger" not in response.content.decode()


@pytest.mark.parametrize("persona", ["alice", "charlie"])
def test_the_job_page_is_for_admins_only(client_for, request, persona, job):
    client = client_for(request.getfixturevalue(persona))
    assert client.get(f"/jobs/{job.pk}/").status_code == 403
    assert client.post(f"/jobs/{job.pk}/cancel").status_code == 403
    assert not Job.objects.get(pk=job.pk).cancel_requested


def test_anonymous_users_are_sent_to_login(client, job):
    assert client.get(f"/jobs/{job.pk}/")["Location"].startswith("/accounts/login/")


def test_cancel_asks_a_running_job_to_stop_and_the_task_obeys(client_for, admin_user, job):
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, started_at=timezone.now())
    client_for(admin_user).post(f"/jobs/{job.pk}/cancel")
    progress = JobProgress(Job.objects.get(pk=job.pk))
    with pytest.raises(Cancelled):
        progress.advance(1)


def test_cancel_ends_a_queued_job_at_once(client_for, admin_user, job):
    client_for(admin_user).post(f"/jobs/{job.pk}/cancel")
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.message == "cancelled before it started"
    assert Job.claim(job.pk, "w@h") is None  # a worker that gets the message later runs nothing


def test_run_job_records_failure_with_the_error(job):
    def explode(job, progress):
        raise RuntimeError("model file missing")

    with pytest.raises(RuntimeError):
        run_job(job.pk, explode)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error == "RuntimeError: model file missing"
    assert job.finished_at is not None


def test_run_job_leaves_a_finished_job_alone(job):
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED, message="done before")
    run_job(job.pk, lambda job, progress: "ran again")
    assert Job.objects.get(pk=job.pk).message == "done before"
