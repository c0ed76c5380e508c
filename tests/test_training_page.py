"""The run page: live figures and curves, polling that stops, artefacts behind staff-only downloads,
cancel / resume, and a dead worker's run noticed when the page is opened. No model is loaded here."""

from __future__ import annotations

import json
import re
import zipfile
from datetime import timedelta
from io import BytesIO
from pathlib import Path

import pytest
from django.utils import timezone

from annotation.models import Generator, JobStatus
from tests.training_factory import make_export
from training.models import TrainingLogEntry, TrainingRun
from training.runs import RunProgress, build_config, create_run

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.training_factory")]


@pytest.fixture
def run(tmp_path, settings) -> TrainingRun:
    settings.MEDIA_ROOT = tmp_path / "media"
    export = make_export(tmp_path / "export")
    return create_run(export, build_config(export, {"max_steps": 10}), "page run")


def running(run: TrainingRun, step: int = 4, **fields) -> TrainingRun:
    now = timezone.now()
    # A step every 10 s, the latest just now: 6 steps left take about 60 s.
    points = [[now.timestamp() - 10 * (step - s), s] for s in range(1, step + 1)]
    fields = {"heartbeat_at": now, "progress_points": points, **fields}
    TrainingRun.objects.filter(pk=run.pk).update(
        status=JobStatus.RUNNING, done=step, total=10, started_at=now - timedelta(seconds=40), worker="w1@host", latest_metrics={"loss": 0.61, "rewards/accuracies": 0.75, "rewards/margins": 0.2,
                                          "learning_rate": 4e-5, "epoch": 0.4, "eta_s": 60}, **fields)
    TrainingLogEntry.objects.bulk_create([
        TrainingLogEntry(run=run, step=s, loss=0.69 - 0.02 * s, reward_accuracy=0.5 + 0.05 * s, reward_margin=0.01 * s,
                         learning_rate=5e-5, epoch=s / 10, elapsed_s=10 * s) for s in range(1, step + 1)])
    run.refresh_from_db()
    return run


def write_adapter(run: TrainingRun) -> Path:
    out = Path(run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_model.safetensors").write_bytes(b"weights")
    (out / "adapter_config.json").write_text(json.dumps({"r": 16}))
    (out / "train_config.yaml").write_text(json.dumps(run.config))
    (out / "metrics.json").write_text(json.dumps({"status": "completed"}))
    (out / "train.log").write_text("line 1\nstep 10/10 loss 0.5\n")
    return out


def test_the_page_shows_live_progress_curves_and_config(client_for, admin_user, run):
    running(run)
    page = client_for(admin_user).get(f"/training/runs/{run.pk}/").content.decode()
    # The ETA counts down from 60 s with the clock (a busy machine may take a second to answer).
    assert "step 4 / 10" in page and re.search(r"about (60|5\d) s left \(± 0 s", page) and "10 s per step" in page
    assert 'style="width: 40%"' in page
    assert "0.6100" in page and "0.75" in page and "4.00e-05" in page
    assert page.count('<svg class="chart"') == 3 and "<polyline" in page  # loss, reward accuracy, margin
    assert 'hx-trigger="every 2s"' in page and "Cancel run" in page
    assert "&quot;max_steps&quot;: 10," in page and "&#x27;" not in page  # the config, as JSON
    assert "heartbeat 0 s ago" in page or "heartbeat 1 s ago" in page  # not "0 minutes ago"
    assert "<script src=" in page and "cdn" not in page.lower()


def test_polling_stops_when_the_run_ends(client_for, admin_user, run):
    client = client_for(admin_user)
    running(run)
    assert client.get(f"/training/runs/{run.pk}/", headers={"HX-Request": "true"}).status_code == 200
    TrainingRun.objects.filter(pk=run.pk).update(status=JobStatus.SUCCEEDED, done=10, finished_at=timezone.now())
    response = client.get(f"/training/runs/{run.pk}/", headers={"HX-Request": "true"})
    assert response.status_code == 286 and "hx-trigger" not in response.content.decode()
    assert 'style="width: 100%"' in response.content.decode()


def test_progress_is_written_at_most_every_few_seconds(run, monkeypatch):
    import training.runs as runs

    running(run, step=0)
    progress = RunProgress(TrainingRun.objects.get(pk=run.pk))
    clock = [1000.0]
    monkeypatch.setattr(runs.time, "monotonic", lambda: clock[0])
    for step in range(1, 6):  # five steps within one second: one write, the rest buffered
        clock[0] += 0.2
        progress.on_log({"kind": "train", "step": step, "total_steps": 10, "loss": 0.6, "rewards/accuracies": 0.5,
                         "rewards/margins": 0.1, "learning_rate": 1e-5, "epoch": 0.1, "elapsed_s": step, "eta_s": 9})
    assert TrainingLogEntry.objects.filter(run=run).count() == 1
    assert TrainingRun.objects.get(pk=run.pk).done == 1
    clock[0] += runs.PROGRESS_EVERY_S
    progress.on_log({"kind": "train", "step": 6, "total_steps": 10, "loss": 0.5})
    assert TrainingLogEntry.objects.filter(run=run).count() == 6
    assert TrainingRun.objects.get(pk=run.pk).done == 6


def test_a_run_marked_failed_behind_the_workers_back_stops_it_and_stays_failed(run):
    running(run, step=0)
    progress = RunProgress(TrainingRun.objects.get(pk=run.pk))
    TrainingRun.objects.filter(pk=run.pk).update(status=JobStatus.FAILED, error="no heartbeat")
    assert progress.should_stop()
    progress.finish(JobStatus.SUCCEEDED, "finished")
    run.refresh_from_db()
    assert run.status == JobStatus.FAILED and run.error == "no heartbeat"


def test_a_stale_heartbeat_fails_the_run_when_the_page_is_opened(client_for, admin_user, run):
    running(run, heartbeat_at=timezone.now() - timedelta(seconds=90))
    page = client_for(admin_user).get(f"/training/runs/{run.pk}/").content.decode()
    run.refresh_from_db()
    assert run.status == JobStatus.FAILED and run.finished_at
    assert run.error.startswith("No heartbeat from w1@host since") and "at step 4 of 10" in run.error
    assert "Resume" in page and "hx-trigger" not in page


def test_a_fresh_heartbeat_is_left_alone(client_for, admin_user, run):
    running(run, heartbeat_at=timezone.now() - timedelta(seconds=10))
    client_for(admin_user).get(f"/training/runs/{run.pk}/")
    assert TrainingRun.objects.get(pk=run.pk).status == JobStatus.RUNNING


def test_cancel_a_queued_run_at_once_and_a_running_one_after_its_step(client_for, admin_user, run, tmp_path):
    client = client_for(admin_user)
    client.post(f"/training/runs/{run.pk}/cancel")
    run.refresh_from_db()
    assert run.status == JobStatus.CANCELLED and run.message == "cancelled before it started"

    other = create_run(run.export, build_config(run.export, {}), "other")
    running(other)
    assert other.request_cancel().startswith("asked to stop")
    other.refresh_from_db()
    assert other.status == JobStatus.RUNNING and other.cancel_requested


def test_resume_starts_a_new_run_from_the_last_complete_checkpoint(client_for, admin_user, run,
                                                                   django_capture_on_commit_callbacks):
    running(run, step=6)
    TrainingRun.objects.filter(pk=run.pk).update(status=JobStatus.FAILED, error="killed")
    checkpoints = Path(run.output_dir)
    for step, complete in [(3, True), (5, True), (6, False)]:  # checkpoint-6 was being written when it died
        (checkpoints / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (checkpoints / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")

    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(admin_user).post(f"/training/runs/{run.pk}/resume")
    new = TrainingRun.objects.get(resumed_from=run)
    assert response["Location"] == f"/training/runs/{new.pk}/" and len(callbacks) == 1
    assert new.name == "page run · resumed" and new.status == JobStatus.QUEUED
    assert new.config["resume_from_checkpoint"] == str(checkpoints / "checkpoint-5")
    assert new.output_dir != run.output_dir and new.done == 5
    assert list(new.log_entries.values_list("step", flat=True)) == [1, 2, 3, 4, 5]
    assert TrainingRun.objects.get(pk=run.pk).status == JobStatus.FAILED  # the record of what happened stays


def test_only_failed_or_cancelled_runs_can_be_resumed(client_for, admin_user, run):
    response = client_for(admin_user).post(f"/training/runs/{run.pk}/resume", follow=True)
    assert "only failed or cancelled runs can be resumed" in response.content.decode()
    assert TrainingRun.objects.count() == 1


def test_artefacts_are_listed_and_downloaded(client_for, admin_user, run):
    TrainingRun.objects.filter(pk=run.pk).update(status=JobStatus.SUCCEEDED, done=10, total=10)
    write_adapter(run)
    (Path(run.output_dir) / "merged").mkdir()
    (Path(run.output_dir) / "merged" / "model.safetensors").write_bytes(b"merged")
    client = client_for(admin_user)
    page = client.get(f"/training/runs/{run.pk}/").content.decode()
    for name in ("adapter.zip", "adapter_model.safetensors", "train_config.yaml", "metrics.json", "train.log",
                 "merged/model.safetensors"):
        assert f"/files/{name}" in page
    response = client.get(f"/training/runs/{run.pk}/files/metrics.json")
    assert response.status_code == 200 and json.loads(b"".join(response.streaming_content)) == {"status": "completed"}
    assert b"".join(client.get(f"/training/runs/{run.pk}/files/merged/model.safetensors").streaming_content) == b"merged"
    archive = zipfile.ZipFile(BytesIO(b"".join(client.get(f"/training/runs/{run.pk}/files/adapter.zip").streaming_content)))
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= set(archive.namelist())
    assert "step 10/10" in page  # the log tail


@pytest.mark.parametrize("name", ["../export/train.jsonl", "checkpoint-1/x", "secret.txt", "%2e%2e/%2e%2e/etc/passwd"])
def test_downloads_serve_only_listed_artefacts(client_for, admin_user, run, name):
    write_adapter(run)
    (Path(run.output_dir) / "secret.txt").write_text("no")
    assert client_for(admin_user).get(f"/training/runs/{run.pk}/files/{name}").status_code == 404


def test_a_finished_run_becomes_the_next_rounds_generator_in_one_click(client_for, admin_user, run):
    TrainingRun.objects.filter(pk=run.pk).update(status=JobStatus.SUCCEEDED)
    out = write_adapter(run)
    client = client_for(admin_user)
    response = client.post(f"/training/runs/{run.pk}/generator")
    generator = Generator.objects.get(source_run=run)
    assert response["Location"] == f"/admin/annotation/generator/{generator.pk}/change/"
    assert generator.backend == "local" and generator.model == "default" and generator.adapter_path == str(out)
    client.post(f"/training/runs/{run.pk}/generator")
    assert Generator.objects.filter(source_run=run).count() == 1  # made once


def test_a_run_without_an_adapter_cannot_become_a_generator(client_for, admin_user, run):
    response = client_for(admin_user).post(f"/training/runs/{run.pk}/generator", follow=True)
    assert "has no trained adapter" in response.content.decode()
    assert not Generator.objects.filter(source_run=run).exists()


RUN_URLS = [("get", "/training/runs/{pk}/"), ("post", "/training/runs/{pk}/cancel"),
            ("post", "/training/runs/{pk}/resume"), ("post", "/training/runs/{pk}/merge"),
            ("post", "/training/runs/{pk}/generator"), ("get", "/training/runs/{pk}/files/metrics.json"),
            ("get", "/training/runs/{pk}/files/adapter.zip")]


@pytest.mark.parametrize(("method", "url"), RUN_URLS)
@pytest.mark.parametrize("persona", ["alice", "charlie"])
def test_run_pages_are_for_admins_only(client_for, request, persona, run, method, url):
    write_adapter(run)
    client = client_for(request.getfixturevalue(persona))
    assert getattr(client, method)(url.format(pk=run.pk)).status_code == 403
    run.refresh_from_db()
    assert run.status == JobStatus.QUEUED and not run.cancel_requested


@pytest.mark.parametrize(("method", "url"), RUN_URLS)
def test_anonymous_users_are_sent_to_login(client, run, method, url):
    assert getattr(client, method)(url.format(pk=run.pk))["Location"].startswith("/accounts/login/")


def test_the_admin_list_links_to_the_run_page(client_for, admin_user, run):
    page = client_for(admin_user).get("/admin/training/trainingrun/").content.decode()
    assert f"/training/runs/{run.pk}/" in page and "0/10 (0%)" in page


def test_a_stored_config_that_no_longer_loads_fails_the_run(run):
    from training.runs import run_training

    TrainingRun.objects.filter(pk=run.pk).update(config={**run.config, "lr": 1})
    assert run_training(run.pk, worker="w@h") == JobStatus.FAILED
    run.refresh_from_db()
    assert run.status == JobStatus.FAILED and "not used by the HfArgumentParser: ['lr']" in run.error
    assert run.message == "failed before training started" and run.worker == "w@h"


def test_a_redelivered_task_leaves_a_finished_or_running_run_alone(run):
    from training.runs import run_training

    for status in (JobStatus.CANCELLED, JobStatus.RUNNING):
        TrainingRun.objects.filter(pk=run.pk).update(status=status, worker="first@host")
        assert run_training(run.pk, worker="second@host") == status
        assert TrainingRun.objects.get(pk=run.pk).worker == "first@host"


def test_a_run_nobody_picks_up_says_which_worker_is_missing(client_for, admin_user, run):
    TrainingRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=3))
    page = client_for(admin_user).get(f"/training/runs/{run.pk}/").content.decode()
    assert "is a worker\n      listening on the <code>training</code> queue?" in page


def test_the_cron_command_fails_stale_runs(run):
    from io import StringIO

    from django.core.management import call_command

    running(run, heartbeat_at=timezone.now() - timedelta(minutes=5))
    out = StringIO()
    call_command("check_training_runs", stdout=out)
    assert out.getvalue().strip() == "1 run(s) marked failed."
    assert TrainingRun.objects.get(pk=run.pk).status == JobStatus.FAILED


def test_the_status_follows_the_log_between_steps(client_for, admin_user, run):
    """The page says what the log says as soon as it says it: the model loaded, the first step under way."""
    from training.runs import RunProgress

    running(run, step=0)
    progress = RunProgress(run)
    for message in ("model loaded; preparing the pairs (tokenizing every prompt)", "training: step 1 of 10 under way"):
        progress.on_log({"kind": "status", "message": message})
        page = client_for(admin_user).get(f"/training/runs/{run.pk}/").content.decode()
        assert message in page and "loading the model" not in page


def test_what_the_worker_printed_is_logged_as_output_not_as_a_warning(tmp_path):
    import logging

    from training.runs import _LogFormat

    printed = logging.LogRecord("celery.redirected", logging.WARNING, __file__, 1, "step 3/10 loss 0.5", None, None)
    logged = logging.LogRecord("training.run.1", logging.INFO, __file__, 1, "adapter saved", None, None)
    form = _LogFormat("%(asctime)s %(levelname)s %(name)s: %(message)s")
    assert form.format(printed).endswith(" step 3/10 loss 0.5") and "WARNING" not in form.format(printed)
    assert "INFO training.run.1: adapter saved" in form.format(logged)


def test_a_chart_of_one_point_draws_an_axis_around_it():
    import math

    from training.charts import line_chart

    svg = str(line_chart([(1, 0.6931)], "loss", reference=math.log(2)).svg)
    labels = re.findall(r'<text class="chart-axis"[^>]*>([^<]*)</text>', svg)
    assert labels[:2] == ["0.743", "0.643"] and "0.693" not in labels[:2]
    assert labels[2:] == ["step 0", "step 2"]
