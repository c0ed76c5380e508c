"""Production setup: workers on separate queues get only their own jobs; the deploy checks pass."""

import os
import subprocess
import sys

import pytest

from annotation.jobs.lifecycle import create_job
from annotation.models import Job, JobKind, JobStatus
from annotation.tasks import ping_task
from tests.conftest import REPO, _database_url, wait_for

PRODUCTION_ENV = {
    "DEBUG": "false", "SECRET_KEY": "x" * 30 + "production-secret-key-for-the-check", "ALLOWED_HOSTS": "compx.example.org",
    "CSRF_TRUSTED_ORIGINS": "https://compx.example.org", "SECURE_COOKIES": "true", "SECURE_SSL_REDIRECT": "true",
    "SECURE_HSTS_SECONDS": "31536000", "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true", "SECURE_HSTS_PRELOAD": "true",
    "CACHE_URL": "redis://127.0.0.1:6379/14", "PROXY_SSL_HEADER": "X-Forwarded-Proto",
}
# Reads a session written through the cache back from Redis alone, then from the database alone.
SESSION_ROUND_TRIP = """
from django.conf import settings
from django.core.cache import cache, caches
from django.contrib.sessions.backends.db import SessionStore as DatabaseStore
from django.contrib.sessions.backends.cached_db import KEY_PREFIX, SessionStore
print(settings.SESSION_ENGINE, type(caches["default"]).__name__)
store = SessionStore(); store["expert"] = 7; store.save()
print(cache.get(KEY_PREFIX + store.session_key)["expert"], DatabaseStore(store.session_key)["expert"])
store.delete()
"""


@pytest.mark.worker
def test_workers_on_separate_queues_each_receive_only_their_own_jobs(start_worker):
    start_worker("generation", name="gen")
    start_worker("judging", name="judge")
    jobs = {queue: [create_job(JobKind.PING) for _ in range(3)] for queue in ("generation", "judging")}
    for queue, queued in jobs.items():
        for job in queued:
            ping_task.apply_async((job.pk,), queue=queue)

    def all_done():
        return Job.objects.filter(status=JobStatus.SUCCEEDED).count() == 6

    wait_for(all_done, timeout=120, what="both workers to finish their jobs")
    for queue, expected_worker in (("generation", "gen-"), ("judging", "judge-")):
        messages = {Job.objects.get(pk=job.pk).message for job in jobs[queue]}
        assert all(m.startswith(f"pong from {expected_worker}") for m in messages), messages


def test_check_deploy_is_clean_under_production_settings():
    env = {**os.environ, **PRODUCTION_ENV}
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sessions_are_read_from_the_cache_server_and_kept_in_the_database(transactional_db):
    env = {**os.environ, **PRODUCTION_ENV, "DATABASE_URL": _database_url()}
    result = subprocess.run([sys.executable, "manage.py", "shell", "--no-imports", "-c", SESSION_ROUND_TRIP],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["django.contrib.sessions.backends.cached_db", "RedisCache", "7", "7"]


def test_check_deploy_flags_an_insecure_setup():
    env = {**os.environ, **PRODUCTION_ENV, "SECURE_COOKIES": "false", "SECURE_HSTS_SECONDS": "0"}
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "SESSION_COOKIE_SECURE" in result.stderr + result.stdout


@pytest.mark.postgres
def test_postgres_plans_a_query_once_it_is_used_again_and_again(db):
    from django.db import connection

    from annotation.models import Campaign

    for pk in range(6):  # psycopg prepares a statement on its 5th use on a connection
        list(Campaign.objects.filter(pk=pk).values_list("name", flat=True))
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any('FROM "annotation_campaign"' in sql and "$1" in sql for sql in prepared), prepared
