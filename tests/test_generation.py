"""Profile generation with the real offline model, a real OpenAI-compatible server and a real worker."""

import pytest

from annotation.jobs.lifecycle import JobProgress, create_job, run_job
from annotation.models import Backend, Document, Generator, Job, JobKind, JobStatus, Profile, Sample, SampleDocument
from annotation.profiles import generation
from annotation.profiles.generation import Output, run_generation, store_candidates
from annotation.prompts import EXTRACTION_PROMPT_VERSION
from annotation.start import start_generation
from tests.conftest import wait_for

ABSTRACTS = [
    ("Flood forecasting with ensemble Kalman filters",
     "We assimilate river gauge data into a distributed hydrological model with an ensemble Kalman filter."),
    ("Glacier melt under warming",
     "A glacier melt model driven by downscaled climate projections estimates runoff changes to 2080."),
]


def make_samples(n: int) -> list[Sample]:
    samples = []
    for i in range(n):
        sample = Sample.objects.create(name=f"hydro-{i}")
        for position, (title, text) in enumerate(ABSTRACTS):
            doc = Document.objects.create(external_id=f"{i}-{position}", title=title, abstract=text,
                                          authors=["R. Author"], content_hash="x")
            SampleDocument.objects.create(sample=sample, document=doc, position=position)
        samples.append(sample)
    return samples


def local_generator(**overrides) -> Generator:
    fields = {"name": "smol", "backend": Backend.LOCAL, "model": "default", "max_new_tokens": 12, "candidates": 2,
              "temperature": 0.8}
    return Generator.objects.create(**{**fields, **overrides})


def run_in_process(generator, samples, candidates=None) -> Job:
    job = create_job(JobKind.GENERATE, {"generator_id": generator.pk, "sample_ids": [s.pk for s in samples],
                                        "candidates": candidates})
    run_job(job.pk, run_generation)
    job.refresh_from_db()
    return job


@pytest.mark.model
@pytest.mark.django_db
def test_the_offline_model_writes_candidates_that_are_stored_raw_and_parsed():
    samples = make_samples(2)
    job = run_in_process(local_generator(), samples)
    assert job.status == JobStatus.SUCCEEDED, job.error
    profiles = Profile.objects.order_by("sample", "candidate_index")
    assert [(p.sample.name, p.candidate_index) for p in profiles] == [
        ("hydro-0", 0), ("hydro-0", 1), ("hydro-1", 0), ("hydro-1", 1)]
    for profile in profiles:
        assert profile.raw_text.startswith("Domain:")
        assert profile.prompt_version == EXTRACTION_PROMPT_VERSION
        assert 0 < profile.completion_tokens <= 12 and profile.prompt_tokens > 50
        assert profile.settings["max_new_tokens"] == 12 and profile.latency_ms >= 0
        # Twelve tokens cannot hold three competencies: the parser must say why, and the text is kept.
        assert not profile.is_valid and profile.invalid_reason
    assert job.stats["tokens"] == sum(p.completion_tokens for p in profiles)


@pytest.mark.model
@pytest.mark.django_db
def test_rerunning_fills_only_what_is_missing():
    samples = make_samples(2)
    generator = local_generator()
    run_in_process(generator, samples)
    kept = Profile.objects.get(sample=samples[1], candidate_index=0)
    Profile.objects.filter(sample=samples[0], candidate_index=1).delete()
    job = run_in_process(generator, samples)
    assert job.total == 1 and job.done == 1
    assert Profile.objects.count() == 4
    assert Profile.objects.get(pk=kept.pk).raw_text == kept.raw_text
    assert run_in_process(generator, samples).message.startswith("nothing missing")


@pytest.mark.model
@pytest.mark.django_db
def test_cancelling_stops_between_batches_and_leaves_no_half_written_sample(monkeypatch):
    samples = make_samples(3)
    monkeypatch.setattr(generation, "LOCAL_BATCH_SAMPLES", 1)
    monkeypatch.setattr(generation.LocalBackend, "batch_samples", 1)
    advance = JobProgress.advance

    def advance_then_cancel(self, done, message="", **stats):
        Job.objects.filter(pk=self.job.pk).update(cancel_requested=True)  # the admin clicks "Cancel" now
        advance(self, done, message, **stats)

    monkeypatch.setattr(JobProgress, "advance", advance_then_cancel)
    job = run_in_process(local_generator(), samples)
    assert job.status == JobStatus.CANCELLED and job.done == 1
    assert set(Profile.objects.values_list("sample__name", flat=True)) == {"hydro-0"}
    assert Profile.objects.count() == 2


class Clock:
    """Time that moves only when told: the throttle and the rate see whole seconds, whatever the machine."""

    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    monotonic = time


@pytest.mark.django_db
def test_the_job_row_moves_while_one_batch_decodes(monkeypatch, client_for, admin_user):
    """Tokens reach the row and its page during the batch (throttled), before any sample is stored."""
    from annotation.jobs import lifecycle

    clock = Clock()
    monkeypatch.setattr(lifecycle, "time", clock)
    monkeypatch.setattr(generation, "time", clock)
    samples = make_samples(2)
    generator = local_generator(max_new_tokens=100)
    job = create_job(JobKind.GENERATE, {"generator_id": generator.pk, "sample_ids": [s.pk for s in samples]})
    seen = []

    class Backend:
        batch_samples = 4

        def generate(self, conversations, k, on_tokens=None):
            if seen:  # the second batch: only the first one is watched
                return [[Output("Domain: x", 5, 30, 1) for _ in range(k)] for _ in conversations]
            for step, written in enumerate((10, 20, 40, 60)):
                clock.now += 1.5  # reports come each 1.5 s: every other one is saved
                on_tokens(written)
                row = Job.objects.get(pk=job.pk)
                seen.append((row.done, row.stats.get("tokens"), len(row.progress_points)))
                if step == 3:
                    seen.append(client_for(admin_user).get(f"/jobs/{job.pk}/").content.decode())
            return [[Output("Domain: x", 5, 30, 1) for _ in range(k)] for _ in conversations]

    monkeypatch.setattr(generation, "backend_for", lambda g: Backend())
    run_job(job.pk, run_generation)
    *rows, page = seen
    # The first batch is one sample of two candidates (generation.batches): 200 tokens expected.
    assert rows == [(0, None, 0), (0, 20, 1), (0, 20, 1), (0, 60, 2)]
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.stats["tokens"] == 4 * 30
    # 40 tokens and a fifth of a sample in the 3 s between the two saves.
    assert "13.3 tokens/s" in page and "15 s per sample" in page and "60 tokens written" in page
    # The row's own done stayed 0 while the points carried the batch's share: 60 of 200 tokens of one sample.
    assert job.progress_points[1][1] == pytest.approx(0.3)


def test_a_batch_never_shows_as_done_before_it_is_stored():
    heard = []

    class Progress:
        def within(self, done, message="", **stats):
            heard.append(done)

    clock = Clock()
    live = generation.BatchProgress(Progress(), done=3, total=9, samples=2, tokens_before=0, expected_tokens=100,
                                    clock=clock)
    for written in (50, 150):
        clock.now += generation.LIVE_EVERY_S
        live(written)
    assert heard == [4.0, 3 + 2 * generation.LIVE_AT_MOST]


def openai_generator(server, **overrides) -> Generator:
    fields = {"name": "served", "backend": Backend.OPENAI, "model": server["model"], "base_url": server["base_url"],
              "max_new_tokens": 16, "candidates": 2, "concurrency": 2}
    return Generator.objects.create(**{**fields, **overrides})


@pytest.mark.model
@pytest.mark.django_db
def test_an_openai_compatible_server_generates_through_the_openai_client(openai_server):
    samples = make_samples(1)
    job = run_in_process(openai_generator(openai_server), samples)
    assert job.status == JobStatus.SUCCEEDED, job.error
    profiles = list(Profile.objects.all())
    assert len(profiles) == 2
    assert all(p.raw_text and p.completion_tokens and p.latency_ms > 0 for p in profiles)


@pytest.mark.django_db
def test_a_wrong_url_fails_the_job_with_a_clear_message_and_stores_nothing():
    generator = Generator.objects.create(name="nowhere", backend=Backend.OPENAI, model="m",
                                         base_url="http://127.0.0.1:9/v1", max_new_tokens=8)
    with pytest.raises(Exception):
        run_in_process(generator, make_samples(1))
    job = Job.objects.get()
    assert job.status == JobStatus.FAILED
    assert "cannot reach http://127.0.0.1:9/v1" in job.error
    assert Profile.objects.count() == 0


@pytest.mark.model
@pytest.mark.django_db
def test_a_wrong_model_name_fails_the_job_with_a_clear_message(openai_server):
    generator = openai_generator(openai_server, model="no-such-model")
    with pytest.raises(Exception):
        run_in_process(generator, make_samples(1))
    job = Job.objects.get()
    assert "no-such-model" in job.error and Profile.objects.count() == 0


@pytest.mark.django_db
def test_a_missing_api_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("COMPX_TEST_KEY", raising=False)
    generator = Generator.objects.create(name="keyed", backend=Backend.OPENAI, model="m",
                                         base_url="http://127.0.0.1:9/v1", api_key_env="COMPX_TEST_KEY")
    with pytest.raises(Exception):
        run_in_process(generator, make_samples(1))
    assert "COMPX_TEST_KEY" in Job.objects.get().error


@pytest.mark.model
@pytest.mark.worker
def test_a_generation_job_runs_in_a_real_worker_with_progress(celery_worker_process):
    samples = make_samples(2)
    job = start_generation(local_generator(max_new_tokens=8), Sample.objects.filter(pk__in=[s.pk for s in samples]))
    finished = wait_for(lambda: Job.objects.filter(pk=job.pk, status__in=["succeeded", "failed"]).first(),
                        timeout=300, what="the generation job")
    assert finished.status == JobStatus.SUCCEEDED, finished.error
    assert (finished.done, finished.total) == (2, 2) and finished.stats["tokens"] > 0
    assert Profile.objects.count() == 4


@pytest.mark.django_db
def test_the_admin_action_starts_a_job_and_opens_its_page(client_for, admin_user, django_capture_on_commit_callbacks):
    samples = make_samples(2)
    generator = local_generator()
    client = client_for(admin_user)
    form = client.post("/admin/annotation/sample/", {"action": "generate_profiles",
                                                      "_selected_action": [s.pk for s in samples]})
    assert b"Generate profiles" in form.content
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post("/admin/annotation/sample/", {
            "action": "generate_profiles", "_selected_action": [s.pk for s in samples],
            "generator": generator.pk, "candidates": 3, "apply": "Generate"})
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    assert job.params["candidates"] == 3 and sorted(job.params["sample_ids"]) == sorted(s.pk for s in samples)
    assert len(callbacks) == 1, "the task is queued only once the transaction commits"


@pytest.mark.django_db
def test_generator_figures_in_the_admin(client_for, admin_user):
    sample = make_samples(1)[0]
    generator = local_generator()
    good = 'Domain: "Hydrology"\n\nCompetencies:\n- A: a.\n- B: b.\n- C: c.'
    Profile.objects.create(sample=sample, generator=generator, candidate_index=0, raw_text=good, is_valid=True,
                           competencies=[{"name": n, "description": n} for n in "ABC"], completion_tokens=30,
                           latency_ms=1500)
    Profile.objects.create(sample=sample, generator=generator, candidate_index=1, raw_text="junk", is_valid=False,
                           invalid_reason="no 'Domain:' line", completion_tokens=10, latency_ms=500)
    client = client_for(admin_user)
    listing = client.get("/admin/annotation/generator/").content.decode()
    assert "50%" in listing and "20.0" in listing  # 40 tokens in 2 s
    page = client.get(f"/admin/annotation/generator/{generator.pk}/change/").content.decode()
    assert "Mean competencies per valid profile: 3.0" in page and "Invalid (1×): no &#x27;Domain:&#x27; line" in page



@pytest.mark.django_db
def test_a_candidate_cut_off_by_the_token_limit_is_invalid_even_when_it_parses():
    sample = make_samples(1)[0]
    generator = local_generator(max_new_tokens=40)
    text = 'Domain: "Hydrology"\n\nCompetencies:\n- Modelling: floods\n- Sensing: radar rain\n- Statistics: extremes of'
    outputs = [Output(text, 80, 40, 5, truncated=True), Output(text + " rainfall\n", 80, 38, 5)]
    store_candidates(generator, sample, [0, 1], outputs)
    cut, ended = Profile.objects.order_by("candidate_index")
    assert not cut.is_valid and "cut off at the token limit (40 tokens)" in cut.invalid_reason
    assert cut.raw_text == text and cut.competencies == []
    assert ended.is_valid and [c["name"] for c in ended.competencies] == ["Modelling", "Sensing", "Statistics"]
