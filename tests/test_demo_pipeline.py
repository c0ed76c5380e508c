"""The demo's first start runs generation then judging in a real worker, and never leaves a job queued forever."""

import pytest

from annotation import demo
from annotation.models import Backend, Generator, Job, JobStatus, Profile
from tests.conftest import wait_for
from tests.test_generation import make_samples

pytestmark = pytest.mark.worker


def finished(jobs):
    return all(Job.objects.get(pk=j.pk).is_finished for j in jobs)


@pytest.mark.model
def test_the_pipeline_generates_and_judges_in_two_workers(start_worker, django_user_model):
    start_worker("default,generation", "generation")
    start_worker("judging", "judging")
    make_samples(2)
    generator, _, campaign = demo.ensure_demo_objects()
    Generator.objects.filter(pk=generator.pk).update(max_new_tokens=12, candidates=2)  # keep the test short
    jobs = demo.start_pipeline()
    wait_for(lambda: finished(jobs), timeout=300, what="the demo pipeline")
    generate, judging = (Job.objects.get(pk=j.pk) for j in jobs)
    assert generate.status == JobStatus.SUCCEEDED, generate.error
    assert judging.status == JobStatus.SUCCEEDED, judging.error
    assert Profile.objects.filter(generator=generator).count() == 4
    assert demo.pipeline_status([generate, judging]) == "ready"
    assert demo.start_pipeline() == jobs, "a second start leaves the first pipeline be"


def test_a_failed_generation_marks_the_judging_step_failed(start_worker):
    start_worker("default,generation", "generation")
    start_worker("judging", "judging")
    make_samples(1)
    generator, _, _ = demo.ensure_demo_objects()
    Generator.objects.filter(pk=generator.pk).update(backend=Backend.OPENAI, base_url="http://127.0.0.1:9/v1")
    jobs = demo.start_pipeline()
    wait_for(lambda: finished(jobs), timeout=120, what="both demo jobs to end")
    generate, judging = (Job.objects.get(pk=j.pk) for j in jobs)
    assert generate.status == JobStatus.FAILED and "cannot reach" in generate.error
    assert judging.status == JobStatus.FAILED and "generating the candidates failed" in judging.error
    assert demo.pipeline_status([generate, judging]) == "failed"


@pytest.mark.django_db
def test_a_pipeline_a_stopped_demo_left_unfinished_is_started_again(django_capture_on_commit_callbacks):
    make_samples(1)
    with django_capture_on_commit_callbacks() as sent:
        first = demo.start_pipeline()
    assert len(sent) == 2  # generation, and judging that follows it
    # Ctrl-C during the first start: generation was running and judging queued, and their workers are gone.
    Job.objects.filter(pk=first[0].pk).update(status=JobStatus.RUNNING)
    with django_capture_on_commit_callbacks() as sent:
        again = demo.start_pipeline()
    assert len(sent) == 2 and {job.pk for job in again}.isdisjoint(job.pk for job in first)
    assert demo.pipeline_jobs() == again and demo.pipeline_status(again) == "running"
    for job in first:
        job.refresh_from_db()
        assert job.status == JobStatus.FAILED and "the next `make demo` started it again" in job.error
    Job.objects.filter(pk__in=[job.pk for job in again]).update(status=JobStatus.SUCCEEDED)
    with django_capture_on_commit_callbacks() as sent:
        assert demo.start_pipeline() == again  # done: later starts leave it be
    assert not sent


# --- the pipeline, per sample ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_first_sample_is_generated_alone_then_the_rest_in_batches():
    from annotation.profiles.generation import batches

    assert batches(list(range(10)), 4) == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert batches([], 4) == []


@pytest.mark.django_db
def test_the_demo_generates_train_samples_first_shortest_abstracts_first():
    from annotation.models import Document, Sample, SampleDocument, Split

    lengths = {"long train": 900, "held-out": 10, "short train": 50}
    for name, length in lengths.items():
        sample = Sample.objects.create(name=name, split=Split.HELDOUT if name == "held-out" else Split.TRAIN)
        document = Document.objects.create(external_id=name, title="t", abstract="x" * length, authors=["A"],
                                           content_hash=name)
        SampleDocument.objects.create(sample=sample, document=document, position=0)
    everything, train = demo.samples_soonest_first()
    names = dict(Sample.objects.values_list("pk", "name"))
    assert [names[pk] for pk in everything] == ["short train", "long train", "held-out"]
    assert [names[pk] for pk in train] == ["short train", "long train"]


@pytest.mark.django_db
def test_each_sample_is_judged_into_the_campaign_while_later_ones_are_still_generating(monkeypatch, client,
                                                                                    django_user_model):
    """The judging job follows a generation job: sample 1's pairs are judged and reach the experts' queue
    (and the expert's screen says what is still coming) before sample 2 has been generated."""
    from annotation.jobs.lifecycle import create_job, run_job
    from annotation.judging import strategies
    from annotation.models import Campaign, CampaignItem, JobKind, JudgeVerdict
    from annotation.review.assignments import still_coming
    from annotation.roles import EXPERTS_GROUP
    from django.contrib.auth.models import Group
    from tests.conftest import PASSWORD
    from tests.test_judging_server import ScriptedServer, http_judge, make_profiles, make_sample

    samples = [make_sample(f"s{i}") for i in range(3)]
    generator = Generator.objects.create(name="gen", backend=Backend.IMPORTED, candidates=3)
    generation = create_job(JobKind.GENERATE, {"generator_id": generator.pk, "candidates": 3,
                                               "sample_ids": [s.pk for s in samples]}, total=3)
    Job.objects.filter(pk=generation.pk).update(status=JobStatus.RUNNING)
    expert = django_user_model.objects.create_user("expert", password=PASSWORD)
    expert.groups.add(Group.objects.get_or_create(name=EXPERTS_GROUP)[0])
    campaign = Campaign.objects.create(name="c", overlap=1)
    campaign.experts.add(expert)
    client.force_login(expert)
    seen = []

    def generate_next():
        """Stands in for the generation worker: each poll, one more sample is written."""
        generated = len(seen)
        seen.append((CampaignItem.objects.filter(campaign=campaign).count(), still_coming(campaign),
                     client.get(f"/review/{campaign.pk}/").content.decode()))
        if generated < len(samples):
            make_profiles(samples[generated], [1, 2, 3], generator)
            Job.objects.filter(pk=generation.pk).update(done=generated + 1)
        if generated + 1 >= len(samples):
            Job.objects.filter(pk=generation.pk).update(status=JobStatus.SUCCEEDED)

    monkeypatch.setattr(strategies, "pause_for_generation", generate_next)
    with ScriptedServer() as scripted:
        judge = http_judge(scripted)
        judging = create_job(JobKind.JUDGE, {"judge_id": judge.pk, "pairing": "all", "campaign_id": campaign.pk,
                                             "sample_ids": [s.pk for s in samples], "after_job": generation.pk})
        run_job(judging.pk, strategies.run_judging)
    judging.refresh_from_db()
    assert judging.status == JobStatus.SUCCEEDED, judging.error
    # Before anything was generated: nothing to review, and the screen says three samples are coming.
    items, coming, page = seen[0]
    assert items == 0 and coming == "3 more samples are being generated; new pairs appear here."
    assert coming in page and 'aria-valuenow="0"' in page and "No pairs in this campaign yet" in page
    # After the first sample: its three pairs are judged (both orders) and in the queue, two samples to come.
    items, coming, page = seen[1]
    assert items == 3 and coming.startswith("2 more samples are being generated")
    assert 'data-assignment="' in page, "the expert can review the first pairs while generation goes on"
    assert (judging.done, judging.total) == (18, 18) and JudgeVerdict.objects.count() == 18
    assert CampaignItem.objects.filter(campaign=campaign).count() == 9 and still_coming(campaign) == ""


@pytest.mark.django_db
def test_a_judging_job_whose_generation_failed_judges_what_was_generated_and_fails(monkeypatch):
    from annotation.jobs.lifecycle import create_job, run_job
    from annotation.judging import strategies
    from annotation.models import JobKind, JudgeVerdict
    from tests.test_judging_server import ScriptedServer, http_judge, make_profiles, make_sample

    samples = [make_sample(f"s{i}") for i in range(2)]
    generator = Generator.objects.create(name="gen", backend=Backend.IMPORTED, candidates=2)
    generation = create_job(JobKind.GENERATE, {"generator_id": generator.pk, "candidates": 2,
                                               "sample_ids": [s.pk for s in samples]}, total=2)
    make_profiles(samples[0], [1, 2], generator)
    Job.objects.filter(pk=generation.pk).update(status=JobStatus.FAILED, done=1)
    with ScriptedServer() as scripted:
        judging = create_job(JobKind.JUDGE, {"judge_id": http_judge(scripted).pk, "pairing": "all",
                                             "sample_ids": [s.pk for s in samples], "after_job": generation.pk})
        with pytest.raises(strategies.GenerationFailed):
            run_job(judging.pk, strategies.run_judging)
    judging.refresh_from_db()
    assert judging.status == JobStatus.FAILED and "generating the candidates failed" in judging.error
    assert JudgeVerdict.objects.count() == 2, "the sample that was generated is judged all the same"
