"""Document import from JSONL or CSV: streamed, validated, all-or-nothing, idempotent.

A file is read once, in batches, inside one transaction. Every problem is collected with its line
number and field; if there is any, the transaction is rolled back and nothing is written.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from django.db import transaction

from ..models import Document, Sample, SampleDocument, Split

REQUIRED_FIELDS = ("id", "title", "abstract", "authors")
OPTIONAL_FIELDS = ("year", "sample")
BATCH_SIZE = 500
# Enough to show what is wrong with a file without flooding the admin page.
MAX_REPORTED_ERRORS = 200


@dataclass(frozen=True)
class Problem:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", field '{self.field}'" if self.field else "")
        return f"{where}: {self.message}"


class ImportFailed(Exception):
    def __init__(self, source: str, problems: list[Problem], more: int = 0):
        self.source = source
        self.problems = problems
        self.more = more
        super().__init__(self.report())

    def report(self) -> str:
        lines = [f"{self.source}: nothing imported, {len(self.problems) + self.more} problem(s):"]
        lines += [f"  {self.source}, {problem}" for problem in self.problems]
        if self.more:
            lines.append(f"  … and {self.more} more")
        return "\n".join(lines)


@dataclass
class ImportOptions:
    format: str = ""  # "jsonl" or "csv"; empty means guess from the file name
    group_by: str = ""  # "author" builds samples from each first author's documents
    sample_size: int = 5
    heldout_fraction: float = 0.0
    # A study that kept only titles: rows may lack an abstract (stored title-only, never used as a prompt).
    allow_title_only: bool = False


@dataclass
class ImportResult:
    documents_created: int = 0
    documents_unchanged: int = 0
    samples_created: int = 0
    memberships_created: int = 0
    title_only: int = 0  # of the file's documents, those without an abstract
    samples: set[str] = field(default_factory=set)

    def summary(self) -> str:
        text = (
            f"{self.documents_created} document(s) created, {self.documents_unchanged} unchanged, "
            f"{self.samples_created} sample(s) created, {self.memberships_created} sample membership(s) added"
        )
        if self.title_only:
            text += (f"; {self.title_only} document(s) are title-only (no abstract): their samples can carry "
                     "imported profiles and labels, and generation and judging refuse them")
        return text


@dataclass
class Row:
    line: int
    external_id: str
    title: str
    abstract: str
    authors: list[str]
    year: int | None
    sample: str

    @property
    def content_hash(self) -> str:
        payload = json.dumps([self.title, self.abstract, self.authors, self.year], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()


def heldout_for(sample_name: str, fraction: float) -> bool:
    """A stable per-sample coin: the same name always lands on the same side, whatever else is imported."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(sample_name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def detect_format(path: Path, explicit: str = "") -> str:
    if explicit:
        return explicit
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    if suffix in {".csv", ".tsv"}:
        return "csv"
    raise ImportFailed(str(path), [Problem(0, "", "unknown file type; use .jsonl or .csv, or pass --format")])


def _decoded_lines(handle, problems: list[Problem]) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(handle, start=1):
        try:
            # utf-8-sig on the first line: Excel's "CSV UTF-8" starts the file with a byte-order mark.
            yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(number, "", f"not UTF-8 (byte {exc.start + 1} is 0x{raw[exc.start]:02x})"))


def _jsonl_records(handle, problems: list[Problem]) -> Iterator[tuple[int, dict]]:
    for number, text in _decoded_lines(handle, problems):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(Problem(number, "", f"invalid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(record, dict):
            problems.append(Problem(number, "", f"expected a JSON object, got {type(record).__name__}"))
            continue
        yield number, record


def _csv_records(handle, problems: list[Problem], allow_title_only: bool = False) -> Iterator[tuple[int, dict]]:
    lines = _decoded_lines(handle, problems)
    numbers: list[int] = []

    def texts():
        for number, text in lines:
            numbers.append(number)
            yield text

    reader = csv.DictReader(texts())
    headers = [h.strip() for h in (reader.fieldnames or [])]
    missing = [name for name in REQUIRED_FIELDS if name not in headers and not (name == "abstract" and allow_title_only)]
    if missing:
        problems.append(Problem(1, ",".join(missing), f"CSV header lacks column(s) {', '.join(missing)}; "
                                                      f"found: {', '.join(headers) or 'nothing'}"))
        return
    reader.fieldnames = headers
    while True:
        consumed = reader.line_num
        try:
            record = next(reader)
        except StopIteration:
            return
        # A quoted field may span several physical lines: report the line the record starts on.
        start = numbers[consumed] if consumed < len(numbers) else numbers[-1]
        if None in record:
            problems.append(Problem(start, "", f"{len(record[None])} more value(s) than there are columns"))
            continue
        authors = record.get("authors") or ""
        record["authors"] = [a.strip() for a in authors.split(";") if a.strip()]
        year = (record.get("year") or "").strip()
        record["year"] = int(year) if year.isdigit() else (year or None)
        yield start, record


def _text_field(record: dict, name: str, line: int, problems: list[Problem], required: bool = True) -> str:
    value = record.get(name)
    if value is None or value == "":
        if required:
            problems.append(Problem(line, name, "missing" if name not in record else "empty"))
        return ""
    if name == "id" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        problems.append(Problem(line, name, f"expected text, got {type(value).__name__}"))
        return ""
    if not value.strip() and required:
        problems.append(Problem(line, name, "empty"))
    if "\x00" in value:
        problems.append(Problem(line, name, "contains a NUL byte, which no text column can hold"))
    limit = TEXT_LIMITS.get(name)
    if limit and len(value.strip()) > limit:
        problems.append(Problem(line, name, f"{len(value.strip())} characters; at most {limit}"))
    return value.strip()


# Checked before the database sees a row, so a long id is a line in the report, not a failed transaction.
TEXT_LIMITS = {"id": Document._meta.get_field("external_id").max_length,
               "sample": Sample._meta.get_field("name").max_length}


def validate_record(line: int, record: dict, problems: list[Problem], allow_title_only: bool = False) -> Row | None:
    before = len(problems)
    external_id = _text_field(record, "id", line, problems)
    title = _text_field(record, "title", line, problems)
    abstract = _text_field(record, "abstract", line, problems, required=not allow_title_only)
    if (not allow_title_only and problems[before:] and problems[-1].field == "abstract"
            and problems[-1].message in ("missing", "empty")):
        problems[-1] = Problem(line, "abstract", f"{problems[-1].message} (a study that kept only titles: import "
                                                 "with --allow-title-only)")
    sample = _text_field(record, "sample", line, problems, required=False)
    authors = record.get("authors")
    if authors is None or authors == [] or authors == "":
        problems.append(Problem(line, "authors", "missing" if "authors" not in record else "empty"))
    elif not isinstance(authors, list) or not all(isinstance(a, str) and a.strip() for a in authors):
        problems.append(Problem(line, "authors", "expected a list of names"))
    elif any("\x00" in a for a in authors):
        problems.append(Problem(line, "authors", "contains a NUL byte, which no text column can hold"))
    year = record.get("year")
    if year is not None and (not isinstance(year, int) or isinstance(year, bool) or not 1000 <= year <= 2100):
        problems.append(Problem(line, "year", f"expected a year such as 2021, got {year!r}"))
    if len(problems) > before:
        return None
    return Row(line, external_id, title, abstract, [a.strip() for a in authors], year, sample)


class _Writer:
    """Writes validated rows in batches and assigns them to samples."""

    def __init__(self, options: ImportOptions, problems: list[Problem]):
        self.options = options
        self.problems = problems
        self.result = ImportResult()
        self.batch: list[Row] = []
        self.seen_in_file: dict[str, tuple[int, str]] = {}
        self.author_counts: dict[str, int] = defaultdict(int)
        self.sample_positions: dict[int, int] = {}

    def add(self, row: Row) -> bool:
        """Queue the row; False when the file already had it."""
        earlier = self.seen_in_file.get(row.external_id)
        if earlier and earlier[1] != row.content_hash:
            self.problems.append(Problem(row.line, "id", f"duplicate id {row.external_id!r} with different "
                                                         f"content (first seen on line {earlier[0]})"))
            return False
        if earlier:
            return False
        self.seen_in_file[row.external_id] = (row.line, row.content_hash)
        self.batch.append(row)
        if len(self.batch) >= BATCH_SIZE:
            self.flush()
        return True

    def sample_name(self, row: Row) -> str:
        if row.sample or self.options.group_by != "author":
            return row.sample
        # First author only, so no abstract lands in two samples (or on both sides of the split).
        author = row.authors[0]
        index = self.author_counts[author] // self.options.sample_size
        self.author_counts[author] += 1
        return f"{author} #{index + 1}"

    def flush(self) -> None:
        rows, self.batch = self.batch, []
        if not rows:
            return
        existing = Document.objects.in_bulk([r.external_id for r in rows], field_name="external_id")
        new_docs = []
        for row in rows:
            doc = existing.get(row.external_id)
            if doc and doc.content_hash != row.content_hash:
                self.problems.append(Problem(row.line, "id", f"id {row.external_id!r} is already imported "
                                                             f"with different content"))
            elif not doc:
                new_docs.append(Document(external_id=row.external_id, title=row.title, abstract=row.abstract,
                                         authors=row.authors, year=row.year, content_hash=row.content_hash))
        if self.problems:
            return  # the import will be rolled back; stop writing but keep validating
        Document.objects.bulk_create(new_docs)
        self.result.documents_created += len(new_docs)
        self.result.documents_unchanged += len(rows) - len(new_docs)
        docs = Document.objects.in_bulk([r.external_id for r in rows], field_name="external_id")
        self._assign_samples([(self.sample_name(r), docs[r.external_id]) for r in rows])

    def _assign_samples(self, pairs: list[tuple[str, Document]]) -> None:
        pairs = [(name, doc) for name, doc in pairs if name]
        # In the order the file names them, not a set's (hash-seeded) order: sample ids follow the file, so
        # seeded generation over "the samples in id order" gives the same profiles on every import.
        names = list(dict.fromkeys(name for name, _ in pairs))
        samples = Sample.objects.in_bulk(names, field_name="name")
        for name in [n for n in names if n not in samples]:
            split = Split.HELDOUT if heldout_for(name, self.options.heldout_fraction) else Split.TRAIN
            samples[name] = Sample.objects.create(name=name, split=split)
            self.result.samples_created += 1
        self.result.samples.update(names)
        members = set(
            SampleDocument.objects.filter(sample__in=samples.values()).values_list("sample_id", "document_id")
        )
        for name, doc in pairs:
            sample = samples[name]
            if (sample.pk, doc.pk) in members:
                continue
            position = self._next_position(sample)
            SampleDocument.objects.create(sample=sample, document=doc, position=position)
            members.add((sample.pk, doc.pk))
            self.result.memberships_created += 1

    def _next_position(self, sample: Sample) -> int:
        if sample.pk not in self.sample_positions:
            last = SampleDocument.objects.filter(sample=sample).order_by("-position").first()
            self.sample_positions[sample.pk] = last.position + 1 if last else 0
        position = self.sample_positions[sample.pk]
        self.sample_positions[sample.pk] += 1
        return position


class _Rollback(Exception):
    pass


def import_documents(path: Path | str, options: ImportOptions | None = None) -> ImportResult:
    """Import a JSONL or CSV file of abstracts. Raises ImportFailed (nothing written) on any problem."""
    path = Path(path)
    options = options or ImportOptions()
    if options.group_by not in ("", "author"):
        raise ValueError(f"unknown --group-by {options.group_by!r}; the only grouping is 'author'")
    if options.sample_size < 1 or not 0 <= options.heldout_fraction < 1:
        raise ValueError("sample size must be ≥ 1 and the held-out fraction in [0, 1)")
    fmt = detect_format(path, options.format)
    problems: list[Problem] = []
    try:
        with transaction.atomic(), path.open("rb") as handle:
            writer = _Writer(options, problems)
            records = (_jsonl_records(handle, problems) if fmt == "jsonl"
                       else _csv_records(handle, problems, options.allow_title_only))
            for line, record in records:
                row = validate_record(line, record, problems, options.allow_title_only)
                if row:
                    writer.result.title_only += writer.add(row) and not row.abstract
            writer.flush()
            if not writer.seen_in_file and not problems:
                problems.append(Problem(0, "", "the file holds no records"))
            if problems:
                raise _Rollback
    except _Rollback:
        problems.sort(key=lambda p: p.line)
        raise ImportFailed(path.name, problems[:MAX_REPORTED_ERRORS], max(0, len(problems) - MAX_REPORTED_ERRORS))
    return writer.result
