"""LLM judging: both presentation orders, strict verdicts, pairing strategies, panels, rankings, figures.

Every comparison is judged twice, as (A, B) = (profile_a, profile_b) — order "ab" — and swapped — order
"ba"; the two verdicts are combined with ``verdicts.combine_canonical`` and a verdict that flips with the
order is "inconsistent", never a win. A verdict already stored for (comparison, judge, order) is reused,
never asked again; the unique constraint is the backstop when two runs overlap.

Backends
- OpenAI-compatible (``llm_client``): the versioned judge prompt, the answer parsed strictly
  (``verdicts.parse_verdict``). Requests run ``judge.concurrency`` at a time in threads that do only the
  HTTP call; the calling thread writes every verdict. The openai client retries 408/409/429/5xx and
  timeouts with exponential backoff (``llm_client.DEFAULT_RETRIES``).
- Local transformers: the same prompt with the assistant turn prefilled up to the verdict,
  ``{"preferred": "`` (the reasoning is skipped), and one forward pass reads the next-token
  probabilities of "A" and "B". p = P(A) / (P(A) + P(B)) decides: A when p ≥ ½ + TIE_MARGIN, B when
  p ≤ ½ − TIE_MARGIN, tie in between. When the model puts less than MIN_ANSWER_MASS of its probability
  on "A" or "B" it is not answering the question and the verdict is invalid. The raw probabilities are
  stored as ``raw_text`` (JSON).

``JudgeVerdict.confidence`` is always in canonical terms: the judge's probability that profile_a is the
better one (p in order "ab", 1 − p in order "ba"), so confidences of both orders and of several judges
average directly (``pairing.PairStats.confidence``). HTTP judges report none.

Failures
- Unparseable output is stored as an invalid verdict with its raw text and the parser's error, and is
  never counted.
- A configuration error (wrong URL, model or key: ``llm_client.EndpointError``) fails the job with its
  message; verdicts stored before it are kept.
- A transient failure that survives the client's retries (429, 5xx, timeout) is NOT stored: it says
  nothing about the judge, and storing it would block a retry (verdicts are never asked twice). It is
  counted and reported in the job's message; running the job again asks exactly those again. A run in
  which every request failed fails the job with the last error.

Pairing strategies (``run_judging``): ``existing`` comparisons (a campaign's, or all), ``all`` pairs of each
sample's pairable profiles, the knockout ``tournament`` of the thesis, and ``active`` pairs (where judges
are least sure) added to a campaign for experts.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import openai
from django.conf import settings
from django.db import transaction
from django.db.models import Avg, Count, F, Max, OuterRef, Q, QuerySet, Subquery, Sum

from . import stats
from .jobs import JobProgress, create_job, enqueue
from .llm_client import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, EndpointError, chat, make_client
from .models import (
    Backend,
    Campaign,
    CampaignItem,
    Comparison,
    Job,
    JobKind,
    Judge,
    JudgePanel,
    JudgeVerdict,
    PairingSource,
    Profile,
    Sample,
    SampleDocument,
    TournamentPreference,
)
from .pairing import PairStats, Tournament, active_pairs, all_pairs
from .prompts import PROMPTS, Messages
from .verdicts import (
    INCONSISTENT,
    INVALID,
    Verdict,
    combine_canonical,
    panel_consensus,
    parse_verdict,
    to_canonical,
)

ORDERS = ("ab", "ba")
PAIRINGS = ("existing", "all", "tournament", "active")
# Local judge: what the assistant turn is prefilled with; the next token is the verdict.
ANSWER_PREFIX = '{"preferred": "'
# Local judge: |p − ½| below this is a tie (p = P(A) normalised over A and B): 0.4 < p < 0.6 says "tie".
TIE_MARGIN = 0.1
# Local judge: below this share of next-token probability on "A" + "B" the model is not answering.
MIN_ANSWER_MASS = 0.05
# Prompts per local forward pass: judge prompts are long (~1–2k tokens), so batches stay small on CPU.
LOCAL_BATCH = 4
# Per HTTP request; the client retries a timed-out request DEFAULT_RETRIES times.
REQUEST_TIMEOUT_S = DEFAULT_TIMEOUT_S
# Samples per step of the "all" strategy and comparisons per step of "existing"/"active": bounds the
# size of each query and of each batch of prompts held in memory.
SAMPLES_PER_STEP = 8
COMPARISONS_PER_STEP = 200
ACTIVE_DEFAULT_LIMIT = 20
# A tie or an order flip says "no better one": half a point each way in rankings.
_SCORES = {"a": 1.0, "b": 0.0, "tie": 0.5, INCONSISTENT: 0.5}


# --- backends ------------------------------------------------------------------------------------------


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


# --- prompts and storage -------------------------------------------------------------------------------


def abstracts_by_sample(sample_ids: Iterable[int]) -> dict[int, list[tuple[str, str]]]:
    """Each sample's (title, abstract) pairs in position order; one query."""
    rows = (SampleDocument.objects.filter(sample_id__in=set(sample_ids)).order_by("sample_id", "position")
            .values_list("sample_id", "document__title", "document__abstract"))
    abstracts: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for sample_id, title, text in rows:
        abstracts[sample_id].append((title, text))
    return abstracts


def judge_messages(judge: Judge, abstracts: Sequence[tuple[str, str]], comparison: Comparison,
                   order: str) -> Messages:
    """The judge's prompt version with the two profiles in presentation order ("ab": profile_a first)."""
    first, second = (comparison.profile_a, comparison.profile_b) if order == "ab" else (
        comparison.profile_b, comparison.profile_a)
    return PROMPTS[judge.prompt_version](abstracts, first.raw_text, second.raw_text)


def cost_usd(judge: Judge, prompt_tokens: int | None, completion_tokens: int | None) -> Decimal:
    per_million = (Decimal(prompt_tokens or 0) * judge.price_prompt_per_mtok
                   + Decimal(completion_tokens or 0) * judge.price_completion_per_mtok)
    return (per_million / Decimal(1_000_000)).quantize(Decimal("0.000001"))


def _db_text(text: str) -> str:
    # PostgreSQL text cannot hold NUL; a model emitting one must not crash the job. Everything else verbatim.
    return text.replace("\x00", "\ufffd")


def verdict_row(judge: Judge, comparison_id: int, order: str, outcome: Outcome) -> JudgeVerdict:
    verdict = outcome.verdict
    confidence = None
    if outcome.p_first is not None:
        confidence = outcome.p_first if order == "ab" else 1 - outcome.p_first
    return JudgeVerdict(
        comparison_id=comparison_id, judge=judge, order=order, raw_text=_db_text(outcome.text),
        reasoning=_db_text(verdict.reasoning), preferred=to_canonical(verdict.preferred, order) or "",
        is_valid=verdict.valid, error=verdict.error, confidence=confidence, prompt_version=judge.prompt_version,
        prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens,
        latency_ms=outcome.latency_ms, cost_usd=cost_usd(judge, outcome.prompt_tokens, outcome.completion_tokens),
    )


@dataclass
class Tally:
    """What a judging run has done so far; ``done`` counts (comparison, order) units."""

    stored: int = 0  # new verdicts written
    reused: int = 0  # already stored before, not asked again
    invalid: int = 0  # of the stored ones
    failed: int = 0  # transient failures, not stored
    tokens: int = 0  # completion tokens of the stored ones
    cost: Decimal = Decimal(0)
    last_failure: str = ""

    @property
    def done(self) -> int:
        return self.stored + self.reused + self.failed

    def stats(self) -> dict:
        return {"tokens": self.tokens, "verdicts": self.stored, "invalid": self.invalid, "failed": self.failed,
                "cost_usd": float(self.cost)}

    def summary(self) -> str:
        text = f"{self.stored} new verdicts ({self.invalid} invalid), {self.reused} already there"
        if self.failed:
            text += (f"; {self.failed} requests failed after retries and were not stored ({self.last_failure})"
                     " — run again to ask them again")
        return text


class Session:
    """One judging run of one judge: its backend (built on first use), its tally, where progress goes."""

    def __init__(self, judge: Judge, report: Callable[[Tally], None] | None = None):
        self.judge = judge
        self.tally = Tally()
        self.report = report or (lambda tally: None)
        self._backend = None

    @property
    def backend(self):
        # Built lazily: a run with nothing left to ask needs neither a model nor a server.
        if self._backend is None:
            self._backend = backend_for(self.judge)
        return self._backend

    def judge_comparisons(self, comparisons: Sequence[Comparison]) -> None:
        """Judge both orders of each comparison, skipping orders this judge has already answered.

        ``comparisons`` need ``profile_a`` and ``profile_b`` loaded (select_related).
        """
        existing = set(JudgeVerdict.objects.filter(judge=self.judge, comparison__in=[c.pk for c in comparisons])
                       .values_list("comparison_id", "order"))
        todo = [(c, order) for c in comparisons for order in ORDERS if (c.pk, order) not in existing]
        self.tally.reused += 2 * len(comparisons) - len(todo)
        if todo:
            self._ask(todo)
        self.report(self.tally)

    def _ask(self, todo: list[tuple[Comparison, str]]) -> None:
        abstracts = abstracts_by_sample(c.sample_id for c, _ in todo)
        prompts = [judge_messages(self.judge, abstracts[c.sample_id], c, order) for c, order in todo]
        rows: list[JudgeVerdict] = []
        try:
            with closing(self.backend.run(prompts)) as results:
                for answered, (index, result) in enumerate(results, start=1):
                    comparison, order = todo[index]
                    self._count(result, rows, comparison, order)
                    # Write and report once per batch: cancellation is checked here, between batches.
                    if answered % self.backend.batch == 0:
                        self._flush(rows)
        finally:
            self._flush(rows, report=False)  # a configuration error or a cancel keeps what was answered

    def _count(self, result: Result, rows: list[JudgeVerdict], comparison: Comparison, order: str) -> None:
        if isinstance(result, TransientFailure):
            self.tally.failed += 1
            self.tally.last_failure = str(result)
            return
        row = verdict_row(self.judge, comparison.pk, order, result)
        rows.append(row)
        self.tally.stored += 1
        self.tally.invalid += not row.is_valid
        self.tally.tokens += row.completion_tokens or 0
        self.tally.cost += row.cost_usd

    def _flush(self, rows: list[JudgeVerdict], report: bool = True) -> None:
        if rows:
            # ignore_conflicts: a run overlapping this one may have stored the same order meanwhile.
            JudgeVerdict.objects.bulk_create(rows, ignore_conflicts=True)
            rows.clear()
        if report:
            self.report(self.tally)  # may raise JobCancelled: everything answered so far is stored


# --- reading verdicts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairVerdict:
    """One judge on one comparison: canonical labels per order (None: invalid or not asked)."""

    ab: str | None
    ba: str | None
    answered: int  # stored verdicts, valid or not: 2 when both orders were asked

    @property
    def combined(self) -> str:
        return combine_canonical(self.ab, self.ba)


def pair_verdicts(verdicts: QuerySet) -> Iterator[tuple[int, int, PairVerdict]]:
    """(comparison id, judge id, PairVerdict) for the given JudgeVerdict rows; one grouped query."""
    grouped = (verdicts.order_by().values("comparison_id", "judge_id").annotate(
        ab=Max("preferred", filter=Q(order="ab", is_valid=True)),
        ba=Max("preferred", filter=Q(order="ba", is_valid=True)),
        answered=Count("id"),
    ).values_list("comparison_id", "judge_id", "ab", "ba", "answered"))
    for comparison_id, judge_id, ab, ba, answered in grouped:
        yield comparison_id, judge_id, PairVerdict(ab or None, ba or None, answered)


def combined_verdicts(comparisons: QuerySet | Iterable[int], judges: Iterable[Judge | int] | None = None
                      ) -> dict[tuple[int, int], str]:
    """(comparison id, judge id) → "a" | "b" | "tie" | "inconsistent" | "invalid"; pairs never judged are absent."""
    verdicts = JudgeVerdict.objects.filter(comparison__in=comparisons)
    if judges is not None:
        verdicts = verdicts.filter(judge__in=list(judges))
    return {(c, j): pv.combined for c, j, pv in pair_verdicts(verdicts)}


def panel_verdicts(panel: JudgePanel, comparisons: QuerySet | Iterable[int]) -> dict[int, str]:
    """Each comparison's panel verdict: panel_consensus over each panel judge's combined verdict.

    A judge that has not judged a comparison (or answered invalidly) casts no vote; no votes → "no_consensus".
    """
    judge_ids = [j.pk for j in panel.judges.all()]
    ids = list(comparisons.values_list("pk", flat=True)) if isinstance(comparisons, QuerySet) else list(comparisons)
    combined = combined_verdicts(ids, judge_ids)
    return {c: panel_consensus([combined.get((c, j), INVALID) for j in judge_ids], panel.threshold) for c in ids}


def panel_verdict(panel: JudgePanel, comparison: Comparison) -> str:
    return panel_verdicts(panel, [comparison.pk])[comparison.pk]


# --- pairing strategies --------------------------------------------------------------------------------


def pairable_by_sample(sample_ids: Iterable[int]) -> dict[int, list[int]]:
    """Each sample's pairable profile ids (valid, not a near-duplicate), in id order; one query."""
    rows = (Profile.objects.pairable().filter(sample_id__in=list(sample_ids)).order_by("sample_id", "id")
            .values_list("sample_id", "id"))
    found: dict[int, list[int]] = defaultdict(list)
    for sample_id, profile_id in rows:
        found[sample_id].append(profile_id)
    return found


def ensure_comparisons(pairs: Sequence[tuple[int, int, int]], source: str) -> list[Comparison]:
    """The canonical comparison of each (sample id, profile id, profile id), created where missing.

    Existing comparisons keep their source. Returned in the order of ``pairs``, profiles loaded.
    """
    keys = [(s, min(p, q), max(p, q)) for s, p, q in pairs]
    Comparison.objects.bulk_create(
        [Comparison(sample_id=s, profile_a_id=a, profile_b_id=b, source=source) for s, a, b in keys],
        ignore_conflicts=True,
    )
    found = (Comparison.objects.filter(profile_a_id__in={a for _, a, _ in keys}, profile_b_id__in={b for *_, b in keys})
             .select_related("profile_a", "profile_b"))
    by_pair = {(c.profile_a_id, c.profile_b_id): c for c in found}
    return [by_pair[(a, b)] for _, a, b in keys]


def add_to_campaign(campaign: Campaign | None, comparisons: Iterable[Comparison]) -> None:
    if campaign is not None:
        CampaignItem.objects.bulk_create([CampaignItem(campaign=campaign, comparison=c) for c in comparisons],
                                         ignore_conflicts=True)


def seeded(profile_ids: list[int], sample_id: int) -> list[int]:
    """The bracket order: shuffled so seeding does not follow generation order, yet fixed per sample, so a
    re-run plays the same matches and reuses their stored verdicts."""
    order = list(profile_ids)
    random.Random(sample_id).shuffle(order)
    return order


def judge_all_pairs(session: Session, sample_ids: Sequence[int], campaign: Campaign | None = None) -> str:
    pairable = pairable_by_sample(sample_ids)
    samples = [s for s in sample_ids if len(pairable.get(s, ())) >= 2]
    for start in range(0, len(samples), SAMPLES_PER_STEP):
        step = samples[start:start + SAMPLES_PER_STEP]
        pairs = [(s, p, q) for s in step for p, q in all_pairs(pairable[s])]
        comparisons = ensure_comparisons(pairs, PairingSource.ALL)
        add_to_campaign(campaign, comparisons)
        session.judge_comparisons(comparisons)
    return f"all pairs of {len(samples)} samples"


def planned_all(sample_ids: Sequence[int]) -> int:
    return sum(len(ids) * (len(ids) - 1) for ids in pairable_by_sample(sample_ids).values())  # 2 orders × n(n−1)/2


@dataclass
class Bracket:
    """One sample's tournament, and the comparison behind each of its matches."""

    sample_id: int
    tournament: Tournament
    comparisons: dict[tuple[int, int], Comparison] = field(default_factory=dict)
    incomplete: bool = False


def run_tournaments(session: Session, sample_ids: Sequence[int], campaign: Campaign | None = None) -> str:
    """Knockout tournaments for the samples, all advancing together round by round.

    Each round's matches (of every sample) are judged together, so an HTTP judge has enough requests in
    flight. A match's winner is the profile both orders agree on; a tie, a flip or an invalid answer sends
    the match's first candidate on without a preference (``Tournament.record``). A match whose verdicts
    are missing (transient failures) stops its sample's tournament for this run: its preferences are not
    stored, and a re-run replays the stored verdicts and asks only what is missing.
    """
    pairable = pairable_by_sample(sample_ids)
    brackets = [Bracket(s, Tournament(seeded(pairable[s], s))) for s in sample_ids if len(pairable.get(s, ())) >= 2]
    while playing := [b for b in brackets if not b.tournament.done and not b.incomplete]:
        _play_round(session, playing, campaign)
    finished = [b for b in brackets if not b.incomplete]
    counts = [store_tournament(session.judge, b) for b in finished]
    text = (f"{len(finished)} tournaments, {sum(c[0] for c in counts)} preferences "
            f"({sum(c[1] for c in counts)} implied)")
    if len(finished) < len(brackets):
        text += f"; {len(brackets) - len(finished)} incomplete (requests failed) — run again to finish them"
    return text


def _play_round(session: Session, playing: list[Bracket], campaign: Campaign | None) -> None:
    matches = [(b, a, c) for b in playing for a, c in b.tournament.next_matches()]
    comparisons = ensure_comparisons([(b.sample_id, a, c) for b, a, c in matches], PairingSource.TOURNAMENT)
    add_to_campaign(campaign, comparisons)
    session.judge_comparisons(comparisons)
    verdicts = {c: pv for c, _, pv in pair_verdicts(JudgeVerdict.objects.filter(
        judge=session.judge, comparison__in=[c.pk for c in comparisons]))}
    for (bracket, first, second), comparison in zip(matches, comparisons):
        bracket.comparisons[(comparison.profile_a_id, comparison.profile_b_id)] = comparison
        found = verdicts.get(comparison.pk)
        if found is None or found.answered < 2:
            bracket.incomplete = True
            continue
        winner = {"a": comparison.profile_a_id, "b": comparison.profile_b_id}.get(found.combined)
        if not bracket.incomplete:
            bracket.tournament.record(first, second, winner)


@transaction.atomic
def store_tournament(judge: Judge, bracket: Bracket) -> tuple[int, int]:
    """Replace the judge's preferences for the sample with this tournament's; (preferences, implied)."""
    TournamentPreference.objects.filter(judge=judge, sample_id=bracket.sample_id).delete()
    rows = [
        TournamentPreference(judge=judge, sample_id=bracket.sample_id, chosen_id=p.chosen, rejected_id=p.rejected,
                             implied=p.implied, comparison=bracket.comparisons[(min(p.match), max(p.match))])
        for p in bracket.tournament.preferences()
    ]
    TournamentPreference.objects.bulk_create(rows)
    return len(rows), sum(r.implied for r in rows)


def planned_tournament(sample_ids: Sequence[int]) -> int:
    # A knockout of n entrants plays n − 1 matches whatever the byes and ties; two orders each.
    return sum(2 * (len(ids) - 1) for ids in pairable_by_sample(sample_ids).values() if len(ids) >= 2)


def judge_existing(session: Session, comparisons: QuerySet) -> str:
    ids = list(comparisons.order_by("pk").values_list("pk", flat=True))
    for start in range(0, len(ids), COMPARISONS_PER_STEP):
        step = ids[start:start + COMPARISONS_PER_STEP]
        session.judge_comparisons(list(Comparison.objects.filter(pk__in=step).order_by("pk")
                                       .select_related("profile_a", "profile_b")))
    return f"{len(ids)} existing comparisons"


def pair_stats(comparisons: QuerySet) -> list[PairStats]:
    """What all judges say about each comparison (combined verdicts, mean canonical confidence), in id order.

    Three queries, whatever the number of comparisons and judges.
    """
    ids = list(comparisons.order_by("pk").values_list("pk", flat=True))
    verdicts = JudgeVerdict.objects.filter(comparison__in=comparisons.values("pk"))
    counts: dict[int, Counter] = defaultdict(Counter)
    for comparison_id, _, pv in pair_verdicts(verdicts):
        counts[comparison_id][pv.combined] += 1
    confidence = dict(verdicts.filter(is_valid=True, confidence__isnull=False).order_by().values("comparison_id")
                      .annotate(c=Avg("confidence")).values_list("comparison_id", "c"))
    return [PairStats(pair=(c,), a=counts[c]["a"], b=counts[c]["b"], tie=counts[c]["tie"],
                      inconsistent=counts[c][INCONSISTENT], confidence=confidence.get(c)) for c in ids]


def select_active(session: Session, candidates: QuerySet, campaign: Campaign, limit: int) -> str:
    """Add the ``limit`` comparisons the judges are least sure about to the campaign, for experts.

    Candidates are the existing comparisons not yet in the campaign; this judge first answers any order it
    has not, so every candidate has its say. Uncertainty is ``pairing.uncertainty``: inconsistent across
    orders, judges disagreeing, ties, confidence near ½.
    """
    candidates = candidates.exclude(campaign_items__campaign=campaign)
    judge_existing(session, candidates)
    scored = pair_stats(candidates)
    chosen = [s.pair[0] for s in active_pairs(scored, limit)]
    add_to_campaign(campaign, Comparison.objects.filter(pk__in=chosen))
    return f"{len(chosen)} most uncertain of {len(scored)} comparisons added to {campaign.name}"


# --- jobs ----------------------------------------------------------------------------------------------


def _scope(params: dict) -> tuple[list[int], Campaign | None]:
    campaign = Campaign.objects.get(pk=params["campaign_id"]) if params.get("campaign_id") else None
    samples = Sample.objects.order_by("pk")
    if params.get("sample_ids") is not None:
        samples = samples.filter(pk__in=params["sample_ids"])
    return list(samples.values_list("pk", flat=True)), campaign


def _existing_scope(campaign: Campaign | None, sample_ids: list[int], limit: int | None) -> QuerySet:
    comparisons = campaign.comparisons.all() if campaign else Comparison.objects.filter(sample_id__in=sample_ids)
    if limit:
        comparisons = Comparison.objects.filter(pk__in=list(comparisons.order_by("pk").values_list("pk", flat=True)[:limit]))
    return comparisons


def run_judging(job: Job, progress: JobProgress) -> str:
    """The judging job: ``job.params`` names the judge, the pairing, and the samples or campaign."""
    params = job.params
    judge = Judge.objects.get(pk=params["judge_id"])
    pairing = params.get("pairing", "tournament")
    sample_ids, campaign = _scope(params)
    limit = params.get("limit")
    session = Session(judge, report=lambda t: progress.advance(t.done, f"{t.done} of {progress.job.total} judgements",
                                                               **t.stats()))
    if pairing in ("all", "tournament") and limit:
        sample_ids = sample_ids[:limit]
    if pairing == "all":
        progress.start(total=planned_all(sample_ids))
        what = judge_all_pairs(session, sample_ids, campaign)
    elif pairing == "tournament":
        progress.start(total=planned_tournament(sample_ids))
        what = run_tournaments(session, sample_ids, campaign)
    elif pairing == "active":
        if campaign is None:
            raise ValueError("active pairing adds the most uncertain pairs to a campaign: choose one")
        candidates = Comparison.objects.filter(sample_id__in=sample_ids)
        progress.start(total=2 * candidates.exclude(campaign_items__campaign=campaign).count())
        what = select_active(session, candidates, campaign, limit or ACTIVE_DEFAULT_LIMIT)
    else:
        comparisons = _existing_scope(campaign, sample_ids, limit)
        progress.start(total=2 * comparisons.count())
        what = judge_existing(session, comparisons)
    tally = session.tally
    if tally.failed and not tally.stored and not tally.reused:
        raise EndpointError(f"every request failed: {tally.last_failure}")
    return f"{judge.name} ({pairing}): {what}; {tally.summary()}"


def start_judging(judge: Judge, pairing: str, samples: QuerySet | None = None, campaign: Campaign | None = None,
                  limit: int | None = None, user=None) -> Job:
    """Create the job and send it to a worker on the judging queue once the transaction commits."""
    from .tasks import judge_comparisons_task

    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    params = {"judge_id": judge.pk, "judge": judge.name, "pairing": pairing, "limit": limit,
              "campaign_id": campaign.pk if campaign else None, "campaign": campaign.name if campaign else None,
              "sample_ids": list(samples.values_list("pk", flat=True)) if samples is not None else None}
    job = create_job(JobKind.JUDGE, params, user=user)
    return enqueue(judge_comparisons_task, job)


# --- rankings ------------------------------------------------------------------------------------------


def _named_pairs(verdicts: QuerySet) -> QuerySet:
    return verdicts.order_by().values("comparison_id").annotate(
        ab=Max("preferred", filter=Q(order="ab", is_valid=True)),
        ba=Max("preferred", filter=Q(order="ba", is_valid=True)),
        gen_a=F("comparison__profile_a__generator__name"),
        gen_b=F("comparison__profile_b__generator__name"),
    ).order_by("comparison_id")


def judge_matches(judge: Judge, comparisons: QuerySet | Iterable[int]) -> list[stats.Match]:
    """The judge's combined verdicts as generator matches (generator x, generator y, score of x).

    Score 1 / 0 when both orders agree on a or b; 0.5 for a tie or an order flip ("no better one");
    invalid or half-asked comparisons and pairs of one generator are left out. In comparison id order,
    which Elo depends on. One query.
    """
    matches = []
    for row in _named_pairs(JudgeVerdict.objects.filter(judge=judge, comparison__in=comparisons)):
        combined = combine_canonical(row["ab"] or None, row["ba"] or None)
        if combined != INVALID and row["gen_a"] != row["gen_b"]:
            matches.append((row["gen_a"], row["gen_b"], _SCORES[combined]))
    return matches


def panel_matches(panel: JudgePanel, comparisons: QuerySet | Iterable[int]) -> list[stats.Match]:
    """Like ``judge_matches`` from the panel's consensus; "no consensus" is left out."""
    ids = list(comparisons.values_list("pk", flat=True)) if isinstance(comparisons, QuerySet) else list(comparisons)
    verdicts = panel_verdicts(panel, ids)
    names = {c: (ga, gb) for c, ga, gb in Comparison.objects.filter(pk__in=ids).order_by("pk").values_list(
        "pk", "profile_a__generator__name", "profile_b__generator__name")}
    return [(ga, gb, _SCORES[verdicts[c]]) for c, (ga, gb) in names.items()
            if verdicts[c] in _SCORES and ga != gb]


@dataclass(frozen=True)
class GeneratorRank:
    name: str
    elo: stats.Estimate
    bradley_terry: stats.Estimate
    wins: float  # ties and flips count half
    matches: int


def rank_generators(matches: Sequence[stats.Match], k: float = 16, n_boot: int = 1000,
                    seed: int = 0) -> list[GeneratorRank]:
    """Elo (K = ``k``) and Bradley–Terry with percentile-bootstrap 95% intervals, best first by Bradley–Terry."""
    if not matches:
        return []
    elo = stats.bootstrap_rankings(matches, lambda m: stats.elo(m, k=k), n_boot=n_boot, seed=seed)
    bt = stats.bootstrap_rankings(matches, "bradley_terry", n_boot=n_boot, seed=seed)
    wins: Counter = Counter()
    played: Counter = Counter()
    for x, y, score in matches:
        wins[x] += score
        wins[y] += 1 - score
        played[x] += 1
        played[y] += 1
    ranks = [GeneratorRank(name, elo[name], bt[name], wins[name], played[name]) for name in bt]
    return sorted(ranks, key=lambda r: -r.bradley_terry.value)


# --- judge figures -------------------------------------------------------------------------------------


def with_figures(judges: QuerySet) -> QuerySet:
    """Annotate judges with their verdict figures in the same query (admin list and detail).

    Order flips are counted on comparisons with both orders valid: a correlated subquery pairs each "ab"
    verdict with its "ba" partner, and canonical labels that differ are a flip.
    """
    partner = JudgeVerdict.objects.filter(comparison=OuterRef("comparison"), judge=OuterRef("judge"), order="ba",
                                          is_valid=True).values("preferred")[:1]
    pairs = (JudgeVerdict.objects.filter(judge=OuterRef("pk"), order="ab", is_valid=True)
             .annotate(partner=Subquery(partner)).filter(partner__isnull=False).order_by().values("judge"))
    first_shown = Q(verdicts__order="ab", verdicts__preferred="a") | Q(verdicts__order="ba", verdicts__preferred="b")
    return judges.annotate(
        n_verdicts=Count("verdicts"),
        n_invalid=Count("verdicts", filter=Q(verdicts__is_valid=False)),
        n_decisive=Count("verdicts", filter=Q(verdicts__preferred__in=["a", "b"])),
        n_first=Count("verdicts", filter=first_shown),
        prompt_tokens=Sum("verdicts__prompt_tokens"),
        completion_tokens=Sum("verdicts__completion_tokens"),
        mean_latency_ms=Avg("verdicts__latency_ms"),
        total_cost=Sum("verdicts__cost_usd"),
        n_pairs=Subquery(pairs.annotate(n=Count("pk")).values("n")),
        n_flips=Subquery(pairs.annotate(n=Count("pk", filter=~Q(partner=F("preferred")))).values("n")),
    )


@dataclass(frozen=True)
class JudgeFigures:
    verdicts: int
    invalid: int
    pairs: int  # comparisons with both orders valid
    flips: int
    decisive: int  # valid verdicts naming a profile (not tie)
    first: int  # of those, naming the profile shown first
    prompt_tokens: int
    completion_tokens: int
    mean_latency_ms: float | None
    cost_usd: Decimal

    @classmethod
    def of(cls, judge: Judge) -> "JudgeFigures":
        """From a judge annotated by ``with_figures``."""
        return cls(judge.n_verdicts, judge.n_invalid, judge.n_pairs or 0, judge.n_flips or 0, judge.n_decisive,
                   judge.n_first, judge.prompt_tokens or 0, judge.completion_tokens or 0, judge.mean_latency_ms,
                   judge.total_cost or Decimal(0))

    @property
    def invalid_rate(self) -> float | None:
        return self.invalid / self.verdicts if self.verdicts else None

    @property
    def flip_rate(self) -> float | None:
        return self.flips / self.pairs if self.pairs else None

    @property
    def first_position_rate(self) -> float | None:
        """0.5 is no position bias."""
        return self.first / self.decisive if self.decisive else None


def judge_figures(judge: Judge) -> JudgeFigures:
    return JudgeFigures.of(with_figures(Judge.objects.filter(pk=judge.pk)).get())
