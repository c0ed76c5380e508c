"""A task that would wait for another task in its worker's only slot runs that work itself instead of hanging."""

from types import SimpleNamespace

import pytest

from annotation.jobs import slots
from annotation.jobs.lifecycle import create_job, run_job
from annotation.models import Backend, Generator, Job, JobKind, JobStatus, JudgeVerdict, Split
from tests.labels_factory import World

ALL_QUEUES = {"default", "generation", "judging", "training"}


def worker(concurrency, queues):
    """A starting Celery worker as ``worker_init`` hands it over (a WorkController)."""
    consume_from = {name: object() for name in queues} if queues is not None else None
    return SimpleNamespace(concurrency=concurrency,
                           app=SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(consume_from=consume_from))))


@pytest.fixture
def this_worker(monkeypatch):
    """Makes this test process a worker with the slots and queues given."""
    monkeypatch.setattr(slots, "_this_worker", {})
    return lambda concurrency, queues=ALL_QUEUES: slots.remember_worker(worker(concurrency, queues))


def test_only_a_one_slot_worker_on_the_awaited_queue_would_wait_on_itself(this_worker):
    generate = "annotation.tasks.generate_profiles_task"
    assert not slots.would_wait_on_itself(generate)  # not a worker at all: the web process, a command
    this_worker(1)
    assert slots.would_wait_on_itself(generate) and slots.would_wait_on_itself("annotation.tasks.export_dataset_task")
    this_worker(2)
    assert not slots.would_wait_on_itself(generate)
    this_worker(1, {"training"})
    assert not slots.would_wait_on_itself(generate) and slots.queue_of("training.tasks.run_round_task") == "training"
    this_worker(1, None)  # no -Q: the default queue only
    assert slots.would_wait_on_itself("annotation.tasks.export_dataset_task") and not slots.would_wait_on_itself(generate)
    this_worker("auto")
    assert not slots.would_wait_on_itself(generate)


def follow_generation(monkeypatch, generator, samples):
    """A queued generation job whose work (standing in for the model) stores two candidates per sample, and the
    judging job that follows it."""
    from annotation.profiles import generation as generation_module
    from tests.test_judging_server import make_profiles

    generation = create_job(JobKind.GENERATE, {"generator_id": generator.pk, "candidates": 2,
                                               "sample_ids": [s.pk for s in samples]}, total=len(samples))

    def generate(job, progress):
        progress.start(total=len(samples))
        for n, sample in enumerate(samples, start=1):
            make_profiles(sample, [1, 2], generator)
            progress.advance(n)

    monkeypatch.setattr(generation_module, "run_generation", generate)
    return generation


@pytest.mark.django_db
def test_a_judging_job_in_a_one_slot_worker_generates_first_instead_of_waiting(monkeypatch, this_worker):
    from annotation.judging import strategies
    from tests.test_judging_server import ScriptedServer, http_judge, make_sample

    this_worker(1)
    samples = [make_sample(f"s{i}") for i in range(2)]
    generation = follow_generation(monkeypatch, Generator.objects.create(name="gen", backend=Backend.IMPORTED),
                                   samples)
    monkeypatch.setattr(strategies, "pause_for_generation", lambda: pytest.fail("it waited for its own slot"))
    with ScriptedServer() as scripted:
        judging = create_job(JobKind.JUDGE, {"judge_id": http_judge(scripted).pk, "pairing": "all",
                                             "sample_ids": [s.pk for s in samples], "after_job": generation.pk})
        run_job(judging.pk, strategies.run_judging, worker="solo@host")
    generation.refresh_from_db()
    judging.refresh_from_db()
    assert generation.status == JobStatus.SUCCEEDED and generation.worker == "solo@host"
    assert judging.status == JobStatus.SUCCEEDED, judging.error
    assert JudgeVerdict.objects.count() == 4  # one pair per sample, both orders


class Waited(Exception):
    pass


@pytest.mark.django_db
def test_with_a_free_slot_the_judging_job_waits_for_the_generation_worker(monkeypatch, this_worker):
    from annotation.judging import strategies
    from tests.test_judging_server import ScriptedServer, http_judge, make_sample

    this_worker(2)
    samples = [make_sample("s0")]
    generation = follow_generation(monkeypatch, Generator.objects.create(name="gen", backend=Backend.IMPORTED),
                                   samples)

    def pause():
        raise Waited

    monkeypatch.setattr(strategies, "pause_for_generation", pause)
    with ScriptedServer() as scripted:
        judging = create_job(JobKind.JUDGE, {"judge_id": http_judge(scripted).pk, "pairing": "all",
                                             "sample_ids": [s.pk for s in samples], "after_job": generation.pk})
        with pytest.raises(Waited):
            run_job(judging.pk, strategies.run_judging)
    assert Job.objects.get(pk=generation.pk).status == JobStatus.QUEUED  # left to the generation worker


@pytest.mark.django_db
@pytest.mark.parametrize("slots_count, sent", [(1, False), (2, True)])
def test_a_round_in_a_one_slot_worker_runs_its_step_itself(monkeypatch, this_worker, slots_count, sent):
    from training import round as rounds
    from training.models import Round
    from training.presets import PRESETS, create_round

    this_worker(slots_count)
    world = World()
    world.sample(split=Split.TRAIN)
    world.sample(split=Split.HELDOUT)
    row = Round.claim(create_round(PRESETS["tiny"]).pk, "solo@host")
    ran, sent_tasks = [], []

    def finish(job_id):
        Job.objects.filter(pk=job_id).update(status=JobStatus.SUCCEEDED)

    monkeypatch.setattr(rounds.current_app, "send_task", lambda name, args: (sent_tasks.append(name), finish(*args)))
    runner = rounds._Runner(row, inline=False)
    job = runner.job("generate", JobKind.GENERATE, {"generator_id": row.generator_id},
                     lambda job: (ran.append(job.pk), finish(job.pk)))
    assert job.status == JobStatus.SUCCEEDED
    assert (sent_tasks, ran) == ((["annotation.tasks.generate_profiles_task"], []) if sent else ([], [job.pk]))
