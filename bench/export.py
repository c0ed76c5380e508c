"""Export throughput on PostgreSQL: rows/s, MB/s and peak memory of `annotation.export.dataset.export_dataset`.

    .venv/bin/python bench/export.py                        # 10k, 100k and 1M preference pairs
    .venv/bin/python bench/export.py --sizes 10000,100000   # quicker
    .venv/bin/python bench/export.py --format parquet

For each size it creates a throwaway database (``compx_bench``, from a migrated template), loads realistic
data with COPY — samples of four ~150-word abstracts, eight candidate profiles of 5–8 competencies from
two generators, 12 comparisons per sample (a knockout tournament of 8), one judge's verdicts in both
orders (with order flips and invalid answers), and expert votes on 5% of the comparisons — then runs the
export in a fresh process (so its peak RSS is its own) with the expert-overrides-judge policy, and drops
the database. Needs PostgreSQL on BENCH_PG (default postgres://postgres@127.0.0.1:5432) with a superuser;
BENCH_DB names the throwaway database (default compx_bench; the template is its name + "_template").

"export CPU s" is the exporting process's own CPU time (all its threads; PostgreSQL's is not included): on
a busy machine it tells what the export costs when the wall clock does not. "data sha256" is a digest of
the data files' hashes (README.md left out: it has the time; so is the hf format's state.json: a random
fingerprint): the same code and data give the same digest, so a change that should not change the output
can be checked against the digest from before it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
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
SERVER = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
DATABASE = os.environ.get("BENCH_DB", "compx_bench")  # created and dropped for each size
TEMPLATE = f"{DATABASE}_template"
PAIRS_PER_SAMPLE = 12  # the thesis' knockout tournament: 8 candidates → 12 preference pairs
CANDIDATES = 8
VOTED_SHARE = 0.05  # experts label a small share; the judge labels everything
NOW = "2026-11-25 00:00:00+00"
WORDS = (
    "protein folding sequence alignment genome assembly variant calling single-cell transcriptomics graph neural "
    "network microscopy image segmentation molecular dynamics simulation free energy docking ligand binding "
    "phylogenetic inference metagenomics bayesian model uncertainty calibration benchmark dataset clinical cohort "
    "survival analysis mass spectrometry proteomics chromatin accessibility enhancer promoter regulatory element "
    "we propose a method that improves accuracy on public benchmarks and scales to large data the results show "
    "significant gains compared with existing approaches experiments demonstrate robustness across species"
).split()


# --- the parent: databases, processes, the report ----------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated numbers of comparisons")
    parser.add_argument("--format", default="jsonl", choices=["jsonl", "parquet", "hf"])
    parser.add_argument("--child", choices=["build", "export"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "build":
        return build(args.size)
    if args.child == "export":
        return export(args.format, Path(args.out))
    sizes = [int(size) for size in args.sizes.split(",")]
    print(f"export benchmark · PostgreSQL · format {args.format} · policy expert_overrides · {os.cpu_count()} cores · "
          f"load average {os.getloadavg()[0]:.1f} at start")
    print(f"{'comparisons':>12} {'rows':>10} {'build s':>8} {'export s':>9} {'rows/s':>9} {'MB':>8} {'MB/s':>7} "
          f"{'peak RSS MB':>12} {'export CPU s':>13} {'data sha256':>12}")
    _make_template()
    try:
        for size in sizes:
            print(_run_size(size, args.format), flush=True)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        _psql(f"DROP DATABASE IF EXISTS {DATABASE}")
        _psql(f"DROP DATABASE IF EXISTS {TEMPLATE}")


def _run_size(size: int, fmt: str) -> str:
    _psql(f"DROP DATABASE IF EXISTS {DATABASE}")
    _psql(f"CREATE DATABASE {DATABASE} TEMPLATE {TEMPLATE}")
    started = time.monotonic()
    _child("build", "--size", str(size))
    built = time.monotonic() - started
    out = Path(tempfile.mkdtemp(prefix="compx-bench-")) / "snapshot"
    try:
        result = json.loads(_child("export", "--format", fmt, "--out", str(out)).strip().splitlines()[-1])
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
        _psql(f"DROP DATABASE IF EXISTS {DATABASE}")
    mb = result["bytes"] / 1e6
    return (f"{size:>12,} {result['rows']:>10,} {built:>8.1f} {result['seconds']:>9.1f} "
            f"{result['rows'] / result['seconds']:>9,.0f} {mb:>8,.0f} {mb / result['seconds']:>7.1f} "
            f"{result['peak_rss_mb']:>12.0f} {result['cpu']:>13.1f} {result['data_sha256'][:12]:>12}")


def _make_template() -> None:
    _psql(f"DROP DATABASE IF EXISTS {DATABASE}")
    _psql(f"DROP DATABASE IF EXISTS {TEMPLATE}")
    _psql(f"CREATE DATABASE {TEMPLATE}")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=_env(TEMPLATE), check=True)


def _child(*args: str) -> str:
    command = [sys.executable, __file__, "--child", *args]
    done = subprocess.run(command, cwd=REPO, env=_env(DATABASE), capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _env(database: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": f"{SERVER}/{database}", "DJANGO_SETTINGS_MODULE": "compx_site.settings",
            "PYTHONPATH": str(REPO)}


def _psql(sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(sql)


# --- child: load the data ----------------------------------------------------------------------------


def build(size: int) -> None:
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.db import connection

    from annotation.models import Campaign, Generator, Judge

    rng = random.Random(0)
    generators = [Generator.objects.create(name=name).pk for name in ("smollm2-base", "smollm2-dpo")]
    judge = Judge.objects.create(name="bench-judge", model="m")
    campaign = Campaign.objects.create(name="bench", judge=judge)
    experts = [User.objects.create(username=f"expert{i}").pk for i in range(3)]
    pools = _Pools(rng)
    with connection.cursor() as cursor:
        raw = cursor.connection
        raw.execute("SET session_replication_role = replica")  # bulk load: skip FK triggers (superuser only)
        _load(raw, size, rng, pools, generators, judge.pk, campaign.pk, experts)
        raw.execute("SET session_replication_role = DEFAULT")
        for table in ("sample", "document", "sampledocument", "profile", "comparison", "judgeverdict",
                      "campaignitem", "assignment", "vote"):
            raw.execute(f"SELECT setval(pg_get_serial_sequence('annotation_{table}', 'id'), "
                        f"(SELECT coalesce(max(id), 1) FROM annotation_{table}))")
    connection.commit() if not connection.get_autocommit() else None
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


class _Pools:
    """Pre-escaped texts to cycle through: generating 300k abstracts word by word would dominate the run."""

    def __init__(self, rng: random.Random):
        self.abstracts = [_escape(" ".join(rng.choices(WORDS, k=rng.randint(135, 165))).capitalize() + ".")
                          for _ in range(3000)]
        self.profiles = [self._profile(rng) for _ in range(4000)]
        self.reasoning = [_escape(" ".join(rng.choices(WORDS, k=40))) for _ in range(500)]

    @staticmethod
    def _profile(rng: random.Random) -> tuple[str, str, str]:
        names = [" ".join(rng.choices(WORDS, k=2)).title() for _ in range(rng.randint(5, 8))]
        items = [{"name": n, "description": " ".join(rng.choices(WORDS, k=18)).capitalize() + "."} for n in names]
        body = "\n".join(f"- {i['name']}: {i['description']}" for i in items)
        return _escape(body), _escape(json.dumps(items)), names[0]


def _escape(text: str) -> str:
    """COPY text format: backslash, tab and newline escaped."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _load(raw, size: int, rng: random.Random, pools: _Pools, generators: list[int], judge_id: int,
          campaign_id: int, experts: list[int]) -> None:
    samples = math.ceil(size / PAIRS_PER_SAMPLE)
    pairs = [(i, j) for i in range(CANDIDATES) for j in range(i + 1, CANDIDATES)]
    tables = {name: io.StringIO() for name in ("sample", "document", "sampledocument", "profile", "comparison",
                                               "judgeverdict", "campaignitem", "assignment", "vote")}
    ids = {"comparison": 0, "verdict": 0, "vote": 0}
    for s in range(1, samples + 1):
        _sample_rows(tables, s, pools, generators)
        for (i, j) in rng.sample(pairs, PAIRS_PER_SAMPLE):
            if ids["comparison"] == size:
                break
            ids["comparison"] += 1
            _comparison_rows(tables, ids, s, (s - 1) * CANDIDATES + 1 + i, (s - 1) * CANDIDATES + 1 + j, rng, pools,
                             judge_id, campaign_id, experts)
        if s % 2000 == 0 or s == samples:
            _flush(raw, tables)


def _sample_rows(tables: dict[str, io.StringIO], s: int, pools: _Pools, generators: list[int]) -> None:
    tables["sample"].write(f"{s}\tauthor-{s:07d}\ttrain\t{NOW}\n")
    for position in range(4):
        d = (s - 1) * 4 + position + 1
        abstract = pools.abstracts[d % len(pools.abstracts)]
        tables["document"].write(f"{d}\tdoc-{d}\tOn {WORDS[d % len(WORDS)]} and {WORDS[(d * 7) % len(WORDS)]}, "
                                 f"part {d}\t{abstract}\t[]\t2024\tx\t{NOW}\n")
        tables["sampledocument"].write(f"{d}\t{position}\t{d}\t{s}\n")
    for c in range(CANDIDATES):
        p = (s - 1) * CANDIDATES + c + 1
        body, competencies, first = pools.profiles[p % len(pools.profiles)]
        domain = f"{first} in sample {s}, candidate {c}"
        text = f'Domain: "{domain}"\\n\\nCompetencies:\\n{body}'
        generator = generators[c * len(generators) // CANDIDATES]  # half the candidates from each generator
        tables["profile"].write(f"{p}\t{c % 4}\t{text}\t{domain}\t{competencies}\tt\t\textract-v1\t{{}}\t{NOW}\t"
                                f"{generator}\t{s}\n")


def _comparison_rows(tables, ids, s, a, b, rng, pools, judge_id, campaign_id, experts) -> None:
    cid = ids["comparison"]
    tables["comparison"].write(f"{cid}\ttournament\t{NOW}\t{a}\t{b}\t{s}\n")
    truth = rng.choice("ab")
    # ~85% consistent verdicts, ~10% order flips, ~3% invalid answers, a few ties.
    for order in ("ab", "ba"):
        ids["verdict"] += 1
        roll = rng.random()
        label = truth if roll < 0.9 else ("tie" if roll < 0.92 else ("a" if order == "ab" else "b"))
        valid = rng.random() > 0.015
        reasoning = pools.reasoning[ids["verdict"] % len(pools.reasoning)]
        preferred, raw = (label, f'{{"reasoning": "{reasoning}", "preferred": "{label.upper()}"}}') if valid else ("", "garbled")
        tables["judgeverdict"].write(f"{ids['verdict']}\t{order}\t{raw}\t{reasoning if valid else ''}\t{preferred}\t"
                                     f"{'t' if valid else 'f'}\t{'' if valid else 'no JSON object'}\tjudge-v1\t0\t{NOW}\t"
                                     f"{cid}\t{judge_id}\n")
    if rng.random() < VOTED_SHARE:
        ids["vote"] += 1
        vid, expert = ids["vote"], experts[cid % len(experts)]
        choice = truth if rng.random() < 0.8 else rng.choice(["a", "b", "tie", "both_bad"])
        tables["campaignitem"].write(f"{vid}\t\t1\t{campaign_id}\t{cid}\n")
        tables["assignment"].write(f"{vid}\tf\t\t{NOW}\t{expert}\t{vid}\n")
        tables["vote"].write(f"{vid}\t{choice}\t{choice}\tf\tf\t\t{{}}\tf\t{rng.uniform(20, 90):.1f}\t{NOW}\t{NOW}\t"
                             f"{vid}\t{cid}\t{expert}\n")


COLUMNS = {
    "sample": "id, name, split, created_at",
    "document": "id, external_id, title, abstract, authors, year, content_hash, created_at",
    "sampledocument": "id, position, document_id, sample_id",
    "profile": "id, candidate_index, raw_text, domain, competencies, is_valid, invalid_reason, prompt_version, "
               "settings, created_at, generator_id, sample_id",
    "comparison": "id, source, created_at, profile_a_id, profile_b_id, sample_id",
    "judgeverdict": 'id, "order", raw_text, reasoning, preferred, is_valid, error, prompt_version, cost_usd, '
                    "created_at, comparison_id, judge_id",
    "campaignitem": "id, gold_answer, assignment_count, campaign_id, comparison_id",
    "assignment": "id, flipped, blind_choice, created_at, expert_id, item_id",
    "vote": "id, choice, first_choice, revised_after_reveal, revealed, rationale, competency_flags, shown_flipped, "
            "seconds_spent, created_at, updated_at, assignment_id, comparison_id, expert_id",
}


def _flush(raw, tables: dict[str, io.StringIO]) -> None:
    with raw.cursor() as cursor:
        for name, buffer in tables.items():
            data = buffer.getvalue()
            if data:
                with cursor.copy(f"COPY annotation_{name} ({COLUMNS[name]}) FROM STDIN") as copy:
                    copy.write(data)
            buffer.seek(0)
            buffer.truncate()


# --- child: the export -------------------------------------------------------------------------------


def export(fmt: str, out: Path) -> None:
    import django

    django.setup()
    from annotation.export.dataset import export_dataset
    from annotation.models import DatasetExport

    item = DatasetExport.objects.create(name="bench", policy="expert_overrides", format=fmt, test_fraction=0.1)
    started, cpu = time.monotonic(), time.process_time()
    result = export_dataset(item, out_dir=out)
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    rows = result.counts["train"] + result.counts["test"]
    files = sorted((name, info["sha256"]) for name, info in result.counts["files"].items()
                   if name != "README.md" and not name.endswith("state.json"))
    data_sha256 = hashlib.sha256(json.dumps(files).encode()).hexdigest()
    print(json.dumps({"rows": rows, "seconds": seconds, "cpu": cpu, "bytes": result.bytes, "peak_rss_mb": peak,
                      "data_sha256": data_sha256}))


if __name__ == "__main__":
    main()
