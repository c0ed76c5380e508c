"""DPO dataset export: labels chosen by policy, written as a frozen snapshot in TRL's formats.

    python manage.py export_dpo --policy expert --format jsonl --out exports/v1

The export streams: it walks the samples in batches, reads each batch's comparisons, votes, verdicts,
profiles and documents in a few queries (a thread reads the next batch meanwhile), renders and
JSON-encodes each sample's prompt once (all its pairs share it) and each profile once, and writes rows as
it goes, so memory stays flat whatever the size. A JSON line is joined from those pre-encoded pieces, not
encoded row by row; threads join, hash and write the lines, so the files are hashed as they are written.
The snapshot is written into a temporary folder and renamed into place, its files are hashed and made
read-only, and an export that succeeded is never written again: later votes change the next export, not
this one. tests/test_export_bytes.py pins the bytes of the files; bench/export.py measures the speed.

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

import gc
import hashlib
import json
import os
import queue
import shutil
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import orjson
from django.conf import settings
from django.db import connection, connections
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from django.utils.text import slugify

from ..agreement import figures as agreement
from ..jobs.lifecycle import JobCancelled, run_job
from ..models import (
    DatasetExport, Document, ExportFormat, ExportPolicy, Job, JobKind, JobStatus, Judge, JudgeOrders, JudgeVerdict,
    Profile, Sample, SampleDocument, Split,
)
from ..judging.verdicts import INCONSISTENT, INVALID, NO_CONSENSUS, combine_asked, panel_consensus
from ..prompts import EXTRACTION_PROMPT_VERSION, build_extraction_messages

# Samples per batch: a few thousand rows, a handful of queries each.
BATCH_SAMPLES = 500
ROW_GROUP_ROWS = 5_000  # Parquet row group size: rows buffered before a write
CHUNK_BYTES = 2 << 20  # JSONL: about how many bytes of lines are gathered before the writing thread takes them
PROGRESS_EVERY_S = 1.0
SPLITS = ("train", "test")
CARD_BOOT = 200  # bootstrap resamples for the card's intervals: enough for two decimals


class ExportError(Exception):
    """An export that cannot be made as asked (the message says why)."""


class SnapshotFrozen(ExportError):
    pass


class Progress(Protocol):
    """What ``export_dataset`` reports to: annotation.jobs.lifecycle.JobProgress, or the command's progress bar."""

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
    # A one-order verdict (the judge was asked one presentation order) counts only where the policy measured
    # the judge on such verdicts: judges calibrated against experts. Elsewhere it is dropped as "one_order".
    one_order: bool = False
    # Scoring judges: their one verdict per comparison is complete (no order to flip), so it always counts.
    orderless: frozenset[int] = frozenset()


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
    chosen = {judge_id: orders for judge_id, orders in verdicts.items()
              if selection.judge_ids is None or judge_id in selection.judge_ids}
    asked = {judge_id: orders.get("asked", 2) for judge_id, orders in chosen.items()}
    one_order = [j for j, n in asked.items() if n == 1 and j not in selection.orderless]
    combined = [combine_asked(orders.get("ab"), orders.get("ba"), asked[j]) for j, orders in chosen.items()
                if j not in one_order or selection.one_order]
    valid = [label for label in combined if label != INVALID]
    if not valid:
        return Decision(None, dropped="one_order" if one_order and not selection.one_order else "no_valid_verdicts")
    label = panel_consensus(valid, selection.threshold)
    if label == NO_CONSENSUS:
        return Decision(None, dropped="no_consensus")
    if label == INCONSISTENT:
        return Decision(None, dropped="inconsistent")  # flipped with the order: not a win, not a label
    return Decision(label, "judges", valid.count(label) / len(valid))


# --- reading in batches ------------------------------------------------------------------------------


class SampleInfo:
    """One sample of a batch, its prompt rendered and JSON-encoded once for all its rows."""

    __slots__ = ("name", "name_json", "prompt", "prompt_json", "split")

    def __init__(self, name: str, prompt: list[dict[str, str]], prompt_json: bytes, split: str):
        self.name = name
        self.name_json = json_string(name)  # as the JSON the rows hold
        self.prompt = prompt
        self.prompt_json = prompt_json
        self.split = split  # "train" or "test" in this export


class ProfileInfo:
    __slots__ = ("text", "is_valid", "_json")

    def __init__(self, text: str, is_valid: bool):
        self.text, self.is_valid, self._json = text, is_valid, b""

    @property
    def messages_json(self) -> bytes:
        """``[{"role": "assistant", "content": text}]`` as json.dumps writes it, encoded once per profile."""
        if not self._json:
            self._json = b'[{"role": "assistant", "content": ' + json_string(self.text) + b"}]"
        return self._json


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
    comparisons = list(
        source.comparisons().filter(in_batch).order_by("sample_id", "id")
        .values_list("id", "sample_id", "profile_a_id", "profile_b_id")
    )
    in_comparisons = _in_samples(sample_ids, "comparison__")
    # By comparison id where the batch's comparisons have (nearly) consecutive ids: the votes' and verdicts'
    # own indexes then find them, with no join (the join reads every vote of the export for every batch).
    comparison_ids = sorted(c[0] for c in comparisons)
    of_comparisons = _range("comparison_id", comparison_ids) or in_comparisons
    return Batch(
        samples=_samples(sample_ids, in_batch, test_fraction),
        comparisons=comparisons,
        votes=_votes(source, of_comparisons),
        verdicts=_verdicts(of_comparisons),
        profiles={
            pid: ProfileInfo(text, valid)
            for pid, text, valid in
            Profile.objects.filter(in_batch).order_by().values_list("id", "raw_text", "is_valid")
        },
    )


def _in_samples(sample_ids: list[int], prefix: str = "") -> Q:
    return _among(f"{prefix}sample_id", sample_ids)


def _among(field: str, ids: list[int]) -> Q:
    """Rows whose ``field`` is one of the sorted ``ids``. Consecutive ids (the usual case: batches walk
    the samples in id order) become one range, which costs the database and the driver far less than
    hundreds of parameters; the few extra rows a range may hold are ignored by the caller."""
    return _range(field, ids) or Q(**{f"{field}__in": ids})


def _range(field: str, ids: list[int]) -> Q | None:
    """One range holding the sorted ``ids``, or None when they are too spread out for one."""
    if ids and ids[-1] - ids[0] < 2 * len(ids):
        return Q(**{f"{field}__gte": ids[0], f"{field}__lte": ids[-1]})
    return None


def _samples(sample_ids: list[int], in_batch: Q, test_fraction: float) -> dict[int, SampleInfo]:
    # No model orderings (order_by()): they would make the database sort, or join for, what nobody reads.
    places = list(SampleDocument.objects.filter(in_batch).order_by("sample_id", "position")
                  .values_list("sample_id", "document_id"))
    # Documents by primary key in a second query: joined, the planner may scan the whole document table.
    wanted = sorted({d for _, d in places})
    texts = {pk: (title, text) for pk, title, text in
             Document.objects.filter(_among("pk", wanted)).order_by().values_list("pk", "title", "abstract")}
    abstracts: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for sample_id, document_id in places:
        abstracts[sample_id].append(texts[document_id])
    result = {}
    rows = Sample.objects.filter(_among("id", sample_ids)).order_by().values_list("id", "name", "split")
    for sample_id, name, split in rows:
        if sample_id not in abstracts or not all(text for _, text in abstracts[sample_id]):
            # In the id range but not in the batch, or without abstracts (title-only: no prompt to train on); its
            # pairs are dropped as "sample_without_abstracts".
            continue
        prompt = build_extraction_messages(abstracts[sample_id])
        prompt_json = messages_json(prompt)
        result[sample_id] = SampleInfo(name, prompt, prompt_json, _split_of(split, prompt_json, test_fraction))
    return result


def _split_of(sample_split: str, prompt_json: bytes, test_fraction: float) -> str:
    """Held-out samples are never trained on; the others go to test by a stable hash of their prompt.

    Hashing the prompt (not the sample id) keeps every export's split the same for a sample, and puts two
    samples with the very same abstracts into the same split, so no prompt leaks across.
    """
    if sample_split == Split.HELDOUT:
        return "test"
    bucket = int.from_bytes(hashlib.sha256(prompt_json).digest()[:8], "big") / 2**64
    return "test" if bucket < test_fraction else "train"


def _votes(source: Source, in_batch: Q) -> dict[int, list[VoteTuple]]:
    votes: dict[int, list[VoteTuple]] = defaultdict(list)
    rows = source.votes().filter(in_batch).order_by("comparison_id", "id")
    for vote_id, comparison_id, expert_id, choice in rows.values_list("id", "comparison_id", "expert_id", "choice"):
        votes[comparison_id].append((vote_id, expert_id, choice))
    return votes


def _verdicts(in_batch: Q) -> dict[int, VerdictKey]:
    """Each comparison's verdicts, one (judge, ab, ba, rows) entry per judge, grouped by the database."""
    per_judge = (JudgeVerdict.objects.filter(in_batch).per_pair().order_by("comparison_id", "judge_id")
                 .values_list("comparison_id", "judge_id", "ab", "ba", "answered"))
    result: dict[int, VerdictKey] = {}
    single: dict = {}  # entry → the key of a comparison with only that entry, made once: a handful in all
    previous = None
    for cid, judge_id, ab, ba, n in _plain_rows(per_judge):
        entry = (judge_id, ab, ba, n)
        if cid == previous:  # another judge of the same comparison
            result[cid] += (entry,)
            continue
        key = single.get(entry)
        if key is None:
            key = single[entry] = (entry,)
        result[cid] = key
        previous = cid
    return result


def _plain_rows(queryset) -> Iterator[tuple]:
    """A values_list queryset's rows as the driver returns them, skipping Django's per-row conversions:
    for columns that need none (here ints, text and None; Count's converter only calls int on an int)."""
    sql, params = queryset.query.get_compiler(queryset.db).as_sql()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(sql, params)
        yield from cursor


# --- JSON text ---------------------------------------------------------------------------------------
# Rows are assembled from pieces of JSON encoded once each (a prompt per sample, a profile per profile,
# the labels per distinct set of labels), in exactly the text json.dumps writes for them: the files stay
# byte for byte what they were. orjson encodes a string exactly as json.dumps(ensure_ascii=False) does,
# only many times faster (tests/test_export_bytes.py pins the bytes).


def json_string(text: str) -> bytes:
    """``json.dumps(text, ensure_ascii=False).encode()``."""
    return orjson.dumps(text)


def messages_json(messages: list[dict[str, str]]) -> bytes:
    """``json.dumps(messages, ensure_ascii=False).encode()`` for chat messages (strings in, strings out)."""
    parts = []
    for message in messages:
        if type(message) is not dict:
            return json.dumps(messages, ensure_ascii=False).encode()
        fields = []
        for key, value in message.items():
            if type(key) is not str or type(value) is not str:
                return json.dumps(messages, ensure_ascii=False).encode()
            fields.append(orjson.dumps(key) + b": " + orjson.dumps(value))
        parts.append(b"{" + b", ".join(fields) + b"}")
    return b"[" + b", ".join(parts) + b"]"


# --- labels ------------------------------------------------------------------------------------------


class Labels:
    """A decided comparison's label and provenance columns: the same for every row the comparison gives."""

    __slots__ = ("decision", "votes_json", "verdicts_json", "tail")

    def __init__(self, decision: Decision, votes_json: str, votes_quoted: str, verdicts_json: str,
                 verdicts_quoted: str, policy_json: str):
        self.decision, self.votes_json, self.verdicts_json = decision, votes_json, verdicts_json
        # A JSON line's columns after "sample": its end, the same for all the comparison's rows.
        self.tail = (f',"decision":"{decision.label}","source":"{decision.source}","agreement":{decision.agreement!r},'
                     f'"votes":{votes_quoted},"verdicts":{verdicts_quoted},"policy":{policy_json}}}\n').encode()


class Labeller:
    """Decides comparisons by policy. Comparisons with the same verdicts get the same judge decision and
    the same verdicts column, so both are worked out once per distinct set of verdicts (a handful of
    combinations, however many rows), not once per row."""

    CACHE_LIMIT = 100_000

    def __init__(self, policy: str, selection: JudgeSelection, judge_names: dict[int, str]):
        self.policy, self.selection, self.judge_names = policy, selection, judge_names
        self.policy_json = json.dumps(policy)
        self._experts_decide = policy in (ExportPolicy.EXPERT, ExportPolicy.EXPERT_OVERRIDES)
        # verdicts → (the judges' decision, the verdicts column, that column quoted, the labels without votes)
        self._by_verdicts: dict[VerdictKey, tuple[Decision, str, str, Labels | None]] = {}

    def label(self, votes: list[VoteTuple], verdicts: VerdictKey) -> Labels | Decision:
        """The comparison's labels, or the Decision that drops it (its label None, ``dropped`` why)."""
        if votes and self._experts_decide or self.policy == ExportPolicy.EXPERT:
            if not votes:
                return NO_VOTES_DECISION
            decision = expert_decision(votes)
            if decision.label is None:
                return decision
            _, verdicts_json, verdicts_quoted, _ = self._verdicts(verdicts)
            return Labels(decision, *_votes_columns(votes), verdicts_json, verdicts_quoted, self.policy_json)
        decision, verdicts_json, verdicts_quoted, unvoted = self._verdicts(verdicts)
        if decision.label is None:
            return decision
        if not votes:
            return unvoted
        return Labels(decision, *_votes_columns(votes), verdicts_json, verdicts_quoted, self.policy_json)

    def _verdicts(self, key: VerdictKey) -> tuple[Decision, str, str, Labels | None]:
        cached = self._by_verdicts.get(key)
        if cached is None:
            if len(self._by_verdicts) >= self.CACHE_LIMIT:
                self._by_verdicts.clear()
            orders = {jid: {"ab": ab, "ba": ba, "asked": n} for jid, ab, ba, n in key}
            text = json.dumps([
                {"judge": self.judge_names.get(jid, str(jid)), "ab": ab, "ba": ba, "verdict": combine_asked(ab, ba, n)}
                for jid, ab, ba, n in key
            ], ensure_ascii=False)
            quoted = json.dumps(text, ensure_ascii=False)
            decision = judge_decision(orders, self.selection)
            unvoted = Labels(decision, *NO_VOTES, text, quoted, self.policy_json) if decision.label else None
            cached = self._by_verdicts[key] = (decision, text, quoted, unvoted)
        return cached


NO_VOTES = ("[]", '"[]"')
NO_VOTES_DECISION = expert_decision([])


def _votes_columns(votes: list[VoteTuple]) -> tuple[str, str]:
    if not votes:
        return NO_VOTES
    text = json.dumps([{"vote_id": vid, "expert_id": expert, "choice": choice} for vid, expert, choice in votes])
    return text, json.dumps(text)


@dataclass
class Tally:
    rows: Counter = field(default_factory=Counter)  # split → rows written
    samples: Counter = field(default_factory=Counter)  # split → samples with rows
    comparisons: int = 0
    labels: Counter = field(default_factory=Counter)  # decided label → comparisons
    sources: Counter = field(default_factory=Counter)  # experts / judges → comparisons used
    dropped: Counter = field(default_factory=Counter)  # reason → comparisons (or rows, for duplicates)
    # How often each set of verdicts occurred: the judges' figures for the card are worked out from it.
    verdicts: Counter = field(default_factory=Counter)

    def as_counts(self) -> dict:
        return {
            "train": self.rows["train"], "test": self.rows["test"],
            "train_samples": self.samples["train"], "test_samples": self.samples["test"],
            "comparisons": self.comparisons, "labels": dict(self.labels), "sources": dict(self.sources),
            "dropped": dict(sorted(self.dropped.items())),
        }

    def judge_tallies(self, judge_names: dict[int, str], orderless: frozenset[int] = frozenset()
                      ) -> dict[int, agreement.JudgeTally]:
        """Each judge's flips, position bias and invalid output over every comparison the export read."""
        per_judge: Counter = Counter()
        for key, count in self.verdicts.items():
            for entry in key:
                per_judge[entry] += count
        tallies: dict[int, agreement.JudgeTally] = {}
        for (jid, ab, ba, n), count in per_judge.items():
            one = agreement.JudgeTally(judge_names.get(jid, str(jid)), jid in orderless)
            agreement.tally_verdict(one, ab, ba, n, n - (ab is not None) - (ba is not None))
            total = tallies.setdefault(jid, agreement.JudgeTally(one.name, one.orderless))
            for name in ("verdicts", "invalid", "comparisons", "both_orders_valid", "one_order", "flips", "decisive",
                         "first_position"):
                setattr(total, name, getattr(total, name) + count * getattr(one, name))
        return tallies


# --- rows --------------------------------------------------------------------------------------------


def write_batch(batch: Batch, labeller: Labeller, kto: bool, tally: Tally, writer) -> None:
    """The batch's rows, in sample order and with duplicates within a prompt removed, handed to the writer:
    ``writer.pair(sample, comparison id, chosen, rejected, labels)`` for DPO rows,
    ``writer.unpaired(sample, comparison id, profile, desirable, labels)`` for KTO rows, where a profile is
    ``(id, ProfileInfo)``. Rows are handed over as arguments, never built as dicts or objects: this loop runs
    for every comparison, and the writer turns the arguments straight into its format."""
    samples, profiles, votes_of, verdicts_of = batch.samples, batch.profiles, batch.votes, batch.verdicts
    rows, samples_seen, dropped, labels_count, sources, verdict_counts = (
        tally.rows, tally.samples, tally.dropped, tally.labels, tally.sources, tally.verdicts)
    label = labeller.label
    pair, unpaired = writer.pair, writer.unpaired
    seen: set = set()
    current_sample = None
    sample = None
    written = 0  # rows of the current sample
    no_votes: list = []
    for cid, sample_id, a_id, b_id in batch.comparisons:
        if sample_id != current_sample:
            if written:
                rows[sample.split] += written
                samples_seen[sample.split] += 1
            seen, current_sample, written = set(), sample_id, 0
            sample = samples.get(sample_id)
        verdicts = verdicts_of.get(cid, ())
        verdict_counts[verdicts] += 1
        labels = label(votes_of.get(cid, no_votes), verdicts)
        if type(labels) is Decision:
            dropped[labels.dropped] += 1
            continue
        if sample is None:
            dropped["sample_without_abstracts"] += 1
            continue
        decision = labels.decision.label
        a, b = profiles[a_id], profiles[b_id]
        if decision == "a" or decision == "b":
            if decision == "a":
                chosen, rejected = (a_id, a), (b_id, b)
            else:
                chosen, rejected = (b_id, b), (a_id, a)
            if not chosen[1].is_valid:  # an invalid profile must never be taught as the better answer
                dropped["invalid_chosen_profile"] += 1
                continue
            labels_count[decision] += 1
            sources[labels.decision.source] += 1
            if not kto:
                key = (chosen[1].text, rejected[1].text)
                if key in seen:
                    dropped["duplicate_rows"] += 1
                    continue
                seen.add(key)
                pair(sample, cid, chosen, rejected, labels)
                written += 1
                continue
            unpaired_rows = ((chosen, True), (rejected, False))
        elif not kto:
            dropped[decision] += 1  # a tie or "both bad" has no chosen answer
            continue
        else:
            labels_count[decision] += 1
            sources[labels.decision.source] += 1
            unpaired_rows = (((a_id, a), False), ((b_id, b), False))
        for profile, desirable in unpaired_rows:
            key = (profile[1].text, desirable)
            if key in seen:
                dropped["duplicate_rows"] += 1
                continue
            seen.add(key)
            unpaired(sample, cid, profile, desirable, labels)
            written += 1
    if written:
        rows[sample.split] += written
        samples_seen[sample.split] += 1
    tally.comparisons += len(batch.comparisons)


# --- writers -----------------------------------------------------------------------------------------


class JsonlWriter:
    """One JSON line per row, joined from pre-encoded pieces. While the main thread assembles the next chunk
    of lines, one thread joins and hashes each chunk and another writes it (joining, hashing and writing
    all release the GIL), so the files are hashed as they are written, with no second pass."""

    suffix = "jsonl"

    def __init__(self, folder: Path, policy: str):
        self.files = {split: (folder / f"{split}.jsonl").open("wb", buffering=0) for split in SPLITS}
        self.hashes = {split: hashlib.sha256() for split in SPLITS}
        self.pending: dict[str, list[bytes]] = {split: [] for split in SPLITS}
        self.pending_bytes = {split: 0 for split in SPLITS}
        self.rows = {split: 0 for split in SPLITS}
        self.bytes = 0
        self._sample: SampleInfo | None = None  # the sample whose row starts are below: rows come sample by sample
        self._pair_start = self._unpaired_start = b""
        # Bounded: at most a few chunks wait in memory.
        self._queue: queue.Queue = queue.Queue(maxsize=2)  # (split, pieces) to join and hash
        self._to_write: queue.Queue = queue.Queue(maxsize=2)  # (split, joined bytes) to write
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._join_and_hash, name="export-hasher", daemon=True),
                         threading.Thread(target=self._write, name="export-writer", daemon=True)]
        for thread in self._threads:
            thread.start()

    def _start(self, sample: SampleInfo) -> None:
        self._sample = sample
        self._pair_start = b'{"prompt":' + sample.prompt_json + b',"chosen":'
        self._unpaired_start = b'{"prompt":' + sample.prompt_json + b',"completion":'

    def pair(self, sample: SampleInfo, comparison_id: int, chosen: tuple[int, ProfileInfo],
             rejected: tuple[int, ProfileInfo], labels: Labels) -> None:
        if sample is not self._sample:
            self._start(sample)
        split = sample.split
        chosen_json, rejected_json = chosen[1].messages_json, rejected[1].messages_json
        ids = b',"chosen_profile_id":%d,"rejected_profile_id":%d,"comparison_id":%d,"sample":' % (
            chosen[0], rejected[0], comparison_id)
        self.pending[split] += (self._pair_start, chosen_json, b',"rejected":', rejected_json, ids, sample.name_json,
                                labels.tail)
        self.rows[split] += 1
        size = self.pending_bytes[split] + len(self._pair_start) + len(chosen_json) + len(rejected_json) + 300
        self.pending_bytes[split] = size
        if size >= CHUNK_BYTES:
            self._send(split)

    def unpaired(self, sample: SampleInfo, comparison_id: int, profile: tuple[int, ProfileInfo], desirable: bool,
                 labels: Labels) -> None:
        if sample is not self._sample:
            self._start(sample)
        split = sample.split
        completion = profile[1].messages_json
        ids = (b',"label":true,"profile_id":%d,"comparison_id":%d,"sample":' if desirable else
               b',"label":false,"profile_id":%d,"comparison_id":%d,"sample":') % (profile[0], comparison_id)
        self.pending[split] += (self._unpaired_start, completion, ids, sample.name_json, labels.tail)
        self.rows[split] += 1
        size = self.pending_bytes[split] + len(self._unpaired_start) + len(completion) + 300
        self.pending_bytes[split] = size
        if size >= CHUNK_BYTES:
            self._send(split)

    def flush(self) -> None:
        for split in SPLITS:
            self._send(split)

    def _send(self, split: str) -> None:
        if self.pending[split]:
            self._put((split, self.pending[split]))
            self.pending[split] = []
            self.pending_bytes[split] = 0

    def close(self) -> dict[str, str]:
        self.flush()
        self._stop()
        if self._error:
            raise self._error
        return {f"{split}.jsonl": digest.hexdigest() for split, digest in self.hashes.items()}

    def abort(self) -> None:
        self._stop()

    def _stop(self) -> None:
        self._queue.put(None)
        for thread in self._threads:
            thread.join()
        for handle in self.files.values():
            handle.close()

    def _put(self, item) -> None:
        if self._error:
            raise self._error
        self._queue.put(item)

    def _join_and_hash(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error:
                continue  # keep taking items so the producer never blocks on a dead writer
            try:
                split, pieces = item
                data = b"".join(pieces)
                del pieces, item
                self._to_write.put((split, data))
                self.hashes[split].update(data)
            except BaseException as exc:  # reported to the producer on its next put or at close
                self._error = exc
        self._to_write.put(None)

    def _write(self) -> None:
        while (item := self._to_write.get()) is not None:
            if self._error:
                continue
            try:
                split, data = item
                view = memoryview(data)
                while view:  # an unbuffered write may write less than it was given
                    view = view[self.files[split].write(view):]
                self.bytes += len(data)
            except BaseException as exc:
                self._error = exc


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
    """Rows buffered per split and written as Parquet row groups, built column by column: a prompt is
    converted to Arrow once per sample and repeated for its rows by Arrow, not by Python. Arrow encodes and
    compresses with the GIL released, so the reading thread goes on meanwhile."""

    suffix = "parquet"

    def __init__(self, folder: Path, policy: str, kto: bool):
        import pyarrow.parquet as pq

        self.schema = _arrow_schema(kto)
        self.kto = kto
        self.policy = policy
        self.writers = {split: pq.ParquetWriter(folder / f"{split}.parquet", self.schema, compression="zstd")
                        for split in SPLITS}
        # split → the pending rows: (sample, comparison id, first profile, second profile or desirable, labels)
        self.pending: dict[str, list[tuple]] = {split: [] for split in SPLITS}
        self.rows = {split: 0 for split in SPLITS}
        self.folder = folder
        self.bytes = 0

    def pair(self, sample: SampleInfo, comparison_id: int, chosen: tuple[int, ProfileInfo],
             rejected: tuple[int, ProfileInfo], labels: Labels) -> None:
        self._add(sample.split, (sample, comparison_id, chosen, rejected, labels))

    def unpaired(self, sample: SampleInfo, comparison_id: int, profile: tuple[int, ProfileInfo], desirable: bool,
                 labels: Labels) -> None:
        self._add(sample.split, (sample, comparison_id, profile, desirable, labels))

    def _add(self, split: str, row: tuple) -> None:
        pending = self.pending[split]
        pending.append(row)
        self.rows[split] += 1
        if len(pending) >= ROW_GROUP_ROWS:
            self._write_group(split)

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

        rows = self.pending[split]
        if not rows:
            return
        # The group's samples, each once, and which of them each row's prompt is.
        samples, which = [], []
        for row in rows:
            if not samples or samples[-1] is not row[0]:
                samples.append(row[0])
            which.append(len(samples) - 1)
        messages = self.schema.field("prompt").type
        prompts = pa.array([s.prompt for s in samples], type=messages)
        labels = [row[4] for row in rows]
        decisions = [lab.decision for lab in labels]
        if self.kto:
            head = [_assistant_messages([row[2][1].text for row in rows], messages),
                    pa.array([row[3] for row in rows], type=pa.bool_()),
                    pa.array([row[2][0] for row in rows], type=pa.int64())]
        else:
            head = [_assistant_messages([row[2][1].text for row in rows], messages),
                    _assistant_messages([row[3][1].text for row in rows], messages),
                    pa.array([row[2][0] for row in rows], type=pa.int64()),
                    pa.array([row[3][0] for row in rows], type=pa.int64())]
        tail = [
            pa.array([row[1] for row in rows], type=pa.int64()),
            pa.array([row[0].name for row in rows], type=pa.string()),
            pa.array([d.label for d in decisions], type=pa.string()),
            pa.array([d.source for d in decisions], type=pa.string()),
            pa.array([d.agreement for d in decisions], type=pa.float64()),
            pa.array([lab.votes_json for lab in labels], type=pa.string()),
            pa.array([lab.verdicts_json for lab in labels], type=pa.string()),
            pa.array([self.policy] * len(rows), type=pa.string()),
        ]
        self.pending[split] = []
        prompts = prompts.take(pa.array(which, type=pa.int32()))  # each row's prompt, repeated by Arrow
        self.writers[split].write_table(pa.Table.from_arrays([prompts, *head, *tail], schema=self.schema))


def _assistant_messages(texts: list[str], messages_type):
    """A column of one-message lists ``[{"role": "assistant", "content": text}]``, built from the texts."""
    import pyarrow as pa

    struct = messages_type.value_type
    contents = pa.array(texts, type=pa.string())
    roles = pa.array(["assistant"] * len(texts), type=pa.string())
    values = pa.StructArray.from_arrays([roles, contents], fields=list(struct))
    return pa.ListArray.from_arrays(pa.array(range(len(texts) + 1), type=pa.int32()), values, type=messages_type)


class HfWriter(ParquetWriter):
    """A `datasets` folder (``load_from_disk``): Parquet first, then converted split by split."""

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
        with _objects_before_frozen():
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
    # What the card needs from the votes, worked out now: the votes then need not stay in memory while the
    # rows stream (they grow with the data; the stream's memory does not).
    expert_figures = ExpertFigures.of(labels)
    del labels
    tally = Tally()
    writer = _writer(export, folder)
    try:
        _stream(export, Labeller(export.policy, selection, judge_names), writer, tally, progress)
        hashes = writer.close()
    except BaseException:
        writer.abort()
        raise
    judges = tally.judge_tallies(judge_names, selection.orderless)
    figures = card_figures(expert_figures, judges)
    counts = {**tally.as_counts(), "agreement": figures, "judges_used": selection_names(selection, judges),
              "files": {name: {"sha256": digest} for name, digest in hashes.items()}}
    card = dataset_card(export, counts, figures)
    (folder / "README.md").write_text(card)
    return counts, card, writer.bytes


@contextmanager
def _objects_before_frozen() -> Iterator[None]:
    """Keep the cycle collector off the objects that existed before the export (the modules, the site).

    An export makes objects by the million, and now and then that sets off a full collection, which walks
    every object of the process (a tenth of a second each here, many times over in a large export); the
    export's own objects are freed by reference counting. Frozen objects are only skipped by collections,
    never freed or changed, and go back to the collector's oldest generation afterwards.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _stream(export: DatasetExport, labeller: Labeller, writer, tally: Tally, progress: Progress | None) -> None:
    source = Source(export.campaign)
    total = source.comparisons().count()
    if progress:
        progress.start(total)
    last_report = time.monotonic()
    for batch in read_batches(source, export.test_fraction):
        write_batch(batch, labeller, export.ties_as_kto, tally, writer)
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
    orderless = frozenset(Judge.objects.filter(orders=JudgeOrders.NONE).values_list("id", flat=True))
    if export.policy != ExportPolicy.JUDGE_CALIBRATED:
        return JudgeSelection(judge_ids, threshold, orderless=orderless)
    kappas = agreement.judge_kappas(labels)
    calibrated = frozenset(j for j, k in kappas.items() if k.value >= export.kappa_threshold
                           and (judge_ids is None or j in judge_ids))
    if not calibrated:
        measured = ", ".join(f"{labels.judges[j].name} κ={k.value:.2f}" for j, k in kappas.items())
        measured = measured or "no judge has verdicts on voted comparisons"
        raise ExportError(f"no judge reaches κ ≥ {export.kappa_threshold:.2f} against the experts ({measured})")
    return JudgeSelection(calibrated, threshold, one_order=True, orderless=orderless)


def selection_names(selection: JudgeSelection, judges: dict[int, agreement.JudgeTally]) -> list[str]:
    """The judges whose verdicts could decide: selected, and with verdicts in scope."""
    ids = judges if selection.judge_ids is None else selection.judge_ids
    return sorted(judges[j].name for j in ids if j in judges)


# --- the dataset card --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpertFigures:
    """The card's figures that come from the votes and the verdicts on voted comparisons."""

    votes: int
    against_experts: dict[int, agreement.Agreement]  # judge id → agreement with the experts (κ)
    experts: agreement.ExpertAgreement  # expert vs expert (α)

    @classmethod
    def of(cls, labels: agreement.Labels) -> ExpertFigures:
        against_experts = {j.judge_id: j.agreement for j in agreement.judge_behaviour(labels, n_boot=CARD_BOOT)}
        return cls(len(labels.votes), against_experts, agreement.expert_vs_expert(labels, n_boot=CARD_BOOT))


def card_figures(figures: ExpertFigures, judges: dict[int, agreement.JudgeTally]) -> dict:
    """Agreement at export time, as plain numbers (stored with the export and written into the card).

    ``figures``: from the votes and the verdicts on voted comparisons (κ, α); ``judges``: each judge's
    tally over every comparison the export read (for flips, position bias and invalid output).
    """
    against_experts, experts = figures.against_experts, figures.experts
    return {
        "votes": figures.votes,
        "experts": {"units": experts.units, "alpha": _estimate(experts.alpha),
                    "alpha_collapsed": _estimate(experts.collapsed_alpha)},
        "judges": [_judge_figures(tally, against_experts.get(judge_id))
                   for judge_id, tally in sorted(judges.items(), key=lambda item: item[1].name)],
    }


def _judge_figures(tally: agreement.JudgeTally, result: agreement.Agreement | None) -> dict:
    figures = {
        "name": tally.name, "comparisons": tally.comparisons, "orderless": tally.orderless,
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


# --- the task ----------------------------------------------------------------------------------------


def run_export_task(export_id: int) -> None:
    """What the Celery task runs: the export, reporting to its job when there is one."""
    export = DatasetExport.objects.get(pk=export_id)
    job = Job.objects.filter(kind=JobKind.EXPORT, params__export_id=export_id).order_by("-pk").first()
    if job is None:
        export_dataset(export)
        return
    run_job(job.pk, lambda job, progress: export_dataset(export, progress).summary())

