"""The staff pages in a real browser under the site's Content-Security-Policy: the admin (lists, change forms
with inlines, an item's history), the agreement dashboard and a job's live page break none of it (the
``page`` fixture fails a test on any violation Chromium reports)."""

import pytest

from annotation.models import Assignment, Job, Vote
from tests.conftest import PASSWORD
from tests.review_factories import add_verdicts, fast_passwords, make_campaign, make_judge  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_staff_pages_keep_to_the_content_security_policy(page, admin_user, alice):
    judge = make_judge()
    campaign = make_campaign([alice], pairs=2, judge_display="reveal", judge=judge)
    item = campaign.items.first()
    add_verdicts(item.comparison, judge, "a", "b")
    assignment = Assignment.objects.create(item=item, expert=alice)
    Vote.objects.create(assignment=assignment, expert=alice, comparison=item.comparison, campaign=campaign,
                        choice="a", first_choice="a")
    job = Job.objects.create(kind="generate", total=4, done=1)
    page.goto("/accounts/login/")
    page.fill("#id_username", admin_user.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/")
    for url in ["/", "/admin/", f"/admin/annotation/campaign/{campaign.pk}/change/",
                f"/admin/annotation/campaignitem/{item.pk}/change/", "/admin/annotation/vote/",
                f"/admin-tools/agreement/?campaign={campaign.pk}", f"/jobs/{job.pk}/",
                "/admin/annotation/datasetexport/add/", "/admin/annotation/document/import/"]:
        response = page.goto(url)
        assert response.status == 200, url
        page.wait_for_load_state("networkidle")
    assert "History (every answer" in page.goto(f"/admin/annotation/campaignitem/{item.pk}/change/").text()
