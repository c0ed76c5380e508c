"""The agreement dashboard and snapshot downloads: staff only, rendered from real votes and verdicts."""

import csv
import io

import pytest
from django.urls import include, path

from annotation.export.dataset import export_dataset
from annotation.models import DatasetExport
from compx_site import urls as site_urls
from tests.labels_factory import World

# Until compx_site/urls.py mounts the staff tools, these tests mount them themselves.
urlpatterns = list(site_urls.urlpatterns)
if not any(getattr(p, "namespace", None) == "dashboard" for p in urlpatterns):
    urlpatterns.append(path("admin-tools/", include("annotation.agreement.urls")))

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

URL = "/admin-tools/agreement/"


@pytest.fixture
def campaign(alice, bob):
    """Two experts and two judges on eight comparisons; a judge named with markup to prove escaping."""
    world = World()
    good, sloppy = world.judge("careful-judge"), world.judge("<script>alert(1)</script>")
    campaign = world.campaign("Pilot <b>1</b>", judge=good, display="reveal")
    for index, (first, second, verdict) in enumerate([("a", "a", "a"), ("b", "b", "b"), ("a", "b", "a"),
                                                      ("tie", "tie", "b"), ("a", "a", "a"), ("b", "a", "b"),
                                                      ("both_bad", "b", "b"), ("a", "a", "a")]):
        comparison = world.comparison(generator_a="base", generator_b="tuned" if index % 2 else "large")
        world.verdicts(comparison, good, verdict, verdict)
        world.verdicts(comparison, sloppy, "a", "b" if index % 3 else None)
        world.vote(campaign, comparison, alice, first, seconds=20 + index)
        world.vote(campaign, comparison, bob, second, first_choice="a" if second == "b" else None, gold="a" if index == 0 else "")
    return campaign


def test_it_renders_the_figures_and_plots_for_a_campaign(client_for, admin_user, campaign):
    response = client_for(admin_user).get(URL, {"campaign": campaign.pk})
    page = response.content.decode()
    assert response.status_code == 200
    assert "Krippendorff" in page and "Cohen's κ" in page and "Spearman" in page
    assert page.count('<figure class="plot">') == 4  # κ by judge, judge behaviour, rankings, confusion matrix
    assert "careful-judge" in page and "Pilot &lt;b&gt;1&lt;/b&gt;" in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_comparison_table_says_whether_it_shows_every_row(client_for, admin_user, campaign, monkeypatch):
    page = client_for(admin_user).get(URL, {"campaign": campaign.pk}).content.decode()
    assert "All 8 rows, also in the CSV." in page
    assert "alice: Both bad" in page and "alice: both_bad" not in page  # answers as the experts gave them
    monkeypatch.setattr("annotation.agreement.dashboard.TABLE_ROWS", 5)
    page = client_for(admin_user).get(URL, {"campaign": campaign.pk}).content.decode()
    assert "The first 5 of 8 rows; the CSV has all of them." in page


def test_it_renders_with_no_labels_at_all(client_for, admin_user):
    response = client_for(admin_user).get(URL)
    assert response.status_code == 200 and "No judge verdicts in this scope." in response.content.decode()


def test_it_is_denied_to_experts_and_people_without_a_role(client_for, alice, charlie):
    assert client_for(alice).get(URL).status_code == 403
    assert client_for(charlie).get(URL).status_code == 403


def test_it_sends_anonymous_users_to_login(client):
    response = client.get(URL)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_csv_has_one_row_per_comparison(client_for, admin_user, campaign):
    response = client_for(admin_user).get("/admin-tools/agreement/comparisons.csv", {"campaign": campaign.pk})
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert response["Content-Type"] == "text/csv" and rows[0][0] == "comparison_id" and len(rows) == 9
    assert all(row[8] == "careful-judge" for row in rows[1:])


def test_the_csv_defuses_spreadsheet_formulas(client_for, admin_user, alice):
    world = World()
    campaign = world.campaign("c")
    world.vote(campaign, world.comparison(world.sample("=HYPERLINK(1)")), alice, "a")
    response = client_for(admin_user).get("/admin-tools/agreement/comparisons.csv", {"campaign": campaign.pk})
    assert "'=HYPERLINK(1)" in b"".join(response.streaming_content).decode()


def test_the_csv_is_denied_to_experts(client_for, alice):
    assert client_for(alice).get("/admin-tools/agreement/comparisons.csv").status_code == 403


@pytest.fixture
def snapshot(campaign, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    export = DatasetExport.objects.create(name="v1", policy="expert", test_fraction=0)
    export_dataset(export)
    return export


def test_staff_download_snapshot_files_listed_in_the_admin(client_for, admin_user, snapshot):
    client = client_for(admin_user)
    page = client.get(f"/admin/annotation/datasetexport/{snapshot.pk}/change/").content.decode()
    assert f"/admin-tools/exports/{snapshot.pk}/files/train.jsonl" in page and "Dataset card" in page
    response = client.get(f"/admin-tools/exports/{snapshot.pk}/files/train.jsonl")
    body = b"".join(response.streaming_content)
    assert response.status_code == 200 and body == (snapshot_path(snapshot) / "train.jsonl").read_bytes()


def test_only_files_of_the_snapshot_are_served(client_for, admin_user, snapshot):
    client = client_for(admin_user)
    assert client.get(f"/admin-tools/exports/{snapshot.pk}/files/../../secret_key").status_code == 404
    assert client.get(f"/admin-tools/exports/{snapshot.pk}/files/nothing.jsonl").status_code == 404


def test_downloads_are_denied_to_experts(client_for, alice, snapshot):
    assert client_for(alice).get(f"/admin-tools/exports/{snapshot.pk}/files/train.jsonl").status_code == 403


def test_the_export_list_links_the_dashboard(client_for, admin_user):
    page = client_for(admin_user).get("/admin/annotation/datasetexport/").content.decode()
    assert 'href="/admin-tools/agreement/"' in page and "Export DPO dataset" in page


def test_the_export_form_explains_its_fields_in_words(client_for, admin_user):
    page = client_for(admin_user).get("/admin/annotation/datasetexport/add/").content.decode()
    assert "Judges calibrated against experts: the minimum judge–expert κ" in page
    assert "judge_calibrated:" not in page  # the policy's stored value, not what the menu calls it


def snapshot_path(export):
    from pathlib import Path

    return Path(export.path)
