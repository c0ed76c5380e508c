"""One judging run of one judge: ask both orders of each comparison, store every answer, count what happened.

A scoring judge is asked once per comparison (no order: its verdict is stored as order "ab").

A verdict already stored for (comparison, judge, order) is reused, never asked again. Unparseable output is
stored as an invalid verdict (kept for audit, never counted); a transient failure that outlived the client's
retries (429, 5xx, timeout) is not stored, so the next run asks it again.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from decimal import Decimal

from ..documents.models import TitleOnly
from ..models import Comparison, Judge, JudgeVerdict, Sample, SampleDocument
from ..prompts import PROMPTS, Messages
from .backends import Outcome, Result, ScoringRequest, TransientFailure, backend_for
from .verdicts import to_canonical

ORDERS = ("ab", "ba")


def abstracts_by_sample(sample_ids: Iterable[int]) -> dict[int, list[tuple[str, str]]]:
    """Each sample's (title, abstract) pairs in position order; one query. TitleOnly for a document without an
    abstract: a judge must never be shown a title as if it were the abstract."""
    rows = (SampleDocument.objects.filter(sample_id__in=set(sample_ids)).order_by("sample_id", "position")
            .values_list("sample_id", "sample__name", "document__title", "document__abstract"))
    abstracts: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for sample_id, name, title, text in rows:
        if not text:
            raise TitleOnly(f"sample {name!r} has title-only documents (no abstract): judging needs abstracts")
        abstracts[sample_id].append((title, text))
    return abstracts


def baseline_samples(sample_ids: Iterable[int]) -> dict[int, int]:
    """Each sample's baseline for a scoring judge: the sample with abstracts just before it by id (the first
    takes the one after it). Samples added later come after, so a sample's baseline, and with it its profiles'
    scores, stays the same as the database grows."""
    with_documents = (Sample.objects.with_abstracts().filter(sampledocument__isnull=False).distinct()
                      .order_by("pk").values_list("pk", flat=True))
    ids = list(with_documents)
    baselines = {}
    for sample_id in set(sample_ids):
        before = bisect.bisect_left(ids, sample_id)
        after = bisect.bisect_right(ids, sample_id)
        if before:
            baselines[sample_id] = ids[before - 1]
        elif after < len(ids):
            baselines[sample_id] = ids[after]
        else:
            raise ValueError("a scoring judge with baseline \"other\" needs a second sample with abstracts; "
                             "add one, or set the judge's baseline to \"none\"")
    return baselines


def scoring_requests(judge: Judge, comparisons: Sequence[Comparison]) -> list[ScoringRequest]:
    """What a scoring judge is asked: each comparison with its abstracts and its baseline's."""
    abstracts = abstracts_by_sample(c.sample_id for c in comparisons)
    baseline_of: dict[int, int] = {}
    if judge.score_baseline == "other":
        baseline_of = baseline_samples(abstracts)
        abstracts.update(abstracts_by_sample(set(baseline_of.values()) - set(abstracts)))
    return [ScoringRequest(c.sample_id, (c.profile_a_id, c.profile_a.raw_text), (c.profile_b_id, c.profile_b.raw_text),
                           abstracts[c.sample_id],
                           [abstracts[baseline_of[c.sample_id]]] if c.sample_id in baseline_of else [])
            for c in comparisons]


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
        """Judge both orders of each comparison (one, for a one-order judge), skipping what it already answered.

        ``comparisons`` need ``profile_a`` and ``profile_b`` loaded (select_related).
        """
        existing = set(JudgeVerdict.objects.filter(judge=self.judge, comparison__in=[c.pk for c in comparisons])
                       .values_list("comparison_id", "order"))
        wanted = [(c, order) for c in comparisons for order in self.judge.orders_for(c.pk)]
        # A one-order judge with a verdict in either order (an imported one, say) is not asked again.
        answered = {cid for cid, _ in existing} if self.judge.orders_asked == 1 else set()
        todo = [(c, order) for c, order in wanted if (c.pk, order) not in existing and c.pk not in answered]
        self.tally.reused += len(wanted) - len(todo)
        if todo:
            self._ask(todo)
        self.report(self.tally)

    def _requests(self, todo: list[tuple[Comparison, str]]) -> list:
        """The backend's input: a prompt per (comparison, order), or a scoring request per comparison."""
        if self.judge.orderless:
            return scoring_requests(self.judge, [c for c, _ in todo])
        abstracts = abstracts_by_sample(c.sample_id for c, _ in todo)
        return [judge_messages(self.judge, abstracts[c.sample_id], c, order) for c, order in todo]

    def _ask(self, todo: list[tuple[Comparison, str]]) -> None:
        requests = self._requests(todo)
        rows: list[JudgeVerdict] = []
        try:
            with closing(self.backend.run(requests)) as results:
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
            self.report(self.tally)  # may raise Cancelled: everything answered so far is stored


