"""The small cases a shared server meets: each a clear 4xx or report, and nothing written. Login throttling,
the Content-Security-Policy header, /healthz, the proxy header and SECRET_KEY in production."""

import json
import os
import subprocess
import sys

import pytest

from annotation.documents.importing import ImportFailed, import_documents
from annotation.models import Document, Profile, Sample, Vote
from tests.conftest import PASSWORD, REPO
from tests.review_factories import fast_passwords, make_campaign  # noqa: F401

pytestmark = pytest.mark.django_db
HTMX = {"HX-Request": "true"}


# --- logins ------------------------------------------------------------------------------------------------


def test_wrong_passwords_lock_the_login_for_a_while_with_a_page_that_says_so(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
        assert response.status_code == 200 and "didn't match" in response.content.decode()
    locked = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert locked.status_code == 429 and "Too many failed logins" in locked.content.decode()
    # Even the right password is refused until the pause ends.
    right = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert right.status_code == 429 and "_auth_user_id" not in client.session


def test_a_right_password_before_the_limit_resets_the_count(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert client.post("/accounts/login/", {"username": "alice", "password": PASSWORD}).status_code == 302
    client.post("/accounts/logout/")
    assert client.post("/accounts/login/", {"username": "alice", "password": "wrong"}).status_code == 200


# --- headers and /healthz ---------------------------------------------------------------------------------


def test_every_page_carries_a_content_security_policy(client_for, admin_user):
    client = client_for(admin_user)
    policy = client.get("/").headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "object-src 'none'" in policy and "frame-ancestors 'none'" in policy
    page = client.get("/admin-tools/agreement/")
    nonce = page.headers["Content-Security-Policy"].split("'nonce-")[1].split("'")[0]
    assert f'<style nonce="{nonce}">' in page.content.decode()


def test_healthz_tells_anyone_whether_it_is_healthy_and_only_staff_what_answered(client, client_for, admin_user):
    body = client.get("/healthz").json()
    assert set(body) == {"status", "database", "broker"} and "detail" not in json.dumps(body)
    staff = client_for(admin_user).get("/healthz").json()
    assert staff["database"]["detail"] and staff["broker"]["detail"]


def settings_in_a_fresh_process(env: dict, code: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "PROXY_SSL_HEADER", "ALLOWED_HOSTS")}
    return subprocess.run([sys.executable, "-c", "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE',"
                           f"'compx_site.settings'); django.setup(); from django.conf import settings; {code}"],
                          cwd=REPO, env={**base, **env}, capture_output=True, text=True, timeout=120)


def test_the_proxy_header_is_trusted_only_when_configured():
    plain = settings_in_a_fresh_process({}, "print(settings.SECURE_PROXY_SSL_HEADER)")
    assert plain.stdout.strip() == "None", plain.stderr
    proxied = settings_in_a_fresh_process({"PROXY_SSL_HEADER": "X-Forwarded-Proto"},
                                          "print(settings.SECURE_PROXY_SSL_HEADER)")
    assert proxied.stdout.strip() == "('HTTP_X_FORWARDED_PROTO', 'https')", proxied.stderr


def test_a_production_host_refuses_to_start_without_a_secret_key():
    result = settings_in_a_fresh_process({"DEBUG": "false", "ALLOWED_HOSTS": "compx.example.org"}, "print('started')")
    assert result.returncode != 0 and "started" not in result.stdout
    assert "SECRET_KEY is not set" in result.stderr
    local = settings_in_a_fresh_process({"DEBUG": "false"}, "print('started')")  # the demo: a key kept in var/
    assert local.stdout.strip() == "started", local.stderr


# --- the review screen -------------------------------------------------------------------------------------


def open_pair(client, campaign) -> int:
    import re

    return int(re.search(r'data-assignment="(\d+)"', client.get(f"/review/{campaign.pk}/").content.decode()).group(1))


@pytest.mark.parametrize("url", ["/review/99999999999999999999/", "/review/assignment/99999999999999999999/",
                                 "/review/assignment/99999999999999999999/vote", "/jobs/99999999999999999999/",
                                 "/training/runs/99999999999999999999/"])
def test_an_id_beyond_the_database_range_is_a_404(client_for, alice, admin_user, url):
    user = admin_user if url.startswith(("/jobs", "/training")) else alice
    assert client_for(user).get(url).status_code == 404


def test_a_rationale_over_the_limit_is_named_and_not_echoed_whole(client_for, alice):
    campaign = make_campaign([alice], pairs=1)
    client = client_for(alice)
    pk = open_pair(client, campaign)
    response = client.post(f"/review/assignment/{pk}/vote", {"choice": "left", "rationale": "x" * 50_000},
                           headers=HTMX)
    page = response.content.decode()
    assert response.status_code == 422 and "The rationale is 50,000 characters; at most 4,000" in page
    assert "x" * 4001 not in page and "Choose A, B" not in page
    assert not Vote.objects.exists()


# --- imports -----------------------------------------------------------------------------------------------


CSV_HEADER = "id,title,abstract,authors,year,sample\n"


def test_a_csv_saved_by_excel_with_a_byte_order_mark_imports(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(("\ufeff" + CSV_HEADER + "d1,Title,An abstract.,Ann Author,2020,s1\n").encode("utf-8"))
    import_documents(path)
    assert Document.objects.get().external_id == "d1"


@pytest.mark.parametrize("row, problem", [
    ({"id": "x" * 300}, "field 'id': 300 characters; at most 200"),
    ({"sample": "s" * 201}, "field 'sample': 201 characters; at most 200"),
    ({"title": "Tit\x00le"}, "field 'title': contains a NUL byte"),
    ({"abstract": "Ab\x00stract"}, "field 'abstract': contains a NUL byte"),
    ({"authors": ["A\x00"]}, "field 'authors': contains a NUL byte"),
])
def test_document_imports_check_column_limits_before_the_database(tmp_path, row, problem):
    record = {"id": "d1", "title": "Title", "abstract": "An abstract.", "authors": ["Ann"], "year": 2020, **row}
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(ImportFailed) as failed:
        import_documents(path)
    assert problem in failed.value.report()
    assert not Document.objects.exists() and not Sample.objects.exists()


GOOD = ('Domain: "Hydrology"\n\nCompetencies:\n- Flood modelling: Builds flood models.\n'
        "- Field sampling: Samples rivers.\n- Remote sensing: Uses satellite data.")


@pytest.mark.parametrize("row, problem", [
    ({"candidate": 99999}, "field 'candidate': expected a whole number from 0 to 32767, got 99999"),
    ({"generator": "g" * 101}, "field 'generator': 101 characters; at most 100"),
    ({"text": GOOD + "\x00"}, "field 'text': contains a NUL byte"),
])
def test_profile_imports_check_column_limits_before_the_database(tmp_path, row, problem):
    from annotation.documents.labels import import_profiles

    Sample.objects.create(name="s1")
    path = tmp_path / "profiles.jsonl"
    path.write_text(json.dumps({"sample": "s1", "generator": "g", "candidate": 0, "text": GOOD, **row}) + "\n")
    with pytest.raises(ImportFailed) as failed:
        import_profiles(path)
    assert problem in failed.value.report() and not Profile.objects.exists()


def test_imported_votes_never_make_an_existing_account_an_expert(tmp_path, make_user):
    from annotation.documents.labels import import_profiles, import_votes

    from annotation.roles import is_expert

    staff = make_user("root", admin=True)
    Sample.objects.create(name="s1")
    profiles = tmp_path / "profiles.jsonl"
    profiles.write_text("".join(json.dumps({"sample": "s1", "generator": "g", "candidate": i, "text": GOOD}) + "\n"
                                for i in range(2)))
    import_profiles(profiles)
    votes = tmp_path / "votes.jsonl"
    votes.write_text(json.dumps({"sample": "s1", "expert": "root", "choice": "a",
                                 "a": {"generator": "g", "candidate": 0}, "b": {"generator": "g", "candidate": 1}})
                     + "\n")
    with pytest.raises(ImportFailed) as failed:
        import_votes(votes, "campaign")
    assert "'root' is an existing account that is not an expert" in failed.value.report()
    assert not is_expert(staff) and not Vote.objects.exists()
