"""The judges themselves: an OpenAI-compatible endpoint, or a local transformers model read at the verdict.

An HTTP judge gets the versioned judge prompt and answers strict JSON (``verdicts.parse_verdict``); requests
run ``judge.concurrency`` at a time in threads that only make the HTTP call. A local judge gets the same
prompt with the answer prefilled up to the verdict, and one forward pass reads the probabilities of "A" and
"B" (``local_outcome``). A scoring judge shows no pair at all: it scores each profile alone against its
abstracts (``training.ml.scoring``) and decides a pair by the score difference (``ScoringJudgeBackend``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import openai
from django.conf import settings

from training.ml.scoring import ProfileScore, decide

from ..llm_client import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, EndpointError, chat, make_client
from ..models import Judge, JudgeBackend
from ..prompts import PROMPTS, Messages
from .verdicts import Verdict, parse_verdict

# What the local judge's assistant turn is prefilled with; the next token is the verdict.
ANSWER_PREFIX = '{"preferred": "'
# Local judge: |p − ½| below this is a tie (p = P(A) normalised over A and B): 0.4 < p < 0.6 says "tie".
TIE_MARGIN = 0.1
# Local judge: below this share of next-token probability on "A" + "B" the model is not answering.
MIN_ANSWER_MASS = 0.05
# Prompts per local forward pass: judge prompts are long, so batches stay small on CPU.
LOCAL_BATCH = 4
# Per HTTP request; the client retries a timed-out request DEFAULT_RETRIES times.
REQUEST_TIMEOUT_S = DEFAULT_TIMEOUT_S


@dataclass
class Outcome:
    """One answer of a judge to one prompt, in presentation terms ("A" = shown first)."""

    text: str
    verdict: Verdict
    p_first: float | None = None  # local judges: P(A) normalised over A and B
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: int = 0


class TransientFailure(Exception):
    """A request that failed after the client's retries (429, 5xx, timeout): not a verdict, asked again next run."""


Result = Outcome | TransientFailure


def is_transient(error: EndpointError) -> bool:
    cause = error.__cause__
    if isinstance(cause, openai.APITimeoutError):
        return True
    return isinstance(cause, openai.APIStatusError) and (cause.status_code in (408, 409, 429)
                                                         or cause.status_code >= 500)


class OpenAIJudgeBackend:
    """Any OpenAI-compatible endpoint, ``judge.concurrency`` requests at a time."""

    def __init__(self, judge: Judge):
        self.judge = judge
        self.client = make_client(judge.base_url, judge.api_key_env, timeout=REQUEST_TIMEOUT_S,
                                  retries=DEFAULT_RETRIES)
        self.batch = max(1, judge.concurrency)

    def call(self, messages: Messages) -> Outcome:
        """One request; runs in a worker thread, so it touches no database."""
        try:
            result = chat(self.client, self.judge.model, messages, temperature=self.judge.temperature,
                          max_tokens=self.judge.max_tokens)
        except (json.JSONDecodeError, openai.APIResponseValidationError) as exc:
            # A 200 answer that is no chat completion: the URL points at something else (a web page, a proxy).
            raise EndpointError(f"{self.client.base_url} answered with something that is not an OpenAI chat "
                                f"completion ({type(exc).__name__}): is the base URL an OpenAI-compatible "
                                f"/v1 endpoint?") from exc
        return Outcome(result.text, parse_verdict(result.text), None, result.prompt_tokens, result.completion_tokens,
                       result.latency_ms)

    def run(self, prompts: Sequence[Messages]) -> Iterator[tuple[int, Result]]:
        yield from in_threads(self.call, prompts, self.batch)


def in_threads(call: Callable[[Messages], Outcome], prompts: Sequence[Messages],
               workers: int) -> Iterator[tuple[int, Result]]:
    """(index, result) as requests finish, ``workers`` in flight; a configuration error is raised.

    The next request is submitted before a result is handed out, so the server stays busy while the
    caller writes to the database. Closing the iterator early (a cancel) waits only for the requests in
    flight.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge")
    queue = iter(enumerate(prompts))
    pending: dict[Future, int] = {}

    def submit_next() -> None:
        item = next(queue, None)
        if item is not None:
            pending[pool.submit(call, item[1])] = item[0]

    try:
        for _ in range(workers):
            submit_next()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                index = pending.pop(future)
                submit_next()
                yield index, _result_of(future)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result_of(future: Future) -> Result:
    try:
        return future.result()
    except EndpointError as error:
        if is_transient(error):
            return TransientFailure(str(error))
        raise


class LocalJudgeBackend:
    """A transformers causal LM in this process, read at the verdict position (see the module docstring)."""

    def __init__(self, judge: Judge):
        from training.ml.models import get_model

        self.model, self.tokenizer = get_model(judge.model, settings.MODEL_CACHE_DIR)
        self.batch = LOCAL_BATCH

    def run(self, prompts: Sequence[Messages]) -> Iterator[tuple[int, Result]]:
        for start in range(0, len(prompts), LOCAL_BATCH):
            started = time.monotonic()
            scored = answer_probabilities(self.model, self.tokenizer, prompts[start:start + LOCAL_BATCH])
            # One forward pass scored the batch: each prompt is charged an equal share of its time.
            share = int((time.monotonic() - started) * 1000 / len(scored))
            for offset, (p_a, p_b, p_tie, prompt_tokens) in enumerate(scored):
                yield start + offset, local_outcome(p_a, p_b, p_tie, prompt_tokens, share)


def answer_probabilities(model: Any, tokenizer: Any, conversations: Sequence[Messages],
                         prefix: str = ANSWER_PREFIX) -> list[tuple[float, float, float, int]]:
    """(P("A"), P("B"), P("tie"), prompt tokens) of the token after ``prefix``, for each conversation."""
    import torch

    from training.ml.generate import render_prompt

    ids = [single_token_id(tokenizer, label) for label in ("A", "B", "tie")]
    texts = [render_prompt(tokenizer, list(c), prefill=prefix) for c in conversations]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    mask = encoded["attention_mask"]
    if tokenizer.padding_side != "left" and len(texts) > 1:
        raise ValueError("batched scoring needs tokenizer.padding_side == 'left'")
    # Positions count real tokens only, so a left-padded prompt scores as it would alone.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=encoded["input_ids"].to(device), attention_mask=mask.to(device),
                       position_ids=positions.to(device), logits_to_keep=1).logits[:, -1, :]
    probs = torch.softmax(logits.float(), dim=-1).cpu()
    return [(float(row[ids[0]]), float(row[ids[1]]), float(row[ids[2]]), int(n))
            for row, n in zip(probs, mask.sum(-1))]


def single_token_id(tokenizer: Any, label: str) -> int:
    ids = tokenizer.encode(label, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"the local judge needs {label!r} to be one token of the model's vocabulary, got {ids}")
    return ids[0]


def local_outcome(p_a: float, p_b: float, p_tie: float, prompt_tokens: int | None = None,
                  latency_ms: int = 0) -> Outcome:
    """The local judge's verdict from next-token probabilities (see TIE_MARGIN and MIN_ANSWER_MASS)."""
    mass = p_a + p_b
    raw = {"answer_prefix": ANSWER_PREFIX, "p_A": p_a, "p_B": p_b, "p_tie": p_tie}
    if mass < MIN_ANSWER_MASS:
        error = f"only {mass:.1%} of the next-token probability is on \"A\" or \"B\" (minimum {MIN_ANSWER_MASS:.0%})"
        return Outcome(json.dumps(raw), Verdict(None, error=error), None, prompt_tokens, 0, latency_ms)
    p = p_a / mass
    raw["p_A_normalised"] = p
    label = "A" if p >= 0.5 + TIE_MARGIN else "B" if p <= 0.5 - TIE_MARGIN else "tie"
    # No token is generated: one forward pass reads the distribution, hence 0 completion tokens.
    return Outcome(json.dumps(raw), Verdict(label), p, prompt_tokens, 0, latency_ms)


Abstracts = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class ScoringRequest:
    """One comparison for a scoring judge: its two profiles (id, text), its sample's abstracts and the baseline
    contexts (another sample's abstracts; none for baseline "none")."""

    sample_id: int
    profile_a: tuple[int, str]
    profile_b: tuple[int, str]
    abstracts: Abstracts
    baselines: Sequence[Abstracts] = ()


class ScoringJudgeBackend:
    """Scores each profile once, alone, against its sample's abstracts, and decides each pair with
    ``training.ml.scoring.decide``: no presentation order exists, so the verdict cannot depend on one.

    Scores are kept for this run by profile id, so a tournament's later rounds reuse them; the model is
    loaded once per worker process (``get_model``).
    """

    # Comparisons per write and progress report.
    batch = 16

    def __init__(self, judge: Judge):
        from training.ml.models import get_model
        from training.ml.scoring import Scorer

        self.settings = judge.scorer_settings()
        model, tokenizer = get_model(judge.model, settings.MODEL_CACHE_DIR)
        self.scorer = Scorer(model, tokenizer, self.settings)
        self.model_name = judge.model
        self.scores: dict[int, tuple[ProfileScore, int]] = {}  # profile id → its score, and ms it took

    def run(self, requests: Sequence[ScoringRequest]) -> Iterator[tuple[int, Result]]:
        """(index, outcome) per request, one sample at a time: its unscored profiles are scored together, so
        the sample's abstracts are encoded once for all of them."""
        by_sample: dict[int, list[int]] = {}
        for index, request in enumerate(requests):
            by_sample.setdefault(request.sample_id, []).append(index)
        for indices in by_sample.values():
            self._score_sample([requests[i] for i in indices])
            for index in indices:
                yield index, self.outcome(requests[index])

    def _score_sample(self, requests: Sequence[ScoringRequest]) -> None:
        texts = {pid: text for r in requests for pid, text in (r.profile_a, r.profile_b) if pid not in self.scores}
        if not texts:
            return
        first = requests[0]
        started = time.monotonic()
        scores = self.scorer.score(first.abstracts, list(texts.values()), first.baselines)
        # One pass scored them together: each profile is charged an equal share of its time.
        share = int((time.monotonic() - started) * 1000 / len(texts))
        for pid, score in zip(texts, scores):
            self.scores[pid] = (score, share)

    def outcome(self, request: ScoringRequest) -> Outcome:
        (a, ms_a), (b, ms_b) = self.scores[request.profile_a[0]], self.scores[request.profile_b[0]]
        return scoring_outcome(a, b, self.settings.margin, {"model": self.model_name, **self.settings.to_dict()},
                               ms_a + ms_b)


def scoring_confidence(difference: float | None) -> float:
    """Like every judge's confidence, the canonical chance that a is the better one (½: no preference): here
    Bradley–Terry's with the PMI as each profile's strength, σ(difference). It is monotone in the difference,
    so "|difference| ≥ x" is "confidence ≥ σ(x) or ≤ 1 − σ(x)"; the difference itself is in the raw data."""
    if difference is None:
        return 0.5
    return 1 / (1 + math.exp(-difference))


def scoring_outcome(a: ProfileScore, b: ProfileScore, margin: float, scorer: dict | None = None,
                    latency_ms: int = 0) -> Outcome:
    """A scored pair as a verdict in canonical terms ("A" is profile_a: stored in order "ab"); the scores, the
    difference and the margin are its raw data. A profile without a score (empty) loses; two are a tie."""
    decision = decide(a, b, margin)
    raw = {"scorer": scorer or {}, "a": a.to_dict(), "b": b.to_dict(), "difference": decision.difference,
           "margin": margin}
    label = {"a": "A", "b": "B"}.get(decision.preferred, "tie")
    # Worded without naming a side: the review screen may show the pair with its labels swapped.
    if decision.difference is None:
        reasoning = ("Neither profile could be scored" if decision.preferred == "tie" else
                     "One profile could not be scored and loses") + f" ({a.error or b.error})."
    elif decision.decisive:
        reasoning = (f"The preferred profile's PMI with the abstracts is higher by {abs(decision.difference):.3f} "
                     f"nats per token (tie margin {margin}).")
    else:
        reasoning = (f"The profiles' PMI with the abstracts differs by {abs(decision.difference):.3f} nats per "
                     f"token, within the tie margin {margin}.")
    # No token is generated; scoring reads the profiles' own tokens.
    return Outcome(json.dumps(raw), Verdict(label, reasoning=reasoning), scoring_confidence(decision.difference),
                   None, 0, latency_ms)


def backend_for(judge: Judge):
    if judge.backend == JudgeBackend.SCORING:
        return ScoringJudgeBackend(judge)
    if judge.prompt_version not in PROMPTS:
        raise EndpointError(f"judge {judge.name!r}: unknown prompt version {judge.prompt_version!r} "
                            f"(known: {', '.join(PROMPTS)})")
    if judge.backend == JudgeBackend.LOCAL:
        return LocalJudgeBackend(judge)
    return OpenAIJudgeBackend(judge)


