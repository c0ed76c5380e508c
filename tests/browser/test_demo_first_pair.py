"""The demo's first start as an expert meets it: from an empty database with the demo's data, the first pair is
reviewable in the browser while the worker is still generating the other samples.

Real workers (one generating, one judging), the real offline model, the demo's own settings; the time from the
start of the pipeline to the first reviewable pair is printed (the README's figure comes from `make demo`).
"""

from __future__ import annotations

import time
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from playwright.sync_api import expect

from annotation import demo
from annotation.models import Campaign, Job, JobStatus, Vote
from tests.conftest import PASSWORD, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.model, pytest.mark.django_db(transaction=True),
              pytest.mark.timeout(2400)]  # a few minutes on an idle two-core machine; shared CI machines are slower

FIRST_PAIR_MS = 1_800_000


def test_the_first_pair_is_reviewable_while_generation_is_still_running(page, log_in, start_worker):
    call_command("seed_demo", stdout=StringIO())
    expert = get_user_model().objects.get(username="expert1")
    expert.set_password(PASSWORD)
    expert.save()
    start_worker("default,generation", "generation")
    start_worker("judging", "judging")
    started = time.monotonic()
    generation, judging = demo.start_pipeline()
    campaign = Campaign.objects.get(name=demo.CAMPAIGN)

    log_in(expert)
    page.goto(f"/review/{campaign.pk}/")
    # Nothing to review yet: the screen says what is being prepared, not that the work is done.
    expect(page.locator(".coming-text")).to_contain_text("being generated; new pairs appear here")
    assert page.locator(".progress").get_attribute("aria-valuenow") == "0"

    # The screen polls: the first pair appears on it without a reload.
    page.wait_for_selector("#review[data-assignment]", timeout=FIRST_PAIR_MS)
    first_pair_s = time.monotonic() - started
    generation.refresh_from_db()
    assert generation.status == JobStatus.RUNNING, "the first pair should come while later samples generate"
    assert generation.done < generation.total

    page.keyboard.press("1")
    page.keyboard.press("Enter")
    wait_for(lambda: Vote.objects.filter(expert=expert).exists(), timeout=60, what="the vote on the first pair")
    print(f"\nfirst reviewable pair {first_pair_s:.0f} s after the pipeline started; generation then at "
          f"{generation.done} of {generation.total} samples")
