"""DPO dataset export: labels chosen by policy, written as a frozen snapshot in TRL's formats.

    python manage.py export_dpo --policy expert --format jsonl --out exports/v1

The export streams: it walks the samples in batches, reads each batch's comparisons, votes, verdicts,
profiles and documents in a few queries, renders each sample's prompt once (all its pairs share it), and
writes rows as it goes, so memory stays flat whatever the size. The snapshot is written into a temporary
folder and renamed into place, its files are hashed and made read-only, and an export that succeeded is
never written again: later votes change the next export, not this one.

Rows are TRL's conversational preference format plus provenance columns, which TRL ignores (its
DPOTrainer keeps only the columns it tokenizes)::

    {"prompt": [{"role": "system", ...}, {"role": "user", ...}],   # the exact extraction prompt
     "chosen": [{"role": "assistant", "content": "Domain: ..."}],
     "rejected": [{"role": "assistant", "content": "Domain: ..."}],
     "comparison_id": 7, "sample": "...", "chosen_profile_id": 3, "rejected_profile_id": 4,
     "decision": "a", "source": "experts", "agreement": 1.0, "votes": "[...]", "verdicts": "[...]",
     "policy": "expert"}

With ``ties_as_kto`` the whole export is TRL's unpaired (KTO) format instead: a decided pair gives a
desirable and an undesirable row, and a tie or "both bad" gives two undesirable rows::

    {"prompt": [...], "completion": [{"role": "assistant", ...}], "label": false, "profile_id": 4, ...}

``votes`` and ``verdicts`` are JSON text rather than nested columns so the schema is the same in every
row, file and format (nested lists that are sometimes empty make JSON loaders guess different types).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from pathlib import Path
from typing import Protocol

from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import Count, Exists, Max, OuterRef, Q
from django.utils import timezone
from django.utils.text import slugify

from . import agreement
from .models import (
    DatasetExport, Document, ExportFormat, ExportPolicy, Job, JobKind, JobStatus, Judge, JudgeVerdict, Profile, Sample,
    SampleDocument, Split,
)
from .prompts import EXTRACTION_PROMPT_VERSION, build_extraction_messages
from .verdicts import INCONSISTENT, INVALID, NO_CONSENSUS, combine_canonical, panel_consensus

# Samples per batch: a few thousand rows, a handful of queries each.
BATCH_SAMPLES = 500
ROW_GROUP_ROWS = 5_000  # Parquet row group size: rows buffered before a write
CHUNK_CHARS = 8_000_000  # JSONL: text buffered before it goes to the writing thread
PROGRESS_EVERY_S = 1.0
SPLITS = ("train", "test")
CARD_BOOT = 200  # bootstrap resamples for the card's intervals: enough for two decimals


class ExportError(Exception):
    """An export that cannot be made as asked (the message says why)."""


class SnapshotFrozen(ExportError):
    pass


class Progress(Protocol):
    """What ``export_dataset`` reports to: annotation.jobs.JobProgress, or the command's progress bar."""

    def start(self, total: int | None = None) -> None: ...

    def advance(self, done: int, message: str = "") -> None: ...


# --- deciding each comparison ------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    label: str | None  # "a", "b", "tie", "both_bad"; None when dropped
    source: str = ""  # "experts" or "judges"
    agreement: float = 0.0  # share of the deciding votes (experts, or judges) that gave this label
    dropped: str = ""  # why there is no label


@dataclass(frozen=True)
class JudgeSelection:
    judge_ids: frozenset[int] | None  # None: every judge
    threshold: float  # share of valid judge verdicts that must agree (1.0: unanimous)


VoteTuple = tuple[int, int, str]  # (vote id, expert id, canonical choice)
OrderLabels = dict[str, str | None]  # {"ab": label or None, "ba": ...}
# One comparison's verdicts: (judge id, ab label, ba label, verdict rows) per judge, None for invalid or missing.
VerdictKey = tuple[tuple[int, str | None, str | None, int], ...]


def expert_decision(votes: list[VoteTuple]) -> Decision:
    if not votes:
        return Decision(None, dropped="no_votes")
    choices = [choice for _, _, choice in votes]
    label = agreement.expert_majority(choices)
    if label is None:
        # Experts who saw the pair and split are a hard case, not training data; no judge breaks the tie.
        return Decision(None, dropped="experts_split")
    return Decision(label, "experts", choices.count(label) / len(choices))


def judge_decision(verdicts: dict[int, OrderLabels], selection: JudgeSelection) -> Decision:
    combined = [
        combine_canonical(orders.get("ab"), orders.get("ba"))
        for judge_id, orders in verdicts.items()
        if selection.judge_ids is None or judge_id in selection.judge_ids
    ]
    valid = [label for label in combined if label != INVALID]
    if not valid:
        return Decision(None, dropped="no_valid_verdicts")
    label = panel_consensus(valid, selection.threshold)
    if label == NO_CONSENSUS:
        return Decision(None, dropped="no_consensus")
    if label == INCONSISTENT:
        return Decision(None, dropped="inconsistent")  # flipped with the order: not a win, not a label
    return Decision(label, "judges", valid.count(label) / len(valid))


# --- reading in batches ------------------------------------------------------------------------------


@dataclass
class SampleInfo:
    name: str
    name_json: str
    prompt: list[dict[str, str]]
    prompt_json: str
    split: str  # "train" or "test" in this export


@dataclass
class ProfileInfo:
    text: str
    is_valid: bool
    _json: str = ""

    @property
    def as_messages_json(self) -> str:
        if not self._json:
            # The same text json.dumps writes for [{"role": "assistant", "content": text}], without its overhead.
            self._json = f'[{{"role": "assistant", "content": {encode_basestring(self.text)}}}]'
        return self._json

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": "assistant", "content": self.text}]


@dataclass
class Batch:
    samples: dict[int, SampleInfo]
    comparisons: list[tuple[int, int, int, int]]  # (id, sample id, profile a id, profile b id)
    votes: dict[int, list[VoteTuple]]
    verdicts: dict[int, VerdictKey]
    profiles: dict[int, ProfileInfo]


# Where an export reads from: the campaign's comparisons and votes, or all of them.
Source = agreement.Scope


def sample_batches(source: Source, size: int | None = None) -> Iterator[list[int]]:
    size = size or BATCH_SAMPLES
    has_comparisons = Exists(source.comparisons().filter(sample_id=OuterRef("pk")))
    ids = Sample.objects.filter(has_comparisons).order_by("id").values_list("id", flat=True)
    batch: list[int] = []
    for sample_id in ids.iterator(chunk_size=size * 4):
        batch.append(sample_id)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_batches(source: Source, test_fraction: float) -> Iterator[Batch]:
    """The batches in order. Outside a transaction a thread reads ahead on its own connection, so the
    database works on the next batch while this thread writes the current one. Inside a transaction (an
    admin action's, a test's) another connection would not see its rows, so batches are read in turn."""
    if connection.in_atomic_block:
        return (read_batch(source, ids, test_fraction) for ids in sample_batches(source))
    return _read_ahead(source, test_fraction)


_DONE = object()


def _read_ahead(source: Source, test_fraction: float) -> Iterator[Batch]:
    batches: queue.Queue = queue.Queue(maxsize=2)  # at most two batches wait in memory
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                batches.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for ids in sample_batches(source):
                if not offer(read_batch(source, ids, test_fraction)):
                    return
            offer(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            offer(exc)
        finally:
            connections.close_all()  # this thread's connections only: they are per thread

    reader = threading.Thread(target=read, name="export-reader", daemon=True)
    reader.start()
    try:
        while (item := batches.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


def read_batch(source: Source, sample_ids: list[int], test_fraction: float) -> Batch:
    in_batch = _in_samples(sample_ids)
    return Batch(
        samples=_samples(sample_ids, in_batch, test_fraction),
        comparisons=list(
            source.comparisons().filter(in_batch).order_by("sample_id", "id")
            .values_list("id", "sample_id", "profile_a_id", "profile_b_id")
        ),
        votes=_votes(source, _in_samples(sample_ids, "comparison__")),
        verdicts=_verdicts(_in_samples(sample_ids, "comparison__")),
        profiles={
            pid: ProfileInfo(text, valid)
            for pid, text, valid in Profile.objects.filter(in_batch).values_list("id", "raw_text", "is_valid")
        },
    )


def _in_samples(sample_ids: list[int], prefix: str = "") -> Q:
    return _among(f"{prefix}sample_id", sample_ids)


def _among(field: str, ids: list[int]) -> Q:
    """Rows whose ``field`` is one of the sorted ``ids``. Consecutive ids (the usual case: batches walk
    the samples in id order) become one range, which costs the database and the driver far less than
    hundreds of parameters; the few extra rows a range may hold are ignored by the caller."""
    if ids and ids[-1] - ids[0] < 2 * len(ids):
        return Q(**{f"{field}__gte": ids[0], f"{field}__lte": ids[-1]})
    return Q(**{f"{field}__in": ids})


def _samples(sample_ids: list[int], in_batch: Q, test_fraction: float) -> dict[int, SampleInfo]:
    places = list(SampleDocument.objects.filter(in_batch).order_by("sample_id", "position")
                  .values_list("sample_id", "document_id"))
    # Documents by primary key in a second query: joined, the planner may scan the whole document table.
    wanted = sorted({d for _, d in places})
    texts = {pk: (title, text) for pk, title, text in
             Document.objects.filter(_among("pk", wanted)).values_list("pk", "title", "abstract")}
    abstracts: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for sample_id, document_id in places:
        abstracts[sample_id].append(texts[document_id])
    result = {}
    for sample_id, name, split in Sample.objects.filter(_among("id", sample_ids)).values_list("id", "name", "split"):
        if sample_id not in abstracts:
            continue  # in the id range but not in the batch, or without abstracts (its pairs are dropped)
        prompt = build_extraction_messages(abstracts[sample_id])
        prompt_json = json.dumps(prompt, ensure_ascii=False)
        result[sample_id] = SampleInfo(name, json.dumps(name, ensure_ascii=False), prompt, prompt_json,
                                       _split_of(split, prompt_json, test_fraction))
    return result


def _split_of(sample_split: str, prompt_json: str, test_fraction: float) -> str:
    """Held-out samples are never trained on; the others go to test by a stable hash of their prompt.

    Hashing the prompt (not the sample id) keeps every export's split the same for a sample, and puts two
    samples with the very same abstracts into the same split, so no prompt leaks across.
    """
    if sample_split == Split.HELDOUT:
        return "test"
    bucket = int.from_bytes(hashlib.sha256(prompt_json.encode()).digest()[:8], "big") / 2**64
    return "test" if bucket < test_fraction else "train"


def _votes(source: Source, in_batch: Q) -> dict[int, list[VoteTuple]]:
    votes: dict[int, list[VoteTuple]] = defaultdict(list)
    rows = source.votes().filter(in_batch).order_by("comparison_id", "id")
    for vote_id, comparison_id, expert_id, choice in rows.values_list("id", "comparison_id", "expert_id", "choice"):
        votes[comparison_id].append((vote_id, expert_id, choice))
    return votes


def _verdicts(in_batch: Q) -> dict[int, VerdictKey]:
    """Each comparison's verdicts, one (judge, ab, ba, rows) entry per judge, grouped by the database."""
    grouped: dict[int, list] = defaultdict(list)
    per_judge = (
        JudgeVerdict.objects.filter(in_batch).order_by("comparison_id", "judge_id")
        .values("comparison_id", "judge_id")
        .annotate(ab=Max("preferred", filter=Q(order="ab", is_valid=True)),
                  ba=Max("preferred", filter=Q(order="ba", is_valid=True)), n=Count("id"))
        .values_list("comparison_id", "judge_id", "ab", "ba", "n")
    )
    for cid, judge_id, ab, ba, n in per_judge:
        grouped[cid].append((judge_id, ab, ba, n))
    return {cid: tuple(entries) for cid, entries in grouped.items()}


# --- rows --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    sample: SampleInfo
    comparison_id: int
    decision: Decision
    votes_json: str  # the provenance columns' text, and that text encoded as a JSON string
    votes_quoted: str
    verdicts_json: str
    verdicts_quoted: str
    # Paired (DPO) rows:
    chosen: tuple[int, ProfileInfo] | None = None
    rejected: tuple[int, ProfileInfo] | None = None
    # Unpaired (KTO) rows:
    completion: tuple[int, ProfileInfo] | None = None
    desirable: bool = False


class Labeller:
    """Decides comparisons by policy. Comparisons with the same verdicts get the same judge decision and
    the same verdicts column, so both are worked out once per distinct set of verdicts (a handful of
    combinations, however many rows), not once per row."""

    CACHE_LIMIT = 100_000

    def __init__(self, policy: str, selection: JudgeSelection, judge_names: dict[int, str]):
        self.policy, self.selection, self.judge_names = policy, selection, judge_names
        self._by_verdicts: dict[VerdictKey, tuple[Decision, str, str]] = {}

    def decide(self, votes: list[VoteTuple], verdicts: VerdictKey) -> Decision:
        if self.policy == ExportPolicy.EXPERT or (self.policy == ExportPolicy.EXPERT_OVERRIDES and votes):
            return expert_decision(votes)
        return self.verdicts(verdicts)[0]

    def verdicts(self, key: VerdictKey) -> tuple[Decision, str, str]:
        """(the judges' decision, the verdicts column, that column as a JSON string)."""
        cached = self._by_verdicts.get(key)
        if cached is None:
            if len(self._by_verdicts) >= self.CACHE_LIMIT:
                self._by_verdicts.clear()
            orders = {jid: {"ab": ab, "ba": ba} for jid, ab, ba, _ in key}
            text = json.dumps([
                {"judge": self.judge_names.get(jid, str(jid)), "ab": ab, "ba": ba, "verdict": combine_canonical(ab, ba)}
                for jid, ab, ba, _ in key
            ], ensure_ascii=False)
            cached = self._by_verdicts[key] = (judge_decision(orders, self.selection), text,
                                               json.dumps(text, ensure_ascii=False))
        return cached


NO_VOTES = ("[]", '"[]"')


def _votes_columns(votes: list[VoteTuple]) -> tuple[str, str]:
    if not votes:
        return NO_VOTES
    text = json.dumps([{"vote_id": vid, "expert_id": expert, "choice": choice} for vid, expert, choice in votes])
    return text, json.dumps(text)


@dataclass
class Tally:
    rows: Counter = field(default_factory=Counter)  # split → rows written
    samples: Counter = field(default_factory=Counter)  # split → samples with rows
    _last_sample: dict = field(default_factory=dict)  # split → the sample of its last row
    comparisons: int = 0
    labels: Counter = field(default_factory=Counter)  # decided label → comparisons
    sources: Counter = field(default_factory=Counter)  # experts / judges → comparisons used
    dropped: Counter = field(default_factory=Counter)  # reason → comparisons (or rows, for duplicates)
    # How often each set of verdicts occurred: the judges' figures for the card are worked out from it.
    verdicts: Counter = field(default_factory=Counter)

    def count_row(self, row: Row) -> None:
        split = row.sample.split
        self.rows[split] += 1
        # Rows come sample by sample, so a new sample shows as a change: no set of every sample seen.
        if self._last_sample.get(split) is not row.sample:
            self._last_sample[split] = row.sample
            self.samples[split] += 1

    def as_counts(self) -> dict:
        return {
            "train": self.rows["train"], "test": self.rows["test"],
            "train_samples": self.samples["train"], "test_samples": self.samples["test"],
            "comparisons": self.comparisons, "labels": dict(self.labels), "sources": dict(self.sources),
            "dropped": dict(sorted(self.dropped.items())),
        }

    def judge_tallies(self, judge_names: dict[int, str]) -> dict[int, agreement.JudgeTally]:
        """Each judge's flips, position bias and invalid output over every comparison the export read."""
        per_judge: Counter = Counter()
        for key, count in self.verdicts.items():
            for entry in key:
                per_judge[entry] += count
        tallies: dict[int, agreement.JudgeTally] = {}
        for (jid, ab, ba, n), count in per_judge.items():
            one = agreement.JudgeTally(judge_names.get(jid, str(jid)))
            agreement.tally_verdict(one, ab, ba, n, n - (ab is not None) - (ba is not None))
            total = tallies.setdefault(jid, agreement.JudgeTally(one.name))
            for name in ("verdicts", "invalid", "comparisons", "both_orders_valid", "flips", "decisive",
                         "first_position"):
                setattr(total, name, getattr(total, name) + count * getattr(one, name))
        return tallies


def batch_rows(batch: Batch, labeller: Labeller, kto: bool, tally: Tally) -> Iterator[Row]:
    """The batch's rows in sample order, duplicates within a prompt removed."""
    seen: set = set()
    current_sample = None
    for cid, sample_id, a_id, b_id in batch.comparisons:
        if sample_id != current_sample:
            seen, current_sample = set(), sample_id
        tally.comparisons += 1
        votes, verdicts = batch.votes.get(cid, []), batch.verdicts.get(cid, ())
        tally.verdicts[verdicts] += 1
        decision = labeller.decide(votes, verdicts)
        if decision.label is None or sample_id not in batch.samples:
            tally.dropped[decision.dropped or "sample_without_abstracts"] += 1
            continue
        rows = _rows_for(batch, cid, sample_id, (a_id, b_id), decision, kto, _votes_columns(votes),
                         labeller.verdicts(verdicts)[1:])
        if not rows:
            tally.dropped["invalid_chosen_profile" if decision.label in ("a", "b") else decision.label] += 1
            continue
        tally.labels[decision.label] += 1
        tally.sources[decision.source] += 1
        for row in rows:
            key = _dedup_key(row)
            if key in seen:
                tally.dropped["duplicate_rows"] += 1
                continue
            seen.add(key)
            yield row


def _rows_for(batch: Batch, cid: int, sample_id: int, pair: tuple[int, int], decision: Decision, kto: bool,
              votes: tuple[str, str], verdicts: tuple[str, str]) -> list[Row]:
    profiles = [(pid, batch.profiles[pid]) for pid in pair]
    if decision.label in ("a", "b"):
        chosen, rejected = profiles if decision.label == "a" else profiles[::-1]
        if not chosen[1].is_valid:
            return []  # an invalid profile must never be taught as the better answer
    elif not kto:
        return []
    common = dict(sample=batch.samples[sample_id], comparison_id=cid, decision=decision, votes_json=votes[0],
                  votes_quoted=votes[1], verdicts_json=verdicts[0], verdicts_quoted=verdicts[1])
    if not kto:
        return [Row(**common, chosen=chosen, rejected=rejected)]
    if decision.label in ("a", "b"):
        return [Row(**common, completion=chosen, desirable=True), Row(**common, completion=rejected, desirable=False)]
    return [Row(**common, completion=profile, desirable=False) for profile in profiles]


def _dedup_key(row: Row) -> tuple:
    if row.completion is not None:
        return (row.completion[1].text, row.desirable)
    return (row.chosen[1].text, row.rejected[1].text)


# --- writers -----------------------------------------------------------------------------------------


class JsonlWriter:
    """One JSON line per row. A thread hashes and writes the bytes (both release the GIL) while the main
    thread builds the next batch, so the files are hashed as they are written, with no second pass."""

    suffix = "jsonl"

    def __init__(self, folder: Path, policy: str):
        self.files = {split: (folder / f"{split}.jsonl").open("wb") for split in SPLITS}
        self.hashes = {split: hashlib.sha256() for split in SPLITS}
        self.pending: dict[str, list[str]] = {split: [] for split in SPLITS}
        self.pending_chars = {split: 0 for split in SPLITS}
        self.policy_json = json.dumps(policy)
        self.bytes = 0
        self._queue: queue.Queue = queue.Queue(maxsize=2)  # bounded: at most a few chunks wait in memory
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="export-writer", daemon=True)
        self._thread.start()

    def write(self, row: Row) -> None:
        split = row.sample.split
        line = self._line(row)
        self.pending[split].append(line)
        self.pending_chars[split] += len(line)
        if self.pending_chars[split] >= CHUNK_CHARS:
            self._send(split)

    def flush(self) -> None:
        for split in SPLITS:
            self._send(split)

    def _send(self, split: str) -> None:
        lines = self.pending[split]
        if lines:
            data = "".join(lines).encode()
            self.bytes += len(data)
            self._put((split, data))
            lines.clear()
            self.pending_chars[split] = 0

    def close(self) -> dict[str, str]:
        self.flush()
        self._put(None)
        self._thread.join()
        for handle in self.files.values():
            handle.close()
        if self._error:
            raise self._error
        return {f"{split}.jsonl": digest.hexdigest() for split, digest in self.hashes.items()}

    def abort(self) -> None:
        self._put(None)
        self._thread.join()
        for handle in self.files.values():
            handle.close()

    def _put(self, item) -> None:
        if self._error:
            raise self._error
        self._queue.put(item)

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error:
                continue  # keep taking items so the producer never blocks on a dead writer
            try:
                split, data = item
                self.hashes[split].update(data)
                self.files[split].write(data)
            except BaseException as exc:  # reported to the producer on its next put or at close
                self._error = exc

    def _line(self, row: Row) -> str:
        d = row.decision
        provenance = (
            f'"comparison_id":{row.comparison_id},"sample":{row.sample.name_json},'
            f'"decision":"{d.label}","source":"{d.source}","agreement":{d.agreement!r},'
            f'"votes":{row.votes_quoted},"verdicts":{row.verdicts_quoted},'
            f'"policy":{self.policy_json}}}\n'
        )
        if row.completion is not None:
            pid, profile = row.completion
            return (f'{{"prompt":{row.sample.prompt_json},"completion":{profile.as_messages_json},'
                    f'"label":{"true" if row.desirable else "false"},"profile_id":{pid},' + provenance)
        return (f'{{"prompt":{row.sample.prompt_json},"chosen":{row.chosen[1].as_messages_json},'
                f'"rejected":{row.rejected[1].as_messages_json},"chosen_profile_id":{row.chosen[0]},'
                f'"rejected_profile_id":{row.rejected[0]},' + provenance)


def _arrow_schema(kto: bool):
    import pyarrow as pa

    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    head = ([("prompt", messages), ("completion", messages), ("label", pa.bool_()), ("profile_id", pa.int64())]
            if kto else
            [("prompt", messages), ("chosen", messages), ("rejected", messages), ("chosen_profile_id", pa.int64()),
             ("rejected_profile_id", pa.int64())])
    tail = [("comparison_id", pa.int64()), ("sample", pa.string()), ("decision", pa.string()),
            ("source", pa.string()), ("agreement", pa.float64()), ("votes", pa.string()), ("verdicts", pa.string()),
            ("policy", pa.string())]
    return pa.schema(head + tail)


class ParquetWriter:
    """Rows buffered per split and written as Parquet row groups."""

    suffix = "parquet"

    def __init__(self, folder: Path, policy: str, kto: bool):
        import pyarrow.parquet as pq

        self.schema = _arrow_schema(kto)
        self.kto = kto
        self.policy = policy
        self.writers = {split: pq.ParquetWriter(folder / f"{split}.parquet", self.schema, compression="zstd")
                        for split in SPLITS}
        self.pending: dict[str, list[dict]] = {split: [] for split in SPLITS}
        self.folder = folder
        self.bytes = 0

    def write(self, row: Row) -> None:
        pending = self.pending[row.sample.split]
        pending.append(self._record(row))
        if len(pending) >= ROW_GROUP_ROWS:
            self._write_group(row.sample.split)

    def flush(self) -> None:
        pass  # row groups are written when full; a half-full group waits for more rows

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def close(self) -> dict[str, str]:
        for split, writer in self.writers.items():
            self._write_group(split)
            writer.close()
            self.bytes += (self.folder / f"{split}.parquet").stat().st_size
        return {}

    def _write_group(self, split: str) -> None:
        import pyarrow as pa

        if self.pending[split]:
            self.writers[split].write_table(pa.Table.from_pylist(self.pending[split], schema=self.schema))
            self.pending[split] = []

    def _record(self, row: Row) -> dict:
        d = row.decision
        record = {"prompt": row.sample.prompt}
        if self.kto:
            record.update(completion=row.completion[1].as_messages(), label=row.desirable, profile_id=row.completion[0])
        else:
            record.update(chosen=row.chosen[1].as_messages(), rejected=row.rejected[1].as_messages(),
                          chosen_profile_id=row.chosen[0], rejected_profile_id=row.rejected[0])
        record.update(comparison_id=row.comparison_id, sample=row.sample.name, decision=d.label, source=d.source,
                      agreement=d.agreement, votes=row.votes_json, verdicts=row.verdicts_json, policy=self.policy)
        return record


class HfWriter(ParquetWriter):
    """A `datasets` folder (``load_from_disk``): Parquet first, then converted split by split."""

    def __init__(self, folder: Path, policy: str, kto: bool):
        super().__init__(folder, policy, kto)
        self.rows = {split: 0 for split in SPLITS}

    def write(self, row: Row) -> None:
        super().write(row)
        self.rows[row.sample.split] += 1

    def close(self) -> dict[str, str]:
        from datasets import DatasetDict

        super().close()
        cache = self.folder / ".cache"
        parquet = {split: self.folder / f"{split}.parquet" for split in SPLITS}
        splits = DatasetDict({s: self._dataset(p, self.rows[s], cache) for s, p in parquet.items()})
        # An empty split would be saved as zero shards, which load_from_disk cannot read back.
        splits.save_to_disk(str(self.folder), num_shards={s: 1 for s, n in self.rows.items() if n == 0})
        del splits
        shutil.rmtree(cache, ignore_errors=True)
        for path in parquet.values():
            path.unlink()
        self.bytes = sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())
        return {}

    def _dataset(self, parquet: Path, rows: int, cache: Path):
        from datasets import Dataset, Features

        if rows == 0:  # from_parquet refuses an empty file
            return Dataset.from_dict({name: [] for name in self.schema.names},
                                     features=Features.from_arrow_schema(self.schema))
        # Read in batches into memory-mapped Arrow files: the rows never sit in memory all at once.
        return Dataset.from_parquet(str(parquet), cache_dir=str(cache))


def _writer(export: DatasetExport, folder: Path):
    if export.format == ExportFormat.JSONL:
        return JsonlWriter(folder, export.policy)
    if export.format == ExportFormat.PARQUET:
        return ParquetWriter(folder, export.policy, export.ties_as_kto)
    return HfWriter(folder, export.policy, export.ties_as_kto)


# --- the export --------------------------------------------------------------------------------------


@dataclass
class Result:
    counts: dict
    seconds: float
    bytes: int

    def summary(self) -> str:
        c = self.counts
        return (f"{c['train']} train and {c['test']} test rows from {c['comparisons']} comparisons "
                f"in {self.seconds:.1f} s")


def export_dataset(export: DatasetExport, progress: Progress | None = None,
                   out_dir: Path | str | None = None) -> Result:
    """Write the export's snapshot and record it; a snapshot that was written is never written again."""
    export.refresh_from_db(fields=["status", "path"])
    if export.status == JobStatus.SUCCEEDED or export.path:
        raise SnapshotFrozen(f"export {export.name!r} is a frozen snapshot ({export.path}); make a new export")
    target = Path(out_dir) if out_dir else Path(settings.MEDIA_ROOT) / "exports" / f"{export.pk}-{slugify(export.name)}"
    _set_status(export, JobStatus.RUNNING)
    started = time.monotonic()
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    try:
        _check_target(target)
        counts, card, nbytes = _write_snapshot(export, tmp, progress)
        sha256 = _seal(tmp, counts)
        if target.exists():
            target.rmdir()  # checked empty above
        os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _set_status(export, _status_for(exc), error=f"{type(exc).__name__}: {exc}")
        raise
    _record(export, target, sha256, counts, card)
    return Result(counts, time.monotonic() - started, nbytes)


def _check_target(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(f"{target} already exists and is not an empty folder")
    target.parent.mkdir(parents=True, exist_ok=True)


def _status_for(exc: BaseException) -> str:
    from .jobs import JobCancelled

    return JobStatus.CANCELLED if isinstance(exc, JobCancelled) else JobStatus.FAILED


def _set_status(export: DatasetExport, status: str, error: str = "") -> None:
    fields = {"status": status, "error": error}
    if status != JobStatus.RUNNING:
        fields["finished_at"] = timezone.now()
    # A duplicate delivery of the task that fails must not mark a snapshot another run finished as failed.
    DatasetExport.objects.filter(pk=export.pk).exclude(status=JobStatus.SUCCEEDED).update(**fields)
    for name, value in fields.items():
        setattr(export, name, value)


def _record(export: DatasetExport, target: Path, sha256: str, counts: dict, card: str) -> None:
    export.path, export.sha256, export.counts, export.card = str(target), sha256, counts, card
    export.status, export.error, export.finished_at = JobStatus.SUCCEEDED, "", timezone.now()
    export.save(update_fields=["path", "sha256", "counts", "card", "status", "error", "finished_at"])


def _write_snapshot(export: DatasetExport, folder: Path, progress: Progress | None) -> tuple[dict, str, int]:
    folder.mkdir(parents=True)
    labels = agreement.gather(export.campaign, voted_only=True)
    judge_names = dict(Judge.objects.values_list("id", "name"))
    selection = judge_selection(export, labels)
    tally = Tally()
    writer = _writer(export, folder)
    try:
        _stream(export, Labeller(export.policy, selection, judge_names), writer, tally, progress)
        hashes = writer.close()
    except BaseException:
        writer.abort()
        raise
    judges = tally.judge_tallies(judge_names)
    figures = card_figures(labels, judges)
    counts = {**tally.as_counts(), "agreement": figures, "judges_used": selection_names(selection, judges),
              "files": {name: {"sha256": digest} for name, digest in hashes.items()}}
    card = dataset_card(export, counts, figures)
    (folder / "README.md").write_text(card)
    return counts, card, writer.bytes


def _stream(export: DatasetExport, labeller: Labeller, writer, tally: Tally, progress: Progress | None) -> None:
    source = Source(export.campaign)
    total = source.comparisons().count()
    if progress:
        progress.start(total)
    last_report = time.monotonic()
    for batch in read_batches(source, export.test_fraction):
        for row in batch_rows(batch, labeller, export.ties_as_kto, tally):
            writer.write(row)
            tally.count_row(row)
        writer.flush()
        if progress and time.monotonic() - last_report >= PROGRESS_EVERY_S:
            progress.advance(tally.comparisons, f"{tally.comparisons} of {total} comparisons")
            last_report = time.monotonic()
    if progress:
        progress.advance(tally.comparisons, f"{tally.comparisons} of {total} comparisons")


def _seal(folder: Path, counts: dict) -> str:
    """Hash every file (reusing hashes made while writing), write SHA256SUMS, make the files read-only."""
    known = {name: info["sha256"] for name, info in counts["files"].items()}
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        files[name] = {"sha256": known.get(name) or sha256_file(path), "bytes": path.stat().st_size}
    counts["files"] = files
    manifest = "".join(f"{info['sha256']}  {name}\n" for name, info in files.items())
    (folder / "SHA256SUMS").write_text(manifest)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o444)
    return hashlib.sha256(manifest.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_snapshot(export: DatasetExport) -> bool:
    """True when the files on disk still match the hashes recorded at export time."""
    folder = Path(export.path)
    manifest = (folder / "SHA256SUMS").read_bytes()
    if hashlib.sha256(manifest).hexdigest() != export.sha256:
        return False
    for line in manifest.decode().splitlines():
        digest, name = line.split("  ", 1)
        if sha256_file(folder / name) != digest:
            return False
    return True


def snapshot_file(export: DatasetExport, name: str) -> Path | None:
    """The path of one file of the snapshot, only if the snapshot's manifest lists it."""
    if export.status != JobStatus.SUCCEEDED or name not in export.counts.get("files", {}) and name != "SHA256SUMS":
        return None
    path = Path(export.path) / name
    return path if path.is_file() else None


# --- judges ------------------------------------------------------------------------------------------


def judge_selection(export: DatasetExport, labels: agreement.Labels) -> JudgeSelection:
    panel = export.panel
    judge_ids = frozenset(panel.judges.values_list("id", flat=True)) if panel else None
    threshold = panel.threshold if panel else 1.0
    if export.policy != ExportPolicy.JUDGE_CALIBRATED:
        return JudgeSelection(judge_ids, threshold)
    kappas = agreement.judge_kappas(labels)
    calibrated = frozenset(j for j, k in kappas.items() if k.value >= export.kappa_threshold
                           and (judge_ids is None or j in judge_ids))
    if not calibrated:
        measured = ", ".join(f"{labels.judges[j].name} κ={k.value:.2f}" for j, k in kappas.items())
        measured = measured or "no judge has verdicts on voted comparisons"
        raise ExportError(f"no judge reaches κ ≥ {export.kappa_threshold:.2f} against the experts ({measured})")
    return JudgeSelection(calibrated, threshold)


def selection_names(selection: JudgeSelection, judges: dict[int, agreement.JudgeTally]) -> list[str]:
    """The judges whose verdicts could decide: selected, and with verdicts in scope."""
    ids = judges if selection.judge_ids is None else selection.judge_ids
    return sorted(judges[j].name for j in ids if j in judges)


# --- the dataset card --------------------------------------------------------------------------------


def card_figures(labels: agreement.Labels, judges: dict[int, agreement.JudgeTally]) -> dict:
    """Agreement at export time, as plain numbers (stored with the export and written into the card).

    ``labels``: the votes and the verdicts on voted comparisons (for κ); ``judges``: each judge's tally
    over every comparison the export read (for flips, position bias and invalid output).
    """
    against_experts = {j.judge_id: j.agreement for j in agreement.judge_behaviour(labels, n_boot=CARD_BOOT)}
    experts = agreement.expert_vs_expert(labels, n_boot=CARD_BOOT)
    return {
        "votes": len(labels.votes),
        "experts": {"units": experts.units, "alpha": _estimate(experts.alpha),
                    "alpha_collapsed": _estimate(experts.collapsed_alpha)},
        "judges": [_judge_figures(tally, against_experts.get(judge_id))
                   for judge_id, tally in sorted(judges.items(), key=lambda item: item[1].name)],
    }


def _judge_figures(tally: agreement.JudgeTally, result: agreement.Agreement | None) -> dict:
    figures = {
        "name": tally.name, "comparisons": tally.comparisons,
        "flip_rate": _ratio(tally.flips, tally.both_orders_valid),
        "first_position": _ratio(tally.first_position, tally.decisive),
        "invalid_rate": _ratio(tally.invalid, tally.verdicts), "n": result.n if result else 0,
    }
    if result:
        figures.update(raw=_num(result.raw), raw_collapsed=_num(result.collapsed_raw), kappa=_estimate(result.kappa),
                       kappa_collapsed=_estimate(result.collapsed_kappa))
    return figures


def _ratio(count: int, n: int) -> float | None:
    return round(count / n, 4) if n else None


def _num(value: float) -> float | None:
    return None if value != value else round(value, 3)  # NaN → null: JSON has no NaN


def _estimate(estimate) -> list[float | None]:
    return [_num(estimate.value), _num(estimate.low), _num(estimate.high)]


def dataset_card(export: DatasetExport, counts: dict, figures: dict) -> str:
    from django.template.loader import render_to_string

    suffix = {"jsonl": "jsonl", "parquet": "parquet"}.get(export.format)
    return render_to_string("annotation/dashboard/dataset_card.md", {
        "export": export, "counts": counts, "figures": figures, "data_suffix": suffix,
        "kto": export.ties_as_kto, "prompt_version": EXTRACTION_PROMPT_VERSION,
        "judges_used": counts["judges_used"], "created": timezone.now(),
    })


# --- starting one from the admin ---------------------------------------------------------------------


def start_export(export: DatasetExport, user=None) -> Job:
    """Queue the export on a worker once the transaction commits; the job shows its progress live."""
    from .jobs import create_job
    from .tasks import export_dataset_task

    job = create_job(JobKind.EXPORT, {"export_id": export.pk, "name": export.name}, user=user)
    transaction.on_commit(lambda: export_dataset_task.delay(export.pk))
    return job


def run_export_task(export_id: int) -> None:
    """What the Celery task runs: the export, reporting to its job when there is one."""
    from .jobs import run_job

    export = DatasetExport.objects.get(pk=export_id)
    job = Job.objects.filter(kind=JobKind.EXPORT, params__export_id=export_id).order_by("-pk").first()
    if job is None:
        export_dataset(export)
        return
    run_job(job.pk, lambda job, progress: export_dataset(export, progress).summary())

