"""Exports from the admin: the add form queues a real worker, which writes the snapshot and its job."""

import json
from pathlib import Path

import pytest

from annotation.export.dataset import export_dataset, verify_snapshot
from annotation.models import DatasetExport, Job, JobKind
from tests.conftest import wait_for
from tests.labels_factory import World


@pytest.fixture
def media_env(monkeypatch, settings, tmp_path):
    """MEDIA_ROOT for this process and for the worker process the next fixture starts."""
    monkeypatch.setenv("MEDIA_ROOT", str(tmp_path / "media"))
    settings.MEDIA_ROOT = tmp_path / "media"
    return tmp_path / "media"


def votes(alice, bob, count=6):
    world = World()
    campaign = world.campaign("c")
    for index in range(count):
        comparison = world.comparison(world.sample(f"s{index}"))
        world.vote(campaign, comparison, alice, "a" if index % 3 else "b")
        world.vote(campaign, comparison, bob, "a" if index % 3 else "b")
    return campaign


@pytest.mark.worker
def test_the_add_form_queues_an_export_that_a_real_worker_writes(media_env, celery_worker_process, client_for,
                                                                 admin_user, alice, bob):
    campaign = votes(alice, bob)
    response = client_for(admin_user).post("/admin/annotation/datasetexport/add/", {
        "name": "from-admin", "policy": "expert", "format": "jsonl", "campaign": campaign.pk,
        "test_fraction": "0", "kappa_threshold": "0.6",
    })
    assert response.status_code == 302
    export = DatasetExport.objects.get(name="from-admin")
    assert export.created_by == admin_user
    done = wait_for(lambda: DatasetExport.objects.filter(pk=export.pk, status="succeeded").first(), timeout=120,
                    what="the worker to write the snapshot")
    assert done.counts["train"] == 6 and Path(done.path).is_relative_to(media_env) and verify_snapshot(done)
    job = Job.objects.get(kind=JobKind.EXPORT, params__export_id=export.pk)
    assert job.status == "succeeded" and "6 train" in job.message


@pytest.mark.django_db
def test_a_finished_export_is_read_only_in_the_admin(client_for, admin_user, alice, bob, media_env):
    votes(alice, bob)
    export = DatasetExport.objects.create(name="v1", policy="expert", test_fraction=0)
    export_dataset(export)
    client = client_for(admin_user)
    page = client.get(f"/admin/annotation/datasetexport/{export.pk}/change/").content.decode()
    assert 'name="_save"' not in page and "SHA256SUMS" in page
    client.post(f"/admin/annotation/datasetexport/{export.pk}/change/", {"name": "renamed", "policy": "judge_consensus"})
    assert DatasetExport.objects.get(pk=export.pk).name == "v1"
    # Its add form starts a snapshot and offers no "continue editing" that the snapshot could not honour.
    page = client.get("/admin/annotation/datasetexport/add/").content.decode()
    assert 'name="_save"' in page and 'name="_continue"' not in page and 'name="_addanother"' not in page


@pytest.mark.django_db
def test_export_again_makes_a_new_snapshot_with_the_same_settings(client_for, admin_user, alice, bob, media_env,
                                                                  django_capture_on_commit_callbacks):
    votes(alice, bob)
    export = DatasetExport.objects.create(name="v1", policy="expert", test_fraction=0, ties_as_kto=True)
    with django_capture_on_commit_callbacks() as callbacks:
        client_for(admin_user).post("/admin/annotation/datasetexport/", {
            "action": "export_again", "_selected_action": [export.pk]})
    again = DatasetExport.objects.exclude(pk=export.pk).get()
    assert again.name.startswith("v1 @ ") and again.ties_as_kto and again.policy == "expert"
    assert len(callbacks) == 1  # the task is sent once the transaction commits


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_the_batches_come_in_sample_order(alice, bob, media_env, monkeypatch):
    """As a worker runs it: in autocommit, where the samples are walked with a server-side cursor."""
    from annotation.export import dataset as module

    monkeypatch.setattr(module, "BATCH_SAMPLES", 2)  # several batches from six samples
    votes(alice, bob)
    item = DatasetExport.objects.create(name="ahead", policy="expert", test_fraction=0)
    export_dataset(item)
    lines = (Path(item.path) / "train.jsonl").read_text().splitlines()
    assert [json.loads(line)["sample"] for line in lines] == [f"s{i}" for i in range(6)]
