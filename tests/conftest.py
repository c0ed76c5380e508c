"""Shared fixtures: the personas every role test uses, and a real Celery worker process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from django.conf import settings

REPO = Path(__file__).resolve().parent.parent
# Per test process: two runs on one machine must never read each other's worker logs.
LOG_DIR = Path(tempfile.mkdtemp(prefix="compx-test-logs-"))
PASSWORD = "correct horse battery staple"
# Seeded generation repeats only on a fixed number of CPU threads (a reduction in another order can sample
# another token); by default the decoding loop picks its threads from the machine's load. Workers the tests
# start inherit this.
os.environ.setdefault("COMPX_TORCH_THREADS", "1")


@pytest.fixture(autouse=True)
def exact_review_progress(settings):
    """Tests read a campaign's progress right after changing it; the cache that spares production a count of
    the campaign per vote would show them the number of a moment ago (tests/test_review_queries.py tests it)."""
    settings.REVIEW_PROGRESS_CACHE_SECONDS = 0


@pytest.fixture
def make_user(db, django_user_model):
    from django.contrib.auth.models import Group

    from annotation.roles import EXPERTS_GROUP

    def make(username: str, *, expert: bool = False, admin: bool = False):
        user = django_user_model.objects.create_user(username=username, password=PASSWORD)
        if admin:
            user.is_staff = user.is_superuser = True
            user.save()
        if expert:
            user.groups.add(Group.objects.get_or_create(name=EXPERTS_GROUP)[0])
        return user

    return make


@pytest.fixture
def alice(make_user):
    """An expert: assigned to whatever the test assigns."""
    return make_user("alice", expert=True)


@pytest.fixture
def bob(make_user):
    """Another expert: must never see alice's work."""
    return make_user("bob", expert=True)


@pytest.fixture
def charlie(make_user):
    """Signed in, no role: should have no access."""
    return make_user("charlie")


@pytest.fixture
def admin_user(make_user):
    return make_user("root", admin=True)


@pytest.fixture
def client_for(client):
    def login(user):
        client.force_login(user)
        return client

    return login


def pytest_collection_modifyitems(config, items):
    from django.db import connection

    if connection.vendor == "postgresql":
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL: set DATABASE_URL=postgres://…")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


def _database_url() -> str:
    """The URL of the test database this process is using, for a worker process to share."""
    from django.db import connection

    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def start_worker(transactional_db):
    """Start real `celery worker` processes on the real broker, sharing the test database; stopped after the test."""
    processes = []

    def start(queues: str = settings.CELERY_QUEUES_ALL, name: str = "test") -> subprocess.Popen:
        env = {**os.environ, "DATABASE_URL": _database_url(), "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
               "PYTHONUNBUFFERED": "1"}
        with (LOG_DIR / f"test-worker-{name}.log").open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "compx_site", "worker", "-Q", queues, "--pool", "solo",
                 "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "info",
                 "-n", f"{name}-{os.getpid()}@%h"],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        processes.append(proc)
        return proc

    yield start
    for proc in processes:
        proc.terminate()
    for proc in processes:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def celery_worker_process(start_worker):
    """One real worker listening on every queue."""
    return start_worker()


def wait_for(predicate, timeout: float = 60, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    tails = "".join(f"\n--- {log.name}\n{log.read_text()[-2000:]}" for log in LOG_DIR.glob("test-worker-*.log"))
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{tails}")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from training.ml.models import default_model_dir

    return default_model_dir(settings.MODEL_CACHE_DIR)


@pytest.fixture(scope="session")
def openai_server(model_dir):
    """A real OpenAI-compatible server (`transformers serve`) on 127.0.0.1 serving the offline model."""
    import urllib.request

    port = _free_port()
    log = LOG_DIR / "test-openai-server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "transformers"), "serve", str(model_dir), "--host", "127.0.0.1",
             "--port", str(port), "--device", "cpu"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )

    def healthy():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200
        except OSError:
            return proc.poll() is not None  # stop waiting if the server died

    try:
        wait_for(healthy, timeout=120, what="transformers serve to answer /health")
        assert proc.poll() is None, log.read_text()[-2000:]
        yield {"base_url": f"http://127.0.0.1:{port}/v1", "model": str(model_dir), "process": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
