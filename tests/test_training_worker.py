"""Real training in a real Celery worker: the admin form to a loadable adapter, cancel, a crash, a killed worker.

Each run trains the real offline SmolLM2-135M for a few steps on short pairs (max_length 128, ~2 s a step).
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from annotation.models import JobStatus
from tests.conftest import _database_url, wait_for
from tests.training_factory import form_data, make_export, start_worker, stop
from training.ml.dpo import CONFIG_FILE
from training.models import TrainingLogEntry, TrainingRun
from training.runs import last_complete_checkpoint

pytestmark = [pytest.mark.worker, pytest.mark.model, pytest.mark.urls("tests.training_factory")]


@pytest.fixture
def export(transactional_db, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"  # run folders are absolute paths in the config: the worker follows
    return make_export(tmp_path / "export")


def post_start(client, export, **overrides) -> TrainingRun:
    response = client.post("/admin/training/trainingrun/add/", form_data(export, **overrides))
    assert response.status_code == 302, response.content.decode()[:3000]
    run = TrainingRun.objects.get()
    assert response["Location"] == f"/training/runs/{run.pk}/"
    return run


# Generous: a few seconds a step on an idle two-core machine, but CI machines are shared.
SLOW = 600


def finished(run: TrainingRun, timeout: float = SLOW) -> TrainingRun:
    return wait_for(lambda: TrainingRun.objects.filter(pk=run.pk, status__in=[
        JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]).first(), timeout=timeout,
        what=f"training run {run.pk} to end")


def test_a_run_started_from_the_admin_trains_in_the_worker(celery_worker_process, client_for, admin_user, export,
                                                            model_dir):
    from peft import PeftModel

    from training.ml.models import load_model

    client = client_for(admin_user)
    run = post_start(client, export, max_steps=2, name="first run")

    run = finished(run)
    assert run.status == JobStatus.SUCCEEDED, run.error
    assert run.done == run.total == 2
    assert run.message.startswith("finished 2 steps")
    assert run.worker.startswith(f"test-{os.getpid()}@")
    assert run.heartbeat_at and run.started_at <= run.finished_at

    entries = list(run.log_entries.order_by("step"))
    assert [e.step for e in entries] == [1, 2]
    assert entries[0].loss == pytest.approx(0.6931, abs=1e-3)  # ln 2: the adapter starts at zero
    assert all(e.loss is not None and e.reward_accuracy is not None and e.learning_rate for e in entries)
    assert {"loss", "rewards/accuracies", "rewards/margins", "learning_rate"} <= run.latest_metrics.keys()

    out = Path(run.output_dir)
    assert (out / "adapter_model.safetensors").is_file() and (out / CONFIG_FILE).is_file()
    assert "step 2/2" in (out / "train.log").read_text()
    base, _ = load_model(str(model_dir), model_dir.parent, device="cpu", dtype="fp32")
    assert any("lora_B" in name for name, _ in PeftModel.from_pretrained(base, str(out)).named_parameters())

    page = client.get(f"/training/runs/{run.pk}/").content.decode()
    assert "Succeeded" in page and "adapter.zip" in page and "<svg" in page and "hx-trigger" not in page
    assert client.get(f"/training/runs/{run.pk}/files/adapter_model.safetensors").status_code == 200


def test_cancel_stops_the_run_after_the_current_step(celery_worker_process, client_for, admin_user, export):
    client = client_for(admin_user)
    run = post_start(client, export, max_steps=20, save_steps=50)
    wait_for(lambda: TrainingLogEntry.objects.filter(run=run).exists(), timeout=SLOW, what="the first step")

    client.post(f"/training/runs/{run.pk}/cancel")
    run = finished(run, timeout=SLOW)
    assert run.status == JobStatus.CANCELLED
    assert run.message.startswith(f"cancelled by an admin after step {run.done} of 20")
    assert run.done < 20 and run.error == ""
    # The stop step is checkpointed even between save_steps, so the run can be resumed from there.
    assert last_complete_checkpoint(run).name == f"checkpoint-{run.done}"


def test_a_run_that_crashes_is_failed_with_its_error(celery_worker_process, client_for, admin_user, export):
    # A hub id that passes the form but cannot be loaded on an offline worker.
    run = post_start(client_for(admin_user), export, model_name_or_path="no-such-org/no-such-model")
    run = finished(run)
    assert run.status == JobStatus.FAILED
    assert run.error.startswith("OSError: ") and "huggingface.co" in run.error  # offline: cannot fetch it
    assert run.message == "failed at step 0" and run.finished_at
    assert "Traceback" in (Path(run.output_dir) / "train.log").read_text()


def test_a_killed_worker_leaves_a_failed_run_that_resumes_from_its_checkpoint(
        celery_worker_process, client_for, admin_user, export):
    client = client_for(admin_user)
    run = post_start(client, export, max_steps=5, save_steps=1)
    wait_for(lambda: (r := TrainingRun.objects.get(pk=run.pk)).done >= 2 and last_complete_checkpoint(r),
             timeout=SLOW, what="two steps and a checkpoint")

    celery_worker_process.send_signal(signal.SIGKILL)  # no goodbye: the run stays "running"
    celery_worker_process.wait(timeout=10)
    assert TrainingRun.objects.get(pk=run.pk).status == JobStatus.RUNNING

    # The same worker starting again fails what it left behind, with the reason.
    worker = start_worker(_database_url())
    try:
        run = finished(run)  # the new worker's start, not a stale heartbeat, fails it
        assert run.status == JobStatus.FAILED
        assert "restarted while this was running" in run.error and "Resume" in run.error
        checkpoint = last_complete_checkpoint(run)
        assert checkpoint is not None

        response = client.post(f"/training/runs/{run.pk}/resume")
        resumed = TrainingRun.objects.get(resumed_from=run)
        assert response["Location"] == f"/training/runs/{resumed.pk}/"
        assert resumed.config["resume_from_checkpoint"] == str(checkpoint)

        resumed = finished(resumed)
        assert resumed.status == JobStatus.SUCCEEDED, resumed.error
        assert resumed.done == resumed.total == 5
        # The curve is whole: steps up to the checkpoint come from the first run, the rest were trained again.
        assert list(resumed.log_entries.order_by("step").values_list("step", flat=True)) == [1, 2, 3, 4, 5]
        assert (Path(resumed.output_dir) / "adapter_model.safetensors").is_file()
    finally:
        stop(worker)


def test_a_silent_worker_is_noticed_without_a_restart(celery_worker_process, client_for, admin_user, export):
    client = client_for(admin_user)
    run = post_start(client, export, max_steps=20)
    wait_for(lambda: TrainingRun.objects.get(pk=run.pk).status == JobStatus.RUNNING, timeout=SLOW, what="the start")
    celery_worker_process.send_signal(signal.SIGKILL)
    celery_worker_process.wait(timeout=10)

    # A minute later (pretend): the heartbeat is stale, and opening the run list notices.
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=2))
    assert client.get("/admin/training/trainingrun/").status_code == 200
    run.refresh_from_db()
    assert run.status == JobStatus.FAILED and "No heartbeat" in run.error and run.finished_at
