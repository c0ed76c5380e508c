"""Fault injection: each test names the fault it injects and what must survive it.

- the broker (a real Redis of our own, with persistence) restarting, or crashing, while jobs are queued:
  no job is lost and none runs twice;
- the database connection of an expert's vote killed in the middle of its transaction: a clear error, no
  half-written vote, and a retry that counts exactly once;
- a real HTTP judge server answering 429, 500, timeouts and garbage: retried, or stored invalid and never
  counted by agreement or by a dataset export.

A killed training worker leaving a failed, resumable run is in tests/test_training_worker.py
(``test_a_killed_worker_leaves_a_failed_run_that_resumes_from_its_checkpoint``); test_judging_server.py and
test_judging.py cover each judge-server fault on its own.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest
import redis
import requests
from django.db import OperationalError, connection

from annotation.agreement import figures as agreement
from annotation.export.dataset import export_dataset
from annotation.jobs.lifecycle import create_job
from annotation.models import Assignment, DatasetExport, Job, JobKind, JobStatus, JudgeVerdict, Vote
from annotation.tasks import ping_task
from compx_site.celery import app
from tests.conftest import LOG_DIR, _free_port, wait_for
from tests.labels_factory import World
from tests.review_factories import fast_passwords, make_campaign  # noqa: F401  (fixture)
from tests.test_judging_server import (
    Reply,
    ScriptedServer,
    consistent_judge,
    fast_retries,  # noqa: F401  (fixture)
    http_judge,
    judge_in_process,
    make_profiles,
    make_sample,
    quality,
    shown_profiles,
)

# --- 1. the broker restarts while jobs are queued ---------------------------------------------------------


class RedisServer:
    """A redis-server of our own on a free port, its data in ``directory``: stopping and starting it again
    is a real restart of the process, which comes back with whatever its persistence kept."""

    def __init__(self, directory: Path, *, persistent: bool = True):
        self.directory, self.persistent, self.port = directory, persistent, _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", *persistence, "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )

        def answers():
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited: {(self.directory / 'redis.log').read_text()[-2000:]}")
            try:
                return self.client().ping()
            except redis.ConnectionError:
                return False

        wait_for(answers, timeout=30, what="redis-server to answer PING")

    def run_id(self) -> str:
        return self.client().info("server")["run_id"]

    def stop(self, how: str) -> None:
        """``shutdown``: the SHUTDOWN command (a clean stop); ``kill``: SIGKILL, a crash with no chance to save."""
        if how == "shutdown":
            try:
                self.client().shutdown()
            except redis.ConnectionError:
                pass  # the server went away while answering
        else:
            self.process.kill()
        self.process.wait(timeout=30)

    def close(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def own_redis(tmp_path, settings):
    """A persistent Redis the test may stop and start; workers started by ``start_worker`` use it."""
    server = RedisServer(tmp_path)
    server.start()
    settings.CELERY_BROKER_URL = server.url  # read by start_worker when it starts a worker
    yield server
    server.close()


QUEUES = ("default", "generation", "judging", "training")
needs_redis_server = pytest.mark.skipif(shutil.which("redis-server") is None,
                                        reason="needs the redis-server program, to restart a broker of its own")


def queued_messages(client: redis.Redis) -> dict[str, int]:
    return {queue: client.llen(queue) for queue in QUEUES}


@needs_redis_server
@pytest.mark.worker
@pytest.mark.parametrize("how", ["shutdown", "kill"])
def test_broker_restart_with_jobs_queued_loses_no_job_and_runs_none_twice(own_redis, start_worker, how):
    """Injects: the broker stopping (SHUTDOWN, or SIGKILL with appendfsync always) and starting again while
    eight jobs wait in four queues with no worker running. Must survive: every job runs, exactly once."""
    jobs = {queue: [create_job(JobKind.PING) for _ in range(2)] for queue in QUEUES}
    with app.connection_for_write(own_redis.url) as broker:
        for queue, queued in jobs.items():
            for job in queued:
                ping_task.apply_async((job.pk,), queue=queue, connection=broker)
    assert queued_messages(own_redis.client()) == dict.fromkeys(QUEUES, 2)
    before = own_redis.run_id()

    own_redis.stop(how)
    own_redis.start()

    assert own_redis.run_id() != before  # a new process, which read the messages back from its append-only file
    assert queued_messages(own_redis.client()) == dict.fromkeys(QUEUES, 2)
    assert Job.objects.filter(status=JobStatus.QUEUED).count() == 8

    start_worker(name="faults-broker")
    wait_for(lambda: Job.objects.filter(status=JobStatus.SUCCEEDED).count() == 8, timeout=180,
             what="the worker to finish all eight jobs queued before the broker restart")
    assert all(message.startswith("pong from faults-broker-") for message in Job.objects.values_list("message", flat=True))
    client = own_redis.client()
    # acks_late: a message leaves the broker only once its job is done; nothing is left over or unacknowledged.
    wait_for(lambda: client.hlen("unacked") == 0, timeout=30, what="the last acknowledgement")
    assert queued_messages(client) == dict.fromkeys(QUEUES, 0)
    log = (LOG_DIR / "test-worker-faults-broker.log").read_text()
    assert len(re.findall(r"Task annotation\.tasks\.ping_task\[[^\]]+\] succeeded", log)) == 8  # none ran twice


@needs_redis_server
def test_broker_without_persistence_loses_queued_messages_which_is_why_the_readme_requires_persistence(db, tmp_path):
    """Injects: a restart of a Redis run without persistence while a job is queued. Shows the documented limit:
    the message is gone (nothing re-sends it), and the job stays visibly "queued" rather than looking done."""
    server = RedisServer(tmp_path, persistent=False)
    server.start()
    try:
        job = create_job(JobKind.PING)
        with app.connection_for_write(server.url) as broker:
            ping_task.apply_async((job.pk,), connection=broker)
        assert server.client().llen("default") == 1
        server.stop("shutdown")
        server.start()
        assert server.client().llen("default") == 0
        assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED
    finally:
        server.close()


# --- 2. the database connection drops during a vote -------------------------------------------------------

GATE = 727_274  # the advisory lock the vote's INSERT waits on, so the test can kill it mid-transaction


class VoteGate:
    """A trigger makes every INSERT into the vote table wait for an advisory lock this test holds: the vote's
    transaction has already marked its assignment voted and is stopped just before writing the vote row."""

    def __init__(self):
        self.table = Vote._meta.db_table

    def __enter__(self) -> "VoteGate":
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE FUNCTION compx_fault_vote_gate() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN PERFORM pg_advisory_xact_lock({GATE}); RETURN NEW; END $$"
            )
            cursor.execute(f'CREATE TRIGGER compx_fault_vote_gate BEFORE INSERT ON "{self.table}" '
                           "FOR EACH ROW EXECUTE FUNCTION compx_fault_vote_gate()")
            cursor.execute("SELECT pg_advisory_lock(%s)", [GATE])
        return self

    def waiting_vote(self) -> tuple | None:
        """(pid, transaction id, query) of the backend stopped at the gate, once there is one."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid, backend_xid::text, query FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
            )
            return cursor.fetchone()

    def kill(self, pid: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])

    def __exit__(self, *exc) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [GATE])
            cursor.execute(f'DROP TRIGGER IF EXISTS compx_fault_vote_gate ON "{self.table}"')
            cursor.execute("DROP FUNCTION IF EXISTS compx_fault_vote_gate()")


def browser_session(live_server, client, user) -> requests.Session:
    """A real HTTP session for ``user`` against the live server (its first page sets the CSRF cookie)."""
    client.force_login(user)
    session = requests.Session()
    session.cookies.set("sessionid", client.cookies["sessionid"].value)
    return session


@pytest.mark.postgres
@pytest.mark.parametrize("htmx", [False, True], ids=["form-post", "htmx"])
def test_database_connection_killed_mid_vote_leaves_no_half_written_vote_and_a_retry_counts_once(
        live_server, client, alice, htmx):
    """Injects: pg_terminate_backend on the web server's connection while the vote's transaction has marked
    the assignment voted but not yet written the vote. Must survive: the expert is told their vote was not
    saved (503), no vote row and no voted assignment remain, and sending it again records it exactly once."""
    campaign = make_campaign([alice], pairs=1)
    session = browser_session(live_server, client, alice)
    page = session.get(f"{live_server.url}/review/{campaign.pk}/", timeout=30)
    assert page.status_code == 200
    assignment_pk = int(re.search(r'data-assignment="(\d+)"', page.text).group(1))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    url = f"{live_server.url}/review/assignment/{assignment_pk}/vote"
    form = {"csrfmiddlewaretoken": token, "choice": "left", "rationale": "Left is grounded in the abstracts."}
    headers = {"HX-Request": "true"} if htmx else {}

    def post():
        return session.post(url, data=form, headers=headers, allow_redirects=False, timeout=60)

    answers = []
    with VoteGate() as gate:
        sender = threading.Thread(target=lambda: answers.append(post()))
        sender.start()
        pid, xid, query = wait_for(gate.waiting_vote, timeout=30, what="the vote to reach the vote table")
        assert xid and f'INSERT INTO "{Vote._meta.db_table}"' in query  # mid-transaction: the assignment is written
        gate.kill(pid)
        sender.join(timeout=60)
    failed = answers[0]
    assert failed.status_code == 503
    assert "Your vote was not saved" in failed.text and "try again" in failed.text
    assert not Vote.objects.exists()
    assert Assignment.objects.get(pk=assignment_pk).voted_at is None

    retried = post()
    assert retried.status_code == (200 if htmx else 302)
    assert Vote.objects.count() == 1 and Assignment.objects.get(pk=assignment_pk).voted_at is not None
    assert Vote.objects.get().rationale == form["rationale"]
    again = post()  # a second retry, e.g. a double click, changes nothing
    assert again.status_code in (200, 302) and Vote.objects.count() == 1


@pytest.mark.django_db
def test_a_database_error_inside_the_vote_transaction_rolls_it_back_and_says_so(client_for, alice, monkeypatch):
    """Injects (on any database): an OperationalError from writing the vote row, after the assignment was marked
    voted in the same transaction. Must survive: a 503 page saying the vote was not saved, nothing written, and
    a retry that records the vote once. An error that is not the database's still surfaces as a server error."""
    campaign = make_campaign([alice], pairs=1)
    client = client_for(alice)
    pk = int(re.search(r'data-assignment="(\d+)"', client.get(f"/review/{campaign.pk}/").content.decode()).group(1))

    def lost_connection(**fields):
        raise OperationalError("server closed the connection unexpectedly")

    with monkeypatch.context() as patched:
        patched.setattr(Vote.objects, "create", lost_connection)
        failed = client.post(f"/review/assignment/{pk}/vote", {"choice": "left"})
    assert failed.status_code == 503 and failed["Retry-After"]
    assert "Your vote was not saved." in failed.content.decode()
    assert not Vote.objects.exists() and Assignment.objects.get(pk=pk).voted_at is None

    assert client.post(f"/review/assignment/{pk}/vote", {"choice": "left"}).status_code == 302
    assert Vote.objects.count() == 1 and Assignment.objects.get(pk=pk).voted_at is not None

    with monkeypatch.context() as patched:
        patched.setattr(Vote.objects, "create", lambda **fields: 1 / 0)
        Vote.objects.all().delete()
        Assignment.objects.filter(pk=pk).update(voted_at=None)
        with pytest.raises(ZeroDivisionError):
            client.post(f"/review/assignment/{pk}/vote", {"choice": "left"})


@pytest.mark.django_db
def test_a_database_error_while_loading_the_next_pair_says_the_vote_was_kept(client_for, alice, monkeypatch):
    """Injects: an OperationalError after the vote committed, while the next pair is claimed. Must survive: the
    vote, stored once, and a 503 page that says so instead of claiming it was lost."""
    campaign = make_campaign([alice], pairs=2)
    client = client_for(alice)
    pk = int(re.search(r'data-assignment="(\d+)"', client.get(f"/review/{campaign.pk}/").content.decode()).group(1))

    def lost_connection(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    with monkeypatch.context() as patched:
        patched.setattr("annotation.review.assignments.next_assignment", lost_connection)
        failed = client.post(f"/review/assignment/{pk}/vote", {"choice": "left"}, HTTP_HX_REQUEST="true")
    page = failed.content.decode()
    assert failed.status_code == 503 and "Your answer was saved." in page and "not saved" not in page
    assert Vote.objects.filter(assignment_id=pk).count() == 1


# --- 3. the judge server: overload, errors, timeouts and garbage ------------------------------------------

# What the scripted server does for each sample's comparison, read from the FAULT= marker in the profiles.
FAULTS = {
    "none": None,
    "429": "retried",
    "500": "retried",
    "timeout": "retried",
    "prose": "I prefer profile A: it is better grounded.",
    "truncated": '{"reasoning": "A lists grounded skills", "prefer',
    "two-verdicts": '{"reasoning": "r", "preferred": "A"} {"reasoning": "r", "preferred": "B"}',
    "number": '{"reasoning": "r", "preferred": 3}',
    "one-order-garbage": "Both profiles look fine to me.",
}
ANSWERED = [fault for fault, what in FAULTS.items() if what in (None, "retried")]
GARBAGE = [fault for fault in FAULTS if fault not in ANSWERED]
_FAULT = re.compile(r"FAULT=([\w-]+)")


def garbage_order(winner: str) -> str:
    """The order "one-order-garbage" answers with garbage: the one that shows the better profile first."""
    return "ab" if winner == "a" else "ba"


def faulty_judge(attempts: Counter):
    def script(request: dict) -> Reply:
        a, b = shown_profiles(request)
        fault = _FAULT.search(a).group(1)
        key = (fault, quality(a) < quality(b))  # the comparison and which order it is shown in
        attempts[key] += 1
        first_try = attempts[key] == 1
        if fault == "429" and first_try:
            return Reply(status=429, body='{"error": {"message": "rate limited"}}', headers={"retry-after-ms": "5"})
        if fault == "500" and first_try:
            return Reply(status=500, body='{"error": {"message": "internal error"}}', headers={"retry-after-ms": "5"})
        if fault == "timeout" and first_try:
            return Reply(content=json.dumps({"reasoning": "late", "preferred": "A"}), delay=1.5)
        if fault == "one-order-garbage" and quality(a) > quality(b):
            return Reply(content=FAULTS[fault])
        if fault in GARBAGE and fault != "one-order-garbage":
            return Reply(content=FAULTS[fault])
        return consistent_judge(request)

    return script


@pytest.mark.django_db
def test_judge_server_faults_are_retried_or_stored_invalid_and_never_counted_in_agreement_or_export(
        alice, fast_retries, settings, tmp_path):  # noqa: F811
    """Injects: a real HTTP judge server answering 429, 500 and a timeout once each, then garbage — prose
    without JSON, truncated JSON, two verdicts, ``"preferred": 3``, and garbage in one order only. Must survive:
    the transient faults are retried into valid verdicts; each garbage answer is stored invalid with its raw
    text; agreement with the expert and every judge-based export count only the comparisons judged validly."""
    settings.MEDIA_ROOT = tmp_path / "media"
    attempts = Counter()
    world = World()
    winners = {}
    for n, fault in enumerate(FAULTS):
        qualities = [1, 2] if n % 2 else [2, 1]  # the better profile is canonical b, then a, then b …
        make_profiles(make_sample(f"fault-{fault}"), qualities, extra=f" FAULT={fault}")
        winners[fault] = "b" if qualities == [1, 2] else "a"
    with ScriptedServer(faulty_judge(attempts)) as server:
        judge = http_judge(server)
        job = judge_in_process(judge)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.stats.get("failed", 0) == 0  # every transient fault was retried into an answer

    verdicts = {}
    for v in JudgeVerdict.objects.select_related("comparison__sample"):
        verdicts[(v.comparison.sample.name.removeprefix("fault-"), v.order)] = v
    assert len(verdicts) == 2 * len(FAULTS)  # one row per comparison and order: retries stored nothing extra
    for fault in ("429", "500", "timeout"):
        assert attempts[(fault, True)] == attempts[(fault, False)] == 2  # in each order: the fault, then the answer
    for (fault, order), v in verdicts.items():
        if fault in GARBAGE and (fault != "one-order-garbage" or order == garbage_order(winners[fault])):
            assert not v.is_valid and v.preferred == "" and v.error and v.raw_text == FAULTS[fault], (fault, order)
        else:
            assert v.is_valid and v.preferred == winners[fault], (fault, order, v.raw_text, v.error)
    assert sum(not v.is_valid for v in verdicts.values()) == 2 * (len(GARBAGE) - 1) + 1

    # The expert votes on every comparison; only the ones the judge answered validly in both orders may count.
    campaign = world.campaign("faults", judge=judge)
    for fault in FAULTS:
        comparison = verdicts[(fault, "ab")].comparison
        world.vote(campaign, comparison, alice, winners[fault] if fault in ANSWERED else "tie")
    figures = agreement.judge_vs_experts(agreement.gather(campaign), judge.pk, n_boot=20)
    assert figures.n == len(ANSWERED) and figures.raw == 1.0  # garbage is not a label, not even a disagreement
    behaviour = {row.name: row for row in agreement.judge_behaviour(agreement.gather(campaign), n_boot=20)}[judge.name]
    assert (behaviour.invalid_rate.count, behaviour.invalid_rate.n) == (2 * (len(GARBAGE) - 1) + 1, 2 * len(FAULTS))

    valid = {verdicts[(fault, "ab")].comparison_id: winners[fault] for fault in ANSWERED}
    for policy in ("judge_consensus", "judge_calibrated"):
        item = DatasetExport.objects.create(name=policy, policy=policy, test_fraction=0.0, kappa_threshold=0.5)
        export_dataset(item)
        item.refresh_from_db()
        assert item.status == JobStatus.SUCCEEDED, item.error
        rows = [json.loads(line) for line in (Path(item.path) / "train.jsonl").read_text().splitlines()]
        assert {r["comparison_id"]: r["decision"] for r in rows} == valid, policy
        assert item.counts["dropped"].get("no_valid_verdicts") == len(GARBAGE), (policy, item.counts)
