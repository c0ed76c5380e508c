"""Export throughput on PostgreSQL: rows/s, MB/s and peak memory of `annotation.export.dataset.export_dataset`.

    .venv/bin/python bench/export.py                        # 10k, 100k and 1M preference pairs
    .venv/bin/python bench/export.py --sizes 10000,100000   # quicker
    .venv/bin/python bench/export.py --format parquet
    .venv/bin/python bench/export.py --sizes 100000 --against main   # before/after: main's export on the same data
    .venv/bin/python bench/export.py --smoke                # CI: 240 pairs, exported in each format, checks only

For each size it creates a throwaway database (``compx_bench``, from a migrated template) and fills it
through the product's models — samples of four ~150-word abstracts, eight candidate profiles of 5–8
competencies from two generators (parsed by the product's profile parser), 12 comparisons per sample (a
knockout tournament of 8), one judge's answers in both orders as the judging session stores them (order
flips, invalid answers), and expert votes in a campaign on 5% of the comparisons — then runs the export in
a fresh process (so its peak RSS is its own) with the expert-overrides-judge policy, and drops the database.
Needs PostgreSQL on BENCH_PG (default postgres://postgres@127.0.0.1:5432) with a superuser; BENCH_DB names
the throwaway database (default compx_bench; the template is its name + "_template"). With ``--against
REF`` the same data is exported twice, first by the export code of git ref REF (its tree unpacked into a
temporary folder), then by this checkout's, and the ratio of their times is printed.

Checks, for every size (exit 1 when one fails): every comparison was read, the snapshot's files match
their recorded hashes, every row reads back (JSONL: as JSON; Parquet / hf: with pyarrow / datasets) with
TRL's columns, and the row counts match the files.

"export CPU s" is the exporting process's own CPU time (all its threads; PostgreSQL's is not included): on
a busy machine it tells what the export costs when the wall clock does not. "data sha256" is a digest of
the data files' hashes (README.md left out: it has the time; so is the hf format's state.json: a random
fingerprint): the same code and data give the same digest, so a change that should not change the output
can be checked against the digest from before it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench._refs import unpack  # noqa: E402

SERVER = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
DATABASE = os.environ.get("BENCH_DB", "compx_bench")  # created and dropped for each size
TEMPLATE = f"{DATABASE}_template"
PAIRS_PER_SAMPLE = 12  # the thesis' knockout tournament: 8 candidates → 12 preference pairs
CANDIDATES = 8
VOTED_SHARE = 0.05  # experts label a small share; the judge labels everything
WORDS = (
    "protein folding sequence alignment genome assembly variant calling single-cell transcriptomics graph neural "
    "network microscopy image segmentation molecular dynamics simulation free energy docking ligand binding "
    "phylogenetic inference metagenomics bayesian model uncertainty calibration benchmark dataset clinical cohort "
    "survival analysis mass spectrometry proteomics chromatin accessibility enhancer promoter regulatory element "
    "we propose a method that improves accuracy on public benchmarks and scales to large data the results show "
    "significant gains compared with existing approaches experiments demonstrate robustness across species"
).split()


# --- the parent: databases, processes, the report ----------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated numbers of comparisons")
    parser.add_argument("--format", default="jsonl", choices=FORMATS)
    parser.add_argument("--smoke", action="store_true", help=f"CI size: {SMOKE_SIZE} pairs in each format")
    parser.add_argument("--against", metavar="GIT_REF", help="also export the same data with this ref's code")
    parser.add_argument("--child", choices=["build", "export"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "build":
        build(args.size)
        return 0
    if args.child == "export":
        export(args.format, Path(args.out))
        return 0
    sizes, formats = ([SMOKE_SIZE], FORMATS) if args.smoke else ([int(s) for s in args.sizes.split(",")], [args.format])
    print(f"export benchmark · PostgreSQL · policy expert_overrides · {os.cpu_count()} cores · "
          f"load average {os.getloadavg()[0]:.1f} at start")
    print(f"{'comparisons':>12} {'format':>7} {'code':>8} {'rows':>10} {'build s':>8} {'export s':>9} {'rows/s':>9} {'MB':>8} "
          f"{'MB/s':>7} {'peak RSS MB':>12} {'export CPU s':>13} {'data sha256':>12}  checks")
    _make_template()
    trees = {"this": REPO}
    failed = 0
    try:
        if args.against:
            trees = {args.against[:8]: unpack(args.against), **trees}
        for size in sizes:
            failed += _run_size(size, formats, trees)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        _psql(f"DROP DATABASE IF EXISTS {DATABASE}")
        _psql(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        for tree in trees.values():
            if tree != REPO:
                shutil.rmtree(tree.parent, ignore_errors=True)
    return 1 if failed else 0


FORMATS = ["jsonl", "parquet", "hf"]
SMOKE_SIZE = 240  # 20 samples: every kind of row and drop, in seconds


def _run_size(size: int, formats: list[str], trees: dict[str, Path]) -> int:
    """Build the data, export it in each format with each tree's code, print a line each; the failed checks."""
    _psql(f"DROP DATABASE IF EXISTS {DATABASE}")
    _psql(f"CREATE DATABASE {DATABASE} TEMPLATE {TEMPLATE}")
    started = time.monotonic()
    _child("build", "--size", str(size))
    _psql("ANALYZE", DATABASE)  # the planner's statistics for the data just loaded, as autovacuum would make them
    built = time.monotonic() - started
    failed, seconds = 0, {}  # (format, code) → export seconds
    try:
        for fmt, (code, tree) in ((fmt, item) for fmt in formats for item in trees.items()):
            out = Path(tempfile.mkdtemp(prefix="compx-bench-")) / "snapshot"
            try:
                result = json.loads(_child("export", "--format", fmt, "--out", str(out), tree=tree).splitlines()[-1])
            finally:
                shutil.rmtree(out.parent, ignore_errors=True)
            problems = result["problems"]
            if result["comparisons"] != size:
                problems.append(f"read {result['comparisons']} comparisons of {size}")
            mb, seconds[fmt, code] = result["bytes"] / 1e6, result["seconds"]
            print(f"{size:>12,} {fmt:>7} {code:>8} {result['rows']:>10,} {built:>8.1f} {result['seconds']:>9.1f} "
                  f"{result['rows'] / result['seconds']:>9,.0f} {mb:>8,.1f} {mb / result['seconds']:>7.1f} "
                  f"{result['peak_rss_mb']:>12.0f} {result['cpu']:>13.1f} {result['data_sha256'][:12]:>12}  "
                  + ("ok" if not problems else "FAILED: " + "; ".join(problems)), flush=True)
            failed += bool(problems)
    finally:
        _psql(f"DROP DATABASE IF EXISTS {DATABASE}")
    if len(trees) == 2:
        before = next(iter(trees))
        for fmt in formats:
            print(f"{'':>12} {fmt}: this checkout's export takes {seconds[fmt, 'this'] / seconds[fmt, before]:.2f}x "
                  f"the time of {before}'s")
    return failed


def _make_template() -> None:
    _psql(f"DROP DATABASE IF EXISTS {DATABASE}")
    _psql(f"DROP DATABASE IF EXISTS {TEMPLATE}")
    _psql(f"CREATE DATABASE {TEMPLATE}")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=_env(TEMPLATE), check=True)


def _child(*args: str, tree: Path = REPO) -> str:
    """This script's child part, run on the code of ``tree`` (the checkout, or another ref's files)."""
    command = [sys.executable, __file__, "--child", *args]
    done = subprocess.run(command, cwd=tree, env=_env(DATABASE, tree), capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _env(database: str, tree: Path = REPO) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": f"{SERVER}/{database}", "DJANGO_SETTINGS_MODULE": "compx_site.settings",
            "PYTHONPATH": str(tree)}


def _psql(sql: str, database: str = "postgres") -> None:
    import psycopg

    with psycopg.connect(f"{SERVER}/{database}", autocommit=True) as conn:
        conn.execute(sql)


# --- child: build the data --------------------------------------------------------------------------


def build(size: int) -> None:
    """The data as the product stores it: its models, bulk_create where the product uses it, the product's
    parsers for profiles and verdicts (each distinct text parsed once: the texts cycle through pools)."""
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.db import transaction

    from annotation.models import Campaign, Generator, Judge

    rng = random.Random(0)
    samples = math.ceil(size / PAIRS_PER_SAMPLE)
    world = _World(
        generators=[Generator.objects.create(name=name) for name in ("smollm2-base", "smollm2-dpo")],
        judge=Judge.objects.create(name="bench-judge", model="m"),
        experts=[User.objects.create(username=f"expert{i}") for i in range(3)],
        pools=_Pools(rng, samples),
    )
    world.campaign = Campaign.objects.create(name="bench", judge=world.judge)
    made = 0
    for first in range(0, samples, FLUSH_SAMPLES):
        with transaction.atomic():
            made += _add_samples(world, range(first, min(first + FLUSH_SAMPLES, samples)), size - made, rng)


FLUSH_SAMPLES = 2000  # samples written per transaction


class _World:
    def __init__(self, generators, judge, experts, pools):
        self.generators, self.judge, self.experts, self.pools = generators, judge, experts, pools
        self.campaign = None


class _Pools:
    """Texts to cycle through, parsed once each: generating and parsing 300k abstracts and profiles one by one
    would dominate the run. A small run makes only as many as it uses."""

    def __init__(self, rng: random.Random, samples: int):
        from annotation.judging.backends import Outcome
        from annotation.judging.verdicts import parse_verdict
        from annotation.profiles.store import parsed_fields

        self.abstracts = [" ".join(rng.choices(WORDS, k=rng.randint(135, 165))).capitalize() + "."
                          for _ in range(min(3000, 4 * samples))]
        self.profiles = []
        for _ in range(min(4000, CANDIDATES * samples)):
            names = [" ".join(rng.choices(WORDS, k=2)).title() for _ in range(rng.randint(5, 8))]
            body = "\n".join(f"- {name}: {' '.join(rng.choices(WORDS, k=18)).capitalize()}." for name in names)
            text = f'Domain: "{names[0]}"\n\nCompetencies:\n{body}'
            self.profiles.append((text, parsed_fields(text)))
        reasons = [" ".join(rng.choices(WORDS, k=40)) for _ in range(min(500, 20 * samples))]
        # (shown label, reason) → the judge's answer as a backend returns it, parsed by the product's parser.
        self.answers = {
            (shown, i): Outcome(text, parse_verdict(text))
            for shown in ("A", "B", "tie") for i, reason in enumerate(reasons)
            for text in [json.dumps({"reasoning": reason, "preferred": shown})]
        }
        self.reasons = len(reasons)
        self.garbled = Outcome("garbled", parse_verdict("garbled"))

    def answer(self, shown: str, n: int):
        return self.answers[shown, n % self.reasons]


def _add_samples(world: _World, numbers: range, left: int, rng: random.Random) -> int:
    """Samples ``numbers`` with their documents, eight candidates, up to ``left`` comparisons, the judge's
    verdicts and the experts' votes; returns the comparisons made."""
    from annotation.models import Comparison, Document, Profile, Sample, SampleDocument

    pools = world.pools
    samples = Sample.objects.bulk_create([Sample(name=f"author-{s:07d}") for s in numbers])
    documents = Document.objects.bulk_create([
        Document(external_id=f"doc-{d}", title=f"On {WORDS[d % len(WORDS)]} and {WORDS[d * 7 % len(WORDS)]}, part {d}",
                 abstract=pools.abstracts[d % len(pools.abstracts)], year=2024, content_hash=f"{d:x}")
        for s in numbers for d in range(s * 4, s * 4 + 4)
    ])
    SampleDocument.objects.bulk_create([SampleDocument(sample=sample, document=documents[i * 4 + position],
                                                       position=position)
                                        for i, sample in enumerate(samples) for position in range(4)])
    profiles = []
    for sample in samples:
        for c in range(CANDIDATES):
            text, fields = pools.profiles[(sample.pk * CANDIDATES + c) % len(pools.profiles)]
            generator = world.generators[c * len(world.generators) // CANDIDATES]  # half from each generator
            profiles.append(Profile(sample=sample, generator=generator, candidate_index=c % 4, raw_text=text,
                                    prompt_version="extract-v1", **fields))
    profiles = Profile.objects.bulk_create(profiles)
    pairs = [(i, j) for i in range(CANDIDATES) for j in range(i + 1, CANDIDATES)]
    comparisons = []
    for i, sample in enumerate(samples):
        mine = profiles[i * CANDIDATES:(i + 1) * CANDIDATES]
        for a, b in rng.sample(pairs, PAIRS_PER_SAMPLE)[:max(0, left - len(comparisons))]:
            comparisons.append(Comparison(sample=sample, profile_a=mine[a], profile_b=mine[b], source="tournament"))
    comparisons = Comparison.objects.bulk_create(comparisons)
    _judge_and_vote(world, comparisons, rng)
    return len(comparisons)


SHOWN = {"ab": {"a": "A", "b": "B", "tie": "tie"}, "ba": {"a": "B", "b": "A", "tie": "tie"}}  # canonical → shown


def _judge_and_vote(world: _World, comparisons: list, rng: random.Random) -> None:
    """The judge's verdicts in both orders (~85% consistent, ~10% order flips, ~3% invalid, a few ties) and
    expert votes on VOTED_SHARE of the comparisons (80% agreeing with the truth)."""
    from annotation.judging.session import verdict_row
    from django.utils import timezone

    from annotation.models import Assignment, CampaignItem, JudgeVerdict, Vote

    pools, verdicts, voted, now = world.pools, [], [], timezone.now()
    for comparison in comparisons:
        truth = rng.choice("ab")
        for order in ("ab", "ba"):
            roll = rng.random()
            label = truth if roll < 0.9 else ("tie" if roll < 0.92 else ("a" if order == "ab" else "b"))
            answer = pools.answer(SHOWN[order][label], len(verdicts)) if rng.random() > 0.015 else pools.garbled
            verdicts.append(verdict_row(world.judge, comparison.pk, order, answer))
        if rng.random() < VOTED_SHARE:
            choice = truth if rng.random() < 0.8 else rng.choice(["a", "b", "tie", "both_bad"])
            voted.append((comparison, world.experts[comparison.pk % len(world.experts)], choice))
    JudgeVerdict.objects.bulk_create(verdicts)
    world.campaign.add_comparisons([comparison for comparison, _, _ in voted])
    items = dict(CampaignItem.objects.filter(campaign=world.campaign, comparison__in=[c for c, _, _ in voted])
                 .values_list("comparison_id", "pk"))
    assignments = Assignment.objects.bulk_create([
        Assignment(item_id=items[comparison.pk], expert=expert, voted_at=now)
        for comparison, expert, _ in voted])
    CampaignItem.objects.filter(pk__in=items.values()).update(assignment_count=1)
    Vote.objects.bulk_create([
        Vote(assignment=assignment, expert=expert, comparison=comparison, campaign=world.campaign, choice=choice,
             first_choice=choice, seconds_spent=round(rng.uniform(20, 90), 1))
        for assignment, (comparison, expert, choice) in zip(assignments, voted)])
    world.campaign.experts.add(*{expert for _, expert, _ in voted})


# --- child: the export -------------------------------------------------------------------------------


def export(fmt: str, out: Path) -> None:
    import django

    django.setup()
    from annotation.export.dataset import export_dataset, verify_snapshot
    from annotation.models import DatasetExport

    item = DatasetExport.objects.create(name=out.parent.name, policy="expert_overrides", format=fmt, test_fraction=0.1)
    started, cpu = time.monotonic(), time.process_time()
    result = export_dataset(item, out_dir=out)
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    item.refresh_from_db()
    counts = result.counts
    files = sorted((name, info["sha256"]) for name, info in counts["files"].items()
                   if name != "README.md" and not name.endswith("state.json"))
    data_sha256 = hashlib.sha256(json.dumps(files).encode()).hexdigest()
    problems = [] if verify_snapshot(item) else ["the files do not match their recorded hashes"]
    problems += _read_back(fmt, out, counts)
    print(json.dumps({"rows": counts["train"] + counts["test"], "comparisons": counts["comparisons"],
                      "seconds": seconds, "cpu": cpu, "bytes": result.bytes, "peak_rss_mb": peak,
                      "data_sha256": data_sha256, "problems": problems}))


TRL_COLUMNS = {"prompt", "chosen", "rejected"}


def _read_back(fmt: str, out: Path, counts: dict) -> list[str]:
    """What is wrong with the snapshot's rows as a reader loads them (after the timing: not part of it)."""
    problems = []
    if not counts["train"] or not counts["test"]:
        problems.append(f"a split is empty: {counts['train']} train, {counts['test']} test rows")
    for split in ("train", "test"):
        if fmt == "jsonl":
            with (out / f"{split}.jsonl").open("rb") as handle:
                rows = [json.loads(line) for line in handle]
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(out / f"{split}.parquet").to_pylist()
        else:
            from datasets import load_from_disk

            rows = load_from_disk(str(out))[split]
        if len(rows) != counts[split]:
            problems.append(f"{split}: {len(rows)} rows read back, {counts[split]} counted")
        bad = sum(1 for row in rows if not TRL_COLUMNS <= row.keys() or row["chosen"][0]["role"] != "assistant")
        if bad:
            problems.append(f"{split}: {bad} rows without TRL's prompt / chosen / rejected messages")
    return problems


if __name__ == "__main__":
    sys.exit(main())
