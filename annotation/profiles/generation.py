"""Candidate profile generation: plan what is missing, run a backend in batches, store every candidate.

Raw output is always stored; the parsed profile is validated, invalid ones are kept with their reason and
never paired, and near-duplicates of one sample are marked. A sample's candidates are stored in one
transaction, so a failure or a cancel never leaves a sample half-written; re-running fills only what is
missing.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import Avg

from ..jobs.lifecycle import JobProgress
from ..llm_client import chat, make_client
from ..documents.models import TitleOnly
from ..models import Backend, Generator, Job, Profile, Sample
from .store import mark_near_duplicates, parsed_fields
from ..prompts import EXTRACTION_PROMPT_VERSION, build_extraction_messages

# Samples per local `generate` call (each with k candidates): big enough to keep the CPU busy.
LOCAL_BATCH_SAMPLES = 4
# The job row hears the tokens a batch has written at most this often: its page and ETA move during a batch.
LIVE_EVERY_S = 2.0
# A batch is never shown as more than this share done before its candidates are stored.
LIVE_AT_MOST = 0.95


@dataclass
class Output:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: int
    truncated: bool = False


def conversation_for(sample: Sample) -> list[dict]:
    documents = list(sample.ordered_documents())
    if any(d.title_only for d in documents):
        raise TitleOnly(f"sample {sample.name!r} has title-only documents (no abstract): generation needs abstracts")
    return build_extraction_messages([(d.title, d.abstract) for d in documents])


class LocalBackend:
    """A transformers model in this worker process, loaded once and kept (training.ml.models.get_model)."""

    batch_samples = LOCAL_BATCH_SAMPLES

    def __init__(self, generator: Generator):
        from training.ml.generate import DecodingSettings
        from training.ml.models import get_model

        self.model, self.tokenizer = get_model(generator.model, settings.MODEL_CACHE_DIR,
                                               adapter_path=generator.adapter_path or None)
        self.generator = generator
        self.settings = DecodingSettings(
            temperature=generator.temperature, top_p=generator.top_p,
            repetition_penalty=generator.repetition_penalty, max_new_tokens=generator.max_new_tokens,
            num_beams=generator.num_beams, num_beam_groups=generator.num_beam_groups,
            diversity_penalty=generator.diversity_penalty, num_candidates=1,
            format_guide=generator.format_guide and generator.num_beams == 1,
        )

    def generate(self, conversations: list[list[dict]], k: int, on_tokens=None) -> list[list[Output]]:
        from training.ml.generate import generate_batch

        self.settings.num_candidates = k
        started = time.monotonic()
        results = generate_batch(self.model, self.tokenizer, conversations, self.settings,
                                 batch_size=len(conversations), on_tokens=on_tokens)
        # One generate call made them all: each candidate is charged an equal share of its wall time,
        # so summed latencies give the real time and tokens / latency the real throughput.
        share = int((time.monotonic() - started) * 1000 / max(1, sum(len(r) for r in results)))
        return [[Output(c.text, c.prompt_tokens, c.completion_tokens, share, c.finish_reason == "length")
                 for c in cands] for cands in results]


class OpenAIBackend:
    """Any OpenAI-compatible endpoint; k separate requests per sample, `concurrency` at a time."""

    def __init__(self, generator: Generator):
        self.generator = generator
        self.client = make_client(generator.base_url, generator.api_key_env)
        self.batch_samples = max(1, generator.concurrency)

    def _one(self, conversation: list[dict]) -> Output:
        g = self.generator
        result = chat(self.client, g.model, conversation, temperature=g.temperature, top_p=g.top_p,
                      max_tokens=g.max_new_tokens)
        return Output(result.text, result.prompt_tokens, result.completion_tokens, result.latency_ms, result.truncated)

    def generate(self, conversations: list[list[dict]], k: int, on_tokens=None) -> list[list[Output]]:
        # An endpoint's answers come whole: the job moves as each batch of them is stored.
        with ThreadPoolExecutor(max_workers=self.generator.concurrency) as pool:
            futures = [[pool.submit(self._one, c) for _ in range(k)] for c in conversations]
            return [[f.result() for f in row] for row in futures]


def backend_for(generator: Generator):
    if generator.backend == Backend.LOCAL:
        return LocalBackend(generator)
    if generator.backend == Backend.OPENAI:
        return OpenAIBackend(generator)
    raise ValueError(f"generator {generator.name!r} holds imported profiles and cannot generate")


def missing_indexes(generator: Generator, sample: Sample, k: int) -> list[int]:
    have = set(Profile.objects.filter(generator=generator, sample=sample).values_list("candidate_index", flat=True))
    return [i for i in range(k) if i not in have]


@transaction.atomic
def store_candidates(generator: Generator, sample: Sample, indexes: list[int], outputs: list[Output]) -> int:
    decoding = generator.decoding_settings()
    for index, output in zip(indexes, outputs):
        Profile.objects.create(
            sample=sample, generator=generator, candidate_index=index, raw_text=output.text,
            prompt_version=EXTRACTION_PROMPT_VERSION, settings=decoding, prompt_tokens=output.prompt_tokens,
            completion_tokens=output.completion_tokens, latency_ms=output.latency_ms,
            **parsed_fields(output.text, cut_off_at=generator.max_new_tokens if output.truncated else None),
        )
    mark_near_duplicates(sample.pk)
    return sum(o.completion_tokens or 0 for o in outputs[: len(indexes)])


def in_given_order(sample_ids: list[int]) -> list[Sample]:
    """The samples in the order the job lists them: a caller (the demo) puts first what it wants soonest."""
    by_id = Sample.objects.prefetch_related("documents").in_bulk(sample_ids)
    return [by_id[pk] for pk in sample_ids if pk in by_id]


def batches(todo: list, size: int) -> list[list]:
    """The first sample alone, then ``size`` at a time: its candidates are stored (and can be judged and
    reviewed) after one sample's generation instead of a whole batch's."""
    return [todo[:1]] + [todo[start:start + size] for start in range(1, len(todo), size)] if todo else []


def run_generation(job: Job, progress: JobProgress) -> str:
    generator = Generator.objects.get(pk=job.params["generator_id"])
    k = job.params.get("candidates") or generator.candidates
    todo = [(s, missing) for s in in_given_order(job.params["sample_ids"])
            if (missing := missing_indexes(generator, s, k))]
    progress.start(total=len(todo))
    if not todo:
        return "nothing missing: every sample already has its candidates"
    backend = backend_for(generator)
    done = tokens = 0
    for chunk in batches(todo, backend.batch_samples):
        k_chunk = max(len(m) for _, m in chunk)
        live = BatchProgress(progress, done, len(todo), len(chunk), tokens,
                             expected_tokens=len(chunk) * k_chunk * tokens_per_candidate(generator))
        outputs = backend.generate([conversation_for(s) for s, _ in chunk], k_chunk, on_tokens=live)
        for (sample, missing), candidates in zip(chunk, outputs):
            tokens += store_candidates(generator, sample, missing, candidates)
        done += len(chunk)
        progress.advance(done, f"{done} of {len(todo)} samples", tokens=tokens)
    return summary(generator, [s.pk for s, _ in todo])


def tokens_per_candidate(generator: Generator) -> float:
    """What one candidate is expected to cost: the mean of the generator's stored ones, else its token limit."""
    mean = Profile.objects.filter(generator=generator, completion_tokens__isnull=False).aggregate(
        mean=Avg("completion_tokens"))["mean"]
    return float(mean or generator.max_new_tokens)


class BatchProgress:
    """Saves on the job what a batch has written while it decodes, at most every LIVE_EVERY_S: the tokens (so
    tokens/s), and the samples done as a fraction (so the ETA), the batch's share guessed from its tokens."""

    def __init__(self, progress: JobProgress, done: int, total: int, samples: int, tokens_before: int,
                 expected_tokens: float, clock=None):
        self.progress, self.done, self.total, self.samples = progress, done, total, samples
        self.tokens_before, self.expected = tokens_before, max(1.0, expected_tokens)
        self.clock = clock or time.monotonic
        self.last = self.clock()

    def __call__(self, written: int) -> None:
        if self.clock() - self.last < LIVE_EVERY_S:
            return
        self.last = self.clock()
        share = min(LIVE_AT_MOST, written / self.expected)
        self.progress.within(self.done + share * self.samples,
                             f"{self.done} of {self.total} samples · {written} tokens written for the next "
                             f"{self.samples}", tokens=self.tokens_before + written)


def summary(generator: Generator, sample_ids: list[int]) -> str:
    profiles = Profile.objects.filter(generator=generator, sample_id__in=sample_ids)
    total, valid = profiles.count(), profiles.filter(is_valid=True).count()
    return f"{total} profiles for {len(sample_ids)} samples, {valid} valid ({100 * valid / max(1, total):.0f}%)"

