"""DPO dataset export: labels chosen by policy, written as a frozen snapshot in TRL's formats.

    python manage.py export_dpo --policy expert --format jsonl --out exports/v1

The export streams: it reads the samples in batches through the ORM (a few queries per batch), builds
each row as a dict and writes it as one JSON line (orjson) or into a Parquet row group, so memory stays flat
whatever the size. The snapshot is written into a temporary folder and renamed into place, its files are
hashed as they are written and made read-only, and an export that succeeded is never written again: later
votes change the next export, not this one. tests/test_export_bytes.py pins the bytes; bench/export.py
measures the speed.

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
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Protocol

import orjson
from django.conf import settings
from django.db.models import Exists, OuterRef
from django.utils import timezone
from django.utils.text import slugify

from ..agreement import figures as agreement
from ..jobs.lifecycle import Cancelled, run_job
from ..models import (
    DatasetExport, Document, ExportFormat, ExportPolicy, Job, JobKind, JobStatus, Judge, JudgeOrders, JudgeVerdict,
    Profile, Sample, SampleDocument, Split,
)
from ..judging.verdicts import INCONSISTENT, INVALID, NO_CONSENSUS, combine_asked, panel_consensus
from ..prompts import EXTRACTION_PROMPT_VERSION, build_extraction_messages

# Samples per batch: a few thousand rows, a handful of queries each.
BATCH_SAMPLES = 500
ROW_GROUP_ROWS = 5_000  # Parquet row group size: rows buffered before a write
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


def judge_decision(verdicts: VerdictKey, selection: JudgeSelection) -> Decision:
    chosen = [(judge_id, ab, ba, n) for judge_id, ab, ba, n in verdicts
              if selection.judge_ids is None or judge_id in selection.judge_ids]
    one_order = [j for j, _, _, n in chosen if n == 1 and j not in selection.orderless]
    combined = [combine_asked(ab, ba, n) for j, ab, ba, n in chosen if j not in one_order or selection.one_order]
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


@dataclass(frozen=True)
class SampleRows:
    """What a batch's sample gives each of its rows: its name, its prompt, and the split it goes to."""

    name: str
    prompt: list[dict[str, str]]
    split: str  # "train" or "test" in this export


@dataclass(frozen=True)
class ProfileText:
    id: int
    text: str
    is_valid: bool


@dataclass
class Batch:
    samples: dict[int, SampleRows]  # only the samples with abstracts to make a prompt of
    comparisons: list[tuple[int, int, int, int]]  # (id, sample id, profile a id, profile b id), in sample order
    votes: dict[int, list[VoteTuple]]
    verdicts: dict[int, VerdictKey]
    profiles: dict[int, ProfileText]


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


def read_batch(source: Source, sample_ids: list[int], test_fraction: float) -> Batch:
    """One batch of samples with everything their rows need, in a few queries whatever its size."""
    # A batch is a run of consecutive samples (sample_batches): its comparisons are those of the samples in the
    # range of its first and last id, and the votes and verdicts are read through that range, not as IN lists
    # of every comparison's id, which Django and the driver handle parameter by parameter.
    in_batch = source.comparisons().filter(sample_id__gte=sample_ids[0], sample_id__lte=sample_ids[-1])
    comparisons = list(in_batch.order_by("sample_id", "id").values_list("id", "sample_id", "profile_a_id",
                                                                         "profile_b_id"))
    profiles = Profile.objects.filter(sample_id__in=sample_ids).order_by().values_list("id", "raw_text", "is_valid")
    return Batch(
        samples=_samples(sample_ids, test_fraction),
        comparisons=comparisons,
        votes=_votes(source.votes().filter(comparison__in=in_batch.values("id"))),
        verdicts=_verdicts(JudgeVerdict.objects.filter(comparison__in=in_batch.values("id"))),
        profiles={pid: ProfileText(pid, text, valid) for pid, text, valid in profiles},
    )


def _samples(sample_ids: list[int], test_fraction: float) -> dict[int, SampleRows]:
    # No model orderings (order_by()): they would make the database sort, or join for, what nobody reads.
    places = list(SampleDocument.objects.filter(sample_id__in=sample_ids).order_by("sample_id", "position")
                  .values_list("sample_id", "document_id"))
    # Documents by primary key in a second query: joined, the planner may scan the whole document table.
    texts = Document.objects.filter(pk__in={d for _, d in places}).order_by().values_list("pk", "title", "abstract")
    by_id = {pk: (title, text) for pk, title, text in texts}
    abstracts: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for sample_id, document_id in places:
        abstracts[sample_id].append(by_id[document_id])
    result = {}
    for sample_id, name, split in Sample.objects.filter(pk__in=sample_ids).order_by().values_list("id", "name", "split"):
        documents = abstracts.get(sample_id)
        if not documents or not all(text for _, text in documents):
            continue  # no abstracts (title-only): no prompt to train on; its pairs drop as "sample_without_abstracts"
        prompt = build_extraction_messages(documents)
        result[sample_id] = SampleRows(name, prompt, _split_of(split, prompt, test_fraction))
    return result


def _split_of(sample_split: str, prompt: list[dict[str, str]], test_fraction: float) -> str:
    """Held-out samples are never trained on; the others go to test by a stable hash of their prompt.

    Hashing the prompt (not the sample id) keeps every export's split the same for a sample, and puts two
    samples with the very same abstracts into the same split, so no prompt leaks across. The hash is of the
    prompt as json.dumps writes it, as in every export before: a sample must not change split between exports.
    """
    if sample_split == Split.HELDOUT:
        return "test"
    text = json.dumps(prompt, ensure_ascii=False).encode()
    bucket = int.from_bytes(hashlib.sha256(text).digest()[:8], "big") / 2**64
    return "test" if bucket < test_fraction else "train"


def _votes(votes) -> dict[int, list[VoteTuple]]:
    grouped: dict[int, list[VoteTuple]] = defaultdict(list)
    rows = votes.order_by("comparison_id", "id").values_list("id", "comparison_id", "expert_id", "choice")
    for vote_id, comparison_id, expert_id, choice in rows:
        grouped[comparison_id].append((vote_id, expert_id, choice))
    return grouped


def _verdicts(verdicts) -> dict[int, VerdictKey]:
    """Each comparison's verdicts, one (judge, ab, ba, rows) entry per judge, grouped by the database."""
    per_judge = (verdicts.per_pair().order_by("comparison_id", "judge_id")
                 .values_list("comparison_id", "judge_id", "ab", "ba", "answered"))
    grouped: dict[int, VerdictKey] = defaultdict(tuple)
    for comparison_id, *entry in per_judge:
        grouped[comparison_id] += (tuple(entry),)
    return grouped


# --- labels ------------------------------------------------------------------------------------------


class Labeller:
    """Decides each comparison by the export's policy and gives the columns its rows share."""

    def __init__(self, policy: str, selection: JudgeSelection, judge_names: dict[int, str]):
        self.policy, self.selection, self.judge_names = policy, selection, judge_names
        self._experts_decide = policy in (ExportPolicy.EXPERT, ExportPolicy.EXPERT_OVERRIDES)

    def decide(self, votes: list[VoteTuple], verdicts: VerdictKey) -> Decision:
        """The comparison's label, or a Decision whose label is None and ``dropped`` says why."""
        if votes and self._experts_decide or self.policy == ExportPolicy.EXPERT:
            return expert_decision(votes)
        return judge_decision(verdicts, self.selection)

    def columns(self, decision: Decision, votes: list[VoteTuple], verdicts: VerdictKey) -> dict:
        """The label and provenance columns, the same for every row of the comparison.

        ``votes`` and ``verdicts`` are JSON text, not nested columns, so the schema is the same in every row.
        """
        votes_column = [{"vote_id": vid, "expert_id": expert, "choice": choice} for vid, expert, choice in votes]
        verdicts_column = [{"judge": self.judge_names.get(jid, str(jid)), "ab": ab, "ba": ba,
                            "verdict": combine_asked(ab, ba, n)} for jid, ab, ba, n in verdicts]
        return {"decision": decision.label, "source": decision.source, "agreement": decision.agreement,
                "votes": orjson.dumps(votes_column).decode(), "verdicts": orjson.dumps(verdicts_column).decode(),
                "policy": self.policy}


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


def batch_rows(batch: Batch, labeller: Labeller, kto: bool, tally: Tally) -> Iterator[tuple[str, dict]]:
    """The batch's rows as (split, row), sample by sample, counted in ``tally``."""
    for sample_id, comparisons in groupby(batch.comparisons, key=itemgetter(1)):
        sample = batch.samples.get(sample_id)
        rows = list(_sample_rows(sample, comparisons, batch, labeller, kto, tally))
        if rows:
            tally.rows[sample.split] += len(rows)
            tally.samples[sample.split] += 1
            for row in rows:
                yield sample.split, row
    tally.comparisons += len(batch.comparisons)


def _sample_rows(sample: SampleRows | None, comparisons, batch: Batch, labeller: Labeller, kto: bool,
                 tally: Tally) -> Iterator[dict]:
    """One sample's rows, without repeats: two pairs with the same texts in one prompt teach the same thing."""
    seen: set = set()
    for cid, _, a_id, b_id in comparisons:
        votes, verdicts = batch.votes.get(cid, []), batch.verdicts.get(cid, ())
        tally.verdicts[verdicts] += 1
        decision = labeller.decide(votes, verdicts)
        if decision.label is None:
            tally.dropped[decision.dropped] += 1
            continue
        if sample is None:
            tally.dropped["sample_without_abstracts"] += 1
            continue
        label, a, b = decision.label, batch.profiles[a_id], batch.profiles[b_id]
        decided = label in ("a", "b")
        chosen, rejected = (a, b) if label != "b" else (b, a)
        if decided and not chosen.is_valid:  # an invalid profile must never be taught as the better answer
            tally.dropped["invalid_chosen_profile"] += 1
            continue
        if not decided and not kto:
            tally.dropped[label] += 1  # a tie or "both bad" has no chosen answer
            continue
        tally.labels[label] += 1
        tally.sources[decision.source] += 1
        columns = labeller.columns(decision, votes, verdicts)
        if not kto:
            if _first(seen, (chosen.text, rejected.text), tally):
                yield pair_row(sample, cid, chosen, rejected, columns)
            continue
        for profile, desirable in ((chosen, decided), (rejected, False)):
            if _first(seen, (profile.text, desirable), tally):
                yield unpaired_row(sample, cid, profile, desirable, columns)


def _first(seen: set, key: tuple, tally: Tally) -> bool:
    if key in seen:
        tally.dropped["duplicate_rows"] += 1
        return False
    seen.add(key)
    return True


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def pair_row(sample: SampleRows, comparison_id: int, chosen: ProfileText, rejected: ProfileText, columns: dict) -> dict:
    """A row of TRL's conversational preference format, with provenance columns (which TRL ignores)."""
    return {"prompt": sample.prompt, "chosen": _assistant(chosen.text), "rejected": _assistant(rejected.text),
            "chosen_profile_id": chosen.id, "rejected_profile_id": rejected.id, "comparison_id": comparison_id,
            "sample": sample.name, **columns}


def unpaired_row(sample: SampleRows, comparison_id: int, profile: ProfileText, desirable: bool, columns: dict) -> dict:
    """A row of TRL's unpaired (KTO) format, with the same provenance columns."""
    return {"prompt": sample.prompt, "completion": _assistant(profile.text), "label": desirable,
            "profile_id": profile.id, "comparison_id": comparison_id, "sample": sample.name, **columns}


# --- writers -----------------------------------------------------------------------------------------


class HashingFile:
    """A file written once, front to back, hashed as it is written: no second pass to hash it."""

    def __init__(self, path: Path):
        self.handle = path.open("wb", buffering=1 << 20)
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.sha256.update(data)


class JsonlWriter:
    """One JSON line per row (orjson: the compact JSON TRL and ``datasets`` read), a file per split."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files = {split: HashingFile(folder / f"{split}.jsonl") for split in SPLITS}
        self.bytes = 0

    def write(self, split: str, row: dict) -> None:
        self.files[split].write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))

    def close(self) -> dict[str, str]:
        """The files' hashes, by name."""
        self.abort()
        self.bytes = sum((self.folder / f"{split}.jsonl").stat().st_size for split in SPLITS)
        return {f"{split}.jsonl": file.sha256.hexdigest() for split, file in self.files.items()}

    def abort(self) -> None:
        for file in self.files.values():
            file.handle.close()


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
    """Rows buffered per split and written as Parquet row groups of ROW_GROUP_ROWS rows."""

    def __init__(self, folder: Path, kto: bool):
        import pyarrow.parquet as pq

        self.schema = _arrow_schema(kto)
        self.writers = {split: pq.ParquetWriter(folder / f"{split}.parquet", self.schema, compression="zstd")
                        for split in SPLITS}
        self.pending: dict[str, list[dict]] = {split: [] for split in SPLITS}
        self.rows = {split: 0 for split in SPLITS}
        self.folder = folder
        self.bytes = 0

    def write(self, split: str, row: dict) -> None:
        self.pending[split].append(row)
        self.rows[split] += 1
        if len(self.pending[split]) >= ROW_GROUP_ROWS:
            self._write_group(split)

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
        return JsonlWriter(folder)
    if export.format == ExportFormat.PARQUET:
        return ParquetWriter(folder, export.ties_as_kto)
    return HfWriter(folder, export.ties_as_kto)


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
    return JobStatus.CANCELLED if isinstance(exc, Cancelled) else JobStatus.FAILED


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


def _stream(export: DatasetExport, labeller: Labeller, writer, tally: Tally, progress: Progress | None) -> None:
    source = Source(export.campaign)
    total = source.comparisons().count()
    if progress:
        progress.start(total)
    last_report = time.monotonic()
    for sample_ids in sample_batches(source):
        batch = read_batch(source, sample_ids, export.test_fraction)
        for split, row in batch_rows(batch, labeller, export.ties_as_kto, tally):
            writer.write(split, row)
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
    # Answers kept but not read: replaced by an undo or a revision, or on an item withdrawn from its campaign.
    superseded: int = 0
    withdrawn: int = 0

    @classmethod
    def of(cls, labels: agreement.Labels) -> ExpertFigures:
        against_experts = {j.judge_id: j.agreement for j in agreement.judge_behaviour(labels, n_boot=CARD_BOOT)}
        return cls(len(labels.votes), against_experts, agreement.expert_vs_expert(labels, n_boot=CARD_BOOT),
                   labels.superseded, labels.withdrawn)


def card_figures(figures: ExpertFigures, judges: dict[int, agreement.JudgeTally]) -> dict:
    """Agreement at export time, as plain numbers (stored with the export and written into the card).

    ``figures``: from the votes and the verdicts on voted comparisons (κ, α); ``judges``: each judge's
    tally over every comparison the export read (for flips, position bias and invalid output).
    """
    against_experts, experts = figures.against_experts, figures.experts
    return {
        "votes": figures.votes,
        "superseded_votes": figures.superseded,
        "withdrawn_votes": figures.withdrawn,
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

