"""The judges themselves: an OpenAI-compatible endpoint, or a local transformers model read at the verdict.

An HTTP judge gets the versioned judge prompt and answers strict JSON (``verdicts.parse_verdict``); requests
run ``judge.concurrency`` at a time in threads that only make the HTTP call. A local judge gets the same
prompt with the answer prefilled up to the verdict, and one forward pass reads the probabilities of "A" and
"B" (``local_outcome``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import openai
from django.conf import settings

from ..llm_client import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, EndpointError, chat, make_client
from ..models import Backend, Judge
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


def backend_for(judge: Judge):
    if judge.prompt_version not in PROMPTS:
        raise EndpointError(f"judge {judge.name!r}: unknown prompt version {judge.prompt_version!r} "
                            f"(known: {', '.join(PROMPTS)})")
    if judge.backend == Backend.LOCAL:
        return LocalJudgeBackend(judge)
    return OpenAIJudgeBackend(judge)


