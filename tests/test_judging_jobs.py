"""Judging jobs: a real worker, the management commands, the admin actions and who may use them, the local judge."""

from __future__ import annotations

import json
import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from annotation.start import start_judging
from annotation.models import (
    Backend,
    Campaign,
    Comparison,
    Generator,
    Job,
    JobStatus,
    Judge,
    JudgeVerdict,
    Sample,
    TournamentPreference,
)
from tests.conftest import wait_for
from tests.test_judging_server import (
    ScriptedServer,
    http_judge,
    judge_in_process,
    make_profiles,
    make_sample,
    server,  # noqa: F401  (fixture)
)


@pytest.mark.worker
def test_a_judging_job_runs_in_a_real_worker_on_the_judging_queue(celery_worker_process):
    with ScriptedServer() as scripted:
        make_profiles(make_sample(), [3, 1, 4, 2])
        job = start_judging(http_judge(scripted), "tournament", samples=Sample.objects.all())
        finished = wait_for(lambda: Job.objects.filter(pk=job.pk, status__in=["succeeded", "failed"]).first(),
                            timeout=120, what="the judging job")
    assert finished.status == JobStatus.SUCCEEDED, finished.error
    assert (finished.done, finished.total) == (6, 6) and finished.stats["verdicts"] == 6
    assert TournamentPreference.objects.count() == 4 and "1 tournaments, 4 preferences (1 implied)" in finished.message


# --- commands ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_command_queues_a_job_with_its_options(server, django_capture_on_commit_callbacks):
    make_profiles(make_sample(), [1, 2])
    judge = http_judge(server)
    campaign = Campaign.objects.create(name="round-1")
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        call_command("judge_comparisons", "--judge", judge.name, "--pairing", "all", "--campaign", "round-1",
                     "--split", "train", "--limit", "3", "--no-wait", stdout=out)
    job = Job.objects.get()
    assert f"Queued job #{job.pk} (all)" in out.getvalue() and len(callbacks) == 1
    assert job.kind == "judge" and job.params["pairing"] == "all" and job.params["limit"] == 3
    assert job.params["campaign_id"] == campaign.pk and job.params["sample_ids"] == list(
        Sample.objects.values_list("pk", flat=True))


@pytest.mark.django_db
@pytest.mark.parametrize(("args", "message"), [
    (["--judge", "nobody"], "no judge named 'nobody' (known: scripted)"),
    (["--judge", "scripted", "--campaign", "nowhere"], "no campaign named 'nowhere'"),
    (["--judge", "scripted", "--pairing", "active"], "give --campaign"),
])
def test_the_command_explains_what_is_wrong(server, args, message):
    http_judge(server)
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("judge_comparisons", *args, "--no-wait")


@pytest.mark.django_db
def test_rank_generators_prints_elo_and_bradley_terry(server):
    sample = make_sample()
    strong, weak = (Generator.objects.create(name=n, backend=Backend.IMPORTED) for n in ("strong", "weak"))
    make_profiles(sample, [5, 6, 7], generator=strong)
    make_profiles(sample, [1, 2, 3], generator=weak)
    judge_in_process(http_judge(server))
    out = StringIO()
    call_command("rank_generators", "--judge", "scripted", "--k", "24", "--boot", "50", stdout=out)
    text = out.getvalue()
    assert "9 matches — 9 judge verdicts" in text and "Elo K=24" in text and text.index("strong") < text.index("weak")
    assert "9/9" in text and "0/9" in text
    with pytest.raises(CommandError, match="no decided comparisons"):
        call_command("rank_generators", "--judge", "scripted", "--campaign",
                     Campaign.objects.create(name="empty").name)


# --- admin actions and roles ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_sample_action_starts_a_judging_job_and_opens_its_page(client_for, admin_user, server,
                                                                   django_capture_on_commit_callbacks):
    sample = make_sample()
    judge = http_judge(server)
    client = client_for(admin_user)
    form = client.post("/admin/annotation/sample/", {"action": "judge_profiles", "_selected_action": [sample.pk]})
    assert b"Judge comparisons" in form.content and b"Knockout tournament" in form.content
    refused = client.post("/admin/annotation/sample/", {
        "action": "judge_profiles", "_selected_action": [sample.pk], "judge": judge.pk, "pairing": "active",
        "apply": "Judge"})
    assert b"Active pairing adds pairs to a campaign" in refused.content and not Job.objects.exists()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post("/admin/annotation/sample/", {
            "action": "judge_profiles", "_selected_action": [sample.pk], "judge": judge.pk,
            "pairing": "tournament", "apply": "Judge"})
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    assert job.params["sample_ids"] == [sample.pk] and job.params["pairing"] == "tournament"
    assert len(callbacks) == 1


@pytest.mark.django_db
def test_the_campaign_action_judges_the_campaigns_comparisons(client_for, admin_user, server,
                                                              django_capture_on_commit_callbacks):
    campaign = Campaign.objects.create(name="round-1")
    judge = http_judge(server)
    client = client_for(admin_user)
    form = client.post("/admin/annotation/campaign/", {"action": "judge_campaign", "_selected_action": [campaign.pk]})
    assert b"The campaign&#x27;s comparisons" in form.content and b'name="campaign"' not in form.content
    with django_capture_on_commit_callbacks(execute=False):
        client.post("/admin/annotation/campaign/", {
            "action": "judge_campaign", "_selected_action": [campaign.pk], "judge": judge.pk, "pairing": "existing",
            "apply": "Judge"})
    job = Job.objects.get()
    assert job.params["campaign_id"] == campaign.pk and job.params["pairing"] == "existing"
    assert job.params["sample_ids"] is None


@pytest.mark.django_db
def test_judging_a_campaigns_existing_comparisons_touches_nothing_else(server):
    sample = make_sample()
    p = make_profiles(sample, [1, 2, 3])
    inside = Comparison.objects.create(sample=sample, profile_a=p[0], profile_b=p[1])
    Comparison.objects.create(sample=sample, profile_a=p[1], profile_b=p[2])
    campaign = Campaign.objects.create(name="round-1")
    campaign.comparisons.add(inside)
    job = judge_in_process(http_judge(server), "existing", campaign_id=campaign.pk)
    assert job.status == JobStatus.SUCCEEDED and job.total == 2
    assert set(JudgeVerdict.objects.values_list("comparison", flat=True)) == {inside.pk}


@pytest.mark.django_db
@pytest.mark.parametrize("persona", ["alice", "charlie"])
def test_only_admins_may_start_judging_or_see_judges(client_for, request, persona, server):
    sample = make_sample()
    judge = http_judge(server)
    client = client_for(request.getfixturevalue(persona))
    response = client.post("/admin/annotation/sample/", {
        "action": "judge_profiles", "_selected_action": [sample.pk], "judge": judge.pk, "pairing": "all",
        "apply": "Judge"})
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    for url in ("/admin/annotation/judge/", f"/admin/annotation/judge/{judge.pk}/change/",
                "/admin/annotation/comparison/", "/admin/annotation/tournamentpreference/"):
        assert client.get(url).status_code == 302
    assert not Job.objects.exists()


# --- the local judge -----------------------------------------------------------------------------------


@pytest.mark.model
@pytest.mark.django_db
def test_the_local_judge_reads_the_verdict_token_probabilities():
    sample = make_sample()
    make_profiles(sample, [1, 2, 3])
    judge = Judge.objects.create(name="local", backend=Backend.LOCAL, model="default")
    job = judge_in_process(judge, "tournament")
    assert job.status == JobStatus.SUCCEEDED, job.error
    verdicts = list(JudgeVerdict.objects.all())
    assert len(verdicts) == 4  # 3 candidates: 2 matches, both orders
    for v in verdicts:
        raw = json.loads(v.raw_text)
        assert raw["answer_prefix"] == '{"preferred": "' and 0 < raw["p_A"] + raw["p_B"] <= 1
        assert v.prompt_tokens > 100 and v.completion_tokens == 0
        if v.is_valid:
            p = raw["p_A_normalised"]
            assert v.confidence == pytest.approx(p if v.order == "ab" else 1 - p)
        else:
            assert v.confidence is None and "next-token probability" in v.error
    # Scoring is deterministic: a re-run asks nothing, and scoring again gives the same numbers.
    again = judge_in_process(judge, "tournament")
    assert "0 new verdicts" in again.message
