"""Role checks on every site view so far: anonymous, expert, outsider, admin."""

import pytest

pytestmark = pytest.mark.django_db


def test_home_sends_anonymous_users_to_login(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_home_shows_an_expert_their_campaigns(client_for, alice, bob):
    from annotation.models import Campaign

    mine = Campaign.objects.create(name="Alice's campaign")
    mine.experts.add(alice)
    Campaign.objects.create(name="Someone else's").experts.add(bob)
    page = client_for(alice).get("/").content.decode()
    assert "Alice&#x27;s campaign" in page and "Someone else" not in page
    assert 'href="/admin/"' not in page
    assert '<a href="/review/">Review</a>' in page  # the same top-bar link as on the review pages


def test_home_tells_a_user_without_a_role_to_ask_for_one(client_for, charlie):
    page = client_for(charlie).get("/").content.decode()
    assert "no role yet" in page and 'href="/review/"' not in page


def test_an_expert_taken_out_of_the_group_loses_the_review_pages_at_the_next_request(client_for, alice):
    # The role rides along with the user's own query (annotation.roles.RoleBackend): read afresh per request.
    from django.contrib.auth.models import Group

    from annotation.roles import EXPERTS_GROUP

    client = client_for(alice)
    assert client.get("/review/").status_code in (200, 302)
    Group.objects.get(name=EXPERTS_GROUP).user_set.remove(alice)
    assert client.get("/review/").status_code == 403


def test_home_links_admins_to_the_admin(client_for, admin_user):
    assert 'href="/admin/"' in client_for(admin_user).get("/").content.decode()


def test_login_page_uses_the_site_style_and_logs_in(client, alice):
    page = client.get("/accounts/login/").content.decode()
    assert "compx.css" in page and 'name="username"' in page
    from tests.conftest import PASSWORD

    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"


def test_login_rejects_a_wrong_password(client, alice):
    response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert "didn't match" in response.content.decode()


def test_logout_needs_a_post_and_ends_the_session(client_for, alice):
    client = client_for(alice)
    assert client.get("/accounts/logout/").status_code == 405
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/").status_code == 302


@pytest.mark.parametrize("persona, status", [("alice", 302), ("charlie", 302), ("admin_user", 200)])
def test_the_admin_is_for_staff_only(client_for, request, persona, status):
    response = client_for(request.getfixturevalue(persona)).get("/admin/annotation/sample/")
    assert response.status_code == status


@pytest.mark.parametrize("page", ["document", "sample", "generator", "profile", "comparison", "judge",
                                  "judgeverdict", "campaign", "vote", "datasetexport", "job"])
def test_every_admin_list_renders(client_for, admin_user, page):
    assert client_for(admin_user).get(f"/admin/annotation/{page}/").status_code == 200


@pytest.mark.parametrize("page", ["trainingrun", "evaluationrun"])
def test_every_training_admin_list_renders(client_for, admin_user, page):
    assert client_for(admin_user).get(f"/admin/training/{page}/").status_code == 200


def test_healthz_reports_database_and_broker(client):
    response = client.get("/healthz")
    body = response.json()
    assert body["database"]["ok"] is True
    assert response.status_code == (200 if body["broker"]["ok"] else 503)


def test_healthz_reports_a_broken_broker_as_503(client, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["broker"]["ok"] is False


def test_healthz_reports_a_database_that_does_not_answer_as_503(client_for, admin_user, monkeypatch):
    from django.db import connection

    client = client_for(admin_user)  # staff see what answered; anyone else only whether it did
    monkeypatch.setattr(connection, "is_usable", lambda: False)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["database"] == {"ok": False, "detail": "the database connection does not answer"}


def test_every_page_has_an_icon(client):
    assert 'rel="icon" href="/static/favicon.svg"' in client.get("/accounts/login/").content.decode()
    response = client.get("/favicon.ico", follow=True)
    assert response.status_code == 200 and response.redirect_chain == [("/static/favicon.svg", 301)]
    assert b"<svg" in b"".join(response.streaming_content)
