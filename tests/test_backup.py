"""A backup restores: deploy/backup.sh of a site with votes, superseded answers and a written export, then
deploy/restore.sh into an empty database after MEDIA_ROOT was lost, finds every vote, every superseded answer
and every export, with its files intact."""

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

from annotation.export.dataset import export_dataset, sha256_file
from annotation.models import Assignment, DatasetExport, SupersededVote, Vote
from tests.conftest import REPO, _database_url
from tests.review_factories import fast_passwords, make_campaign  # noqa: F401

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
HTMX = {"HX-Request": "true"}
TABLES = {
    "annotation_vote": "id, assignment_id, expert_id, comparison_id, campaign_id, choice, first_choice, rationale",
    "annotation_supersededvote": "vote_id, reason, expert_id, choice, first_choice, rationale",
    "annotation_datasetexport": "id, name, status, path, sha256",
}


def rows(url: str) -> dict[str, list[tuple]]:
    with psycopg.connect(url) as conn:
        return {table: conn.execute(f"SELECT {columns} FROM {table} ORDER BY 1, 2").fetchall()  # noqa: S608
                for table, columns in TABLES.items()}


def run(script: str, env: dict, *args) -> str:
    result = subprocess.run([str(REPO / "deploy" / script), *map(str, args)], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def empty_database():
    """A new, empty database on the test server, dropped afterwards."""
    source = _database_url()
    name = f"compx_restore_{uuid.uuid4().hex[:10]}"
    admin_url = re.sub(r"/[^/]+$", "/postgres", source)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield re.sub(r"/[^/]+$", f"/{name}", source)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_backup_restores_into_an_empty_database_with_every_vote_and_export(
        client_for, alice, bob, settings, tmp_path, empty_database):
    settings.MEDIA_ROOT = tmp_path / "media"
    campaign = make_campaign([alice, bob], pairs=3, overlap=2)
    for expert in (alice, bob):
        client = client_for(expert)
        for _ in range(3):
            page = client.get(f"/review/{campaign.pk}/").content.decode()
            pk = int(re.search(r'data-assignment="(\d+)"', page).group(1))
            Assignment.objects.filter(pk=pk).update(flipped=False)
            client.post(f"/review/assignment/{pk}/vote", {"choice": "left", "rationale": f"{expert} says A"},
                        headers=HTMX)
        latest = Vote.objects.filter(expert=expert).latest("pk")
        client.post(f"/review/{campaign.pk}/undo", {"undo_vote": latest.pk}, headers=HTMX)  # kept as superseded
        client.post(f"/review/assignment/{latest.assignment_id}/vote", {"choice": "left"}, headers=HTMX)
    export = DatasetExport.objects.create(name="before the backup", policy="expert", test_fraction=0.0,
                                          campaign=campaign)
    export_dataset(export)
    export.refresh_from_db()
    assert export.status == "succeeded" and export.counts["train"] == 3
    assert Vote.objects.count() == 6 and SupersededVote.objects.count() == 2
    before = rows(_database_url())

    backup = tmp_path / "backup"
    run("backup.sh", {"DATABASE_URL": _database_url(), "MEDIA_ROOT": str(settings.MEDIA_ROOT)}, backup)
    shutil.rmtree(settings.MEDIA_ROOT)  # the disk is lost, with the database
    run("restore.sh", {"DATABASE_URL": empty_database, "MEDIA_ROOT": str(settings.MEDIA_ROOT)}, backup)

    after = rows(empty_database)
    assert after == before and len(after["annotation_vote"]) == 6 and len(after["annotation_supersededvote"]) == 2
    for name, info in export.counts["files"].items():
        assert sha256_file(Path(export.path) / name) == info["sha256"], name


def test_restore_refuses_a_database_that_is_not_empty(tmp_path, settings):
    backup = tmp_path / "backup"
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()
    run("backup.sh", {"DATABASE_URL": _database_url(), "MEDIA_ROOT": str(settings.MEDIA_ROOT)}, backup)
    result = subprocess.run([str(REPO / "deploy" / "restore.sh"), str(backup)],
                            env={**os.environ, "DATABASE_URL": _database_url(), "MEDIA_ROOT": str(tmp_path / "m")},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "restore only into an empty database" in result.stderr
