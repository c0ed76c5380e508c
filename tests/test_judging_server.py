"""The OpenAI-compatible judge over real HTTP: a scripted chat-completions server, and `transformers serve`.

``ScriptedServer`` is a real HTTP server (stdlib, in a thread, on 127.0.0.1) that answers
``/v1/chat/completions`` with whatever the test scripts: a judge that reads the prompt, or 429 / 5xx /
slow answers / garbage. The openai client, its retries and timeouts all run for real against it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from annotation.jobs.lifecycle import JobProgress, create_job, run_job
from annotation.judging import backends
from annotation.judging.strategies import run_judging
from annotation.models import (
    Backend,
    Comparison,
    Document,
    Generator,
    Job,
    JobKind,
    JobStatus,
    Judge,
    JudgeVerdict,
    Profile,
    Sample,
    SampleDocument,
)

ABSTRACTS = [
    ("Flood forecasting with ensemble Kalman filters",
     "We assimilate river gauge data into a distributed hydrological model with an ensemble Kalman filter."),
    ("Glacier melt under warming",
     "A glacier melt model driven by downscaled climate projections estimates runoff changes to 2080."),
]
_PROFILE = re.compile(r"=== Profile ([AB]) ===\n(.*?)\n=== End of Profile \1 ===", re.DOTALL)
_QUALITY = re.compile(r"QUALITY=(\d+)")


# --- the scripted server ------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # the assistant message; None with status 200 means `body` is sent as is
    body: str = ""
    headers: dict = field(default_factory=dict)
    delay: float = 0.0


def completion(content: str, prompt_tokens: int = 100, completion_tokens: int = 20) -> str:
    return json.dumps({
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })


def shown_profiles(request: dict) -> tuple[str, str]:
    """The texts shown as Profile A and Profile B in a judge prompt."""
    found = dict(_PROFILE.findall(request["messages"][-1]["content"]))
    return found["A"], found["B"]


def quality(text: str) -> int:
    return int(_QUALITY.search(text).group(1))


def verdict(preferred: str, reasoning: str = "compared the criteria") -> Reply:
    return Reply(content=json.dumps({"reasoning": reasoning, "preferred": preferred}))


def consistent_judge(request: dict) -> Reply:
    """Prefers the profile with the higher QUALITY marker, wherever it is shown."""
    a, b = shown_profiles(request)
    return verdict("A" if quality(a) > quality(b) else "B" if quality(b) > quality(a) else "tie")


def first_position_judge(request: dict) -> Reply:
    """Always prefers whatever is shown first: every verdict flips with the order."""
    return verdict("A")


class ScriptedServer:
    def __init__(self, script: Callable[[dict], Reply] = consistent_judge):
        self.script = script
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def attempts(self, predicate: Callable[[dict], bool] = lambda r: True) -> int:
        return sum(predicate(r) for r in self.requests)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(request)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    reply = server.script(request)
                    time.sleep(reply.delay)
                    body = (completion(reply.content) if reply.content is not None else reply.body).encode()
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away
                finally:
                    with server._lock:
                        server.in_flight -= 1

        return Handler

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with ScriptedServer() as running:
        yield running


# --- data helpers --------------------------------------------------------------------------------------


def make_sample(name: str = "hydro") -> Sample:
    sample = Sample.objects.create(name=name)
    for position, (title, text) in enumerate(ABSTRACTS):
        doc = Document.objects.create(external_id=f"{name}-{position}", title=title, abstract=text,
                                      authors=["R. Author"], content_hash="x")
        SampleDocument.objects.create(sample=sample, document=doc, position=position)
    return sample


def make_profiles(sample: Sample, qualities: list[int], generator: Generator | None = None,
                  extra: str = "") -> list[Profile]:
    """Valid profiles whose text carries QUALITY=<q> (what the scripted judge reads) and distinct competencies."""
    generator = generator or Generator.objects.get_or_create(name="gen", defaults={"backend": Backend.IMPORTED})[0]
    start = Profile.objects.filter(sample=sample, generator=generator).count()
    profiles = []
    for i, q in enumerate(qualities, start=start):
        names = [f"Skill {i}-{k}" for k in range(3)]
        text = f'Domain: "Hydrology QUALITY={q}{extra}"\n\nCompetencies:\n' + "\n".join(f"- {n}: shown." for n in names)
        profiles.append(Profile.objects.create(
            sample=sample, generator=generator, candidate_index=i, raw_text=text, domain="Hydrology", is_valid=True,
            competencies=[{"name": n, "description": "shown."} for n in names]))
    return profiles


def http_judge(server_or_url, **overrides) -> Judge:
    base_url = server_or_url if isinstance(server_or_url, str) else server_or_url.base_url
    fields = {"name": "scripted", "backend": Backend.OPENAI, "model": "scripted-model", "base_url": base_url,
              "concurrency": 2, "max_tokens": 64}
    return Judge.objects.create(**{**fields, **overrides})


def judge_in_process(judge: Judge, pairing: str = "all", **params) -> Job:
    job = create_job(JobKind.JUDGE, {"judge_id": judge.pk, "pairing": pairing, **params})
    try:
        run_job(job.pk, run_judging)
    except Exception:
        pass  # run_job records the failure on the job and re-raises for the worker's log
    job.refresh_from_db()
    return job


@pytest.fixture
def fast_retries(monkeypatch):
    """Short request timeouts, so timeout tests take a second, not minutes."""
    monkeypatch.setattr(backends, "REQUEST_TIMEOUT_S", 0.5)


# --- HTTP behaviour ------------------------------------------------------------------------------------

pytestmark = pytest.mark.django_db


def test_every_comparison_is_judged_in_both_orders_with_tokens_latency_and_cost(server):
    sample = make_sample()
    low, high = make_profiles(sample, [1, 2])
    judge = http_judge(server, price_prompt_per_mtok=Decimal("2.5"), price_completion_per_mtok=Decimal("10"))
    job = judge_in_process(judge)
    assert job.status == JobStatus.SUCCEEDED, job.error
    comparison = Comparison.objects.get()
    assert (comparison.profile_a, comparison.profile_b) == (low, high) and comparison.source == "all"
    verdicts = {v.order: v for v in JudgeVerdict.objects.all()}
    assert set(verdicts) == {"ab", "ba"}
    # The better profile is canonical b; in order "ba" it was shown first and the judge said "A".
    assert verdicts["ab"].preferred == verdicts["ba"].preferred == "b"
    assert [quality(shown_profiles(r)[0]) for r in server.requests] in ([1, 2], [2, 1])
    for v in verdicts.values():
        assert v.is_valid and v.prompt_tokens == 100 and v.completion_tokens == 20 and v.latency_ms >= 0
        assert v.cost_usd == Decimal("0.000450")  # (100 · 2.5 + 20 · 10) / 1e6
        assert v.prompt_version == "judge-v1" and v.confidence is None
    assert job.stats["verdicts"] == 2 and job.stats["tokens"] == 40 and (job.done, job.total) == (2, 2)


def test_a_rerun_asks_nothing_again(server):
    sample = make_sample()
    make_profiles(sample, [1, 2, 3])
    judge = http_judge(server)
    judge_in_process(judge)
    assert len(server.requests) == 6
    job = judge_in_process(judge)
    assert job.status == JobStatus.SUCCEEDED and len(server.requests) == 6
    assert JudgeVerdict.objects.count() == 6 and "0 new verdicts" in job.message and "6 already there" in job.message


def test_a_second_judge_judges_the_same_comparisons(server):
    make_profiles(make_sample(), [1, 2])
    judge_in_process(http_judge(server))
    judge_in_process(http_judge(server, name="second"))
    assert Comparison.objects.count() == 1 and JudgeVerdict.objects.count() == 4


def test_429_and_500_are_retried_with_backoff_until_they_succeed(server):
    failures = Counter()

    def flaky(request):
        status = {0: 429, 1: 500}.get(failures[quality(shown_profiles(request)[0])])
        failures[quality(shown_profiles(request)[0])] += 1
        if status:
            return Reply(status=status, body='{"error": {"message": "busy"}}', headers={"retry-after-ms": "5"})
        return consistent_judge(request)

    server.script = flaky
    make_profiles(make_sample(), [1, 2])
    job = judge_in_process(http_judge(server))
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert len(server.requests) == 6  # each order: 429, 500, then the answer
    assert JudgeVerdict.objects.filter(is_valid=True).count() == 2


def test_a_timed_out_request_is_retried(server, fast_retries):
    slow_once = []

    def slow_first(request):
        if not slow_once:
            slow_once.append(True)
            return Reply(content=json.dumps({"preferred": "A"}), delay=1.5)
        return consistent_judge(request)

    server.script = slow_first
    make_profiles(make_sample(), [1, 2])
    job = judge_in_process(http_judge(server, concurrency=1))
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert len(server.requests) == 3 and JudgeVerdict.objects.filter(is_valid=True).count() == 2


def test_failures_that_survive_the_retries_are_not_stored_and_are_asked_again_next_run(server):
    broken = {"on": True}

    def unavailable_for_one_profile(request):
        if broken["on"] and 3 in map(quality, shown_profiles(request)):
            return Reply(status=503, body='{"error": {"message": "overloaded"}}', headers={"retry-after-ms": "1"})
        return consistent_judge(request)

    server.script = unavailable_for_one_profile
    make_profiles(make_sample(), [1, 2, 3])
    judge = http_judge(server)
    job = judge_in_process(judge)
    # (1,2) is judged; (1,3) and (2,3) fail in both orders after 1 + 3 retries each.
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert JudgeVerdict.objects.count() == 2 and not JudgeVerdict.objects.filter(is_valid=False).exists()
    assert job.stats["failed"] == 4 and "4 requests failed after retries" in job.message and "503" in job.message
    assert server.attempts(lambda r: 3 in map(quality, shown_profiles(r))) == 16
    broken["on"] = False
    job = judge_in_process(judge)
    assert job.status == JobStatus.SUCCEEDED and JudgeVerdict.objects.count() == 6
    assert "4 new verdicts" in job.message and "2 already there" in job.message


def test_a_run_where_every_request_fails_fails_the_job(server):
    server.script = lambda r: Reply(status=429, body="{}", headers={"retry-after-ms": "1"})
    make_profiles(make_sample(), [1, 2])
    job = judge_in_process(http_judge(server))
    assert job.status == JobStatus.FAILED and "every request failed" in job.error and "429" in job.error
    assert not JudgeVerdict.objects.exists()


def test_an_answer_that_is_no_chat_completion_fails_the_job_clearly(server):
    server.script = lambda r: Reply(body="<html>Welcome to nginx</html>")
    make_profiles(make_sample(), [1, 2])
    job = judge_in_process(http_judge(server))
    assert job.status == JobStatus.FAILED and "not an OpenAI chat completion" in job.error
    assert not JudgeVerdict.objects.exists()


def test_a_completion_without_choices_is_an_invalid_verdict(server):
    server.script = lambda r: Reply(body='{"object": "chat.completion", "choices": []}')
    make_profiles(make_sample(), [1, 2])
    judge_in_process(http_judge(server))
    assert [(v.is_valid, v.preferred, v.error) for v in JudgeVerdict.objects.all()] == [(False, "", "empty output")] * 2


def test_nul_and_html_in_the_output_are_kept(server):
    server.script = lambda r: Reply(content='{"reasoning": "a\\u0000b <i>x</i>", "preferred": "tie"}')
    make_profiles(make_sample(), [1, 2])
    judge_in_process(http_judge(server))
    v = JudgeVerdict.objects.first()
    assert v.is_valid and v.preferred == "tie" and v.reasoning == "a\ufffdb <i>x</i>"


def test_requests_run_concurrently_up_to_the_judges_limit(server):
    def slow(request):
        reply = consistent_judge(request)
        reply.delay = 0.5  # long enough that four requests overlap even on a loaded machine
        return reply

    server.script = slow
    make_profiles(make_sample(), [1, 2, 3, 4, 5])  # 10 comparisons, 20 requests
    judge_in_process(http_judge(server, concurrency=4))
    assert server.max_in_flight == 4  # four requests were open at once: concurrency, not a wall-clock guess
    assert JudgeVerdict.objects.count() == 20


def test_cancelling_stops_between_batches_and_keeps_what_was_answered(server, monkeypatch):
    make_profiles(make_sample(), [1, 2, 3, 4])  # 6 comparisons, 12 requests, batches of 2
    advance = JobProgress.advance

    def cancel_on_first_batch(self, done, message="", **stats):
        if done:
            Job.objects.filter(pk=self.job.pk).update(cancel_requested=True)  # the admin clicks "Cancel"
        advance(self, done, message, **stats)

    monkeypatch.setattr(JobProgress, "advance", cancel_on_first_batch)
    judge = http_judge(server, concurrency=2)
    job = judge_in_process(judge)
    assert job.status == JobStatus.CANCELLED
    stored = JudgeVerdict.objects.count()
    assert 2 <= stored <= 4 and len(server.requests) <= 4  # the first batch, plus at most the ones in flight
    monkeypatch.setattr(JobProgress, "advance", advance)
    assert judge_in_process(judge).status == JobStatus.SUCCEEDED
    assert JudgeVerdict.objects.count() == 12


@pytest.mark.parametrize(("setup", "message"), [
    (lambda s: {"base_url": "http://127.0.0.1:9/v1"}, "cannot reach http://127.0.0.1:9/v1"),
    (lambda s: {"base_url": s.base_url, "api_key_env": "COMPX_NO_SUCH_KEY"}, "COMPX_NO_SUCH_KEY"),
])
def test_configuration_errors_fail_the_job_with_a_clear_message(server, setup, message, monkeypatch):
    monkeypatch.delenv("COMPX_NO_SUCH_KEY", raising=False)
    make_profiles(make_sample(), [1, 2])
    job = judge_in_process(http_judge(server, **setup(server)))
    assert job.status == JobStatus.FAILED and message in job.error
    assert not JudgeVerdict.objects.exists()


@pytest.mark.parametrize(("status", "message"), [(401, "rejected the API key"), (404, "no model 'scripted-model'")])
def test_http_configuration_errors_are_not_retried_and_fail_the_job(server, status, message):
    server.script = lambda r: Reply(status=status, body='{"error": {"message": "no"}}')
    make_profiles(make_sample(), [1, 2])
    job = judge_in_process(http_judge(server))
    assert job.status == JobStatus.FAILED and message in job.error
    assert len(server.requests) <= 2 and not JudgeVerdict.objects.exists()


# --- a real OpenAI-compatible server -------------------------------------------------------------------


@pytest.mark.model
def test_the_judge_against_a_real_openai_compatible_server(openai_server):
    """`transformers serve` with the 135M model: its answers are stored, valid or invalid, never lost."""
    make_profiles(make_sample(), [1, 2])
    judge = http_judge(openai_server["base_url"], model=openai_server["model"], max_tokens=48)
    job = judge_in_process(judge)
    assert job.status == JobStatus.SUCCEEDED, job.error
    verdicts = list(JudgeVerdict.objects.all())
    assert sorted(v.order for v in verdicts) == ["ab", "ba"]
    for v in verdicts:
        assert v.raw_text and v.completion_tokens and v.prompt_tokens > 100 and v.latency_ms > 0
        assert (v.is_valid and v.preferred in ("a", "b", "tie") and not v.error) or (
            not v.is_valid and v.preferred == "" and v.error)


@pytest.mark.model
def test_a_wrong_model_on_a_real_server_fails_the_job_clearly(openai_server):
    make_profiles(make_sample(), [1, 2])
    job = judge_in_process(http_judge(openai_server["base_url"], model="no-such-model"))
    assert job.status == JobStatus.FAILED and "no-such-model" in job.error
    assert not JudgeVerdict.objects.exists()
