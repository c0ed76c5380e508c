"""Every benchmark in bench/ runs to the end at its smoke size, and its own checks pass (its speed is not checked).

The convention: a benchmark declares its smoke size as a ``--smoke`` flag (``parser.add_argument("--smoke",
...)``), runs at that size in seconds and exits non-zero when one of its checks fails. Benchmarks are found
by that convention, so a new one joins as soon as it declares ``--smoke``; one that does not is skipped,
saying so, and so is one whose smoke run another test makes (that test also checks what it prints). Each
runs in its own process, as ``make bench`` runs it: its files under a temporary COMPX_VAR_DIR, no
DATABASE_URL (a bench makes its own databases), and throwaway PostgreSQL databases named for this test
process, so that two runs on one machine never drop each other's.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHES = sorted(path for path in (REPO / "bench").glob("*.py") if not path.name.startswith("_"))
SMOKE_TIMEOUT_S = 600  # a smoke run takes seconds on an idle machine; this only stops one that hangs


def declares_smoke(path: Path) -> bool:
    """Whether the script's argument parser has a ``--smoke`` flag (read from its source, not run)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"
                and any(isinstance(arg, ast.Constant) and arg.value == "--smoke" for arg in node.args)):
            return True
    return False


def own_smoke_test(bench: Path) -> Path | None:
    """Another test module that runs this bench's smoke size itself."""
    for test in sorted((REPO / "tests").glob("test_*.py")):
        text = test.read_text(encoding="utf-8")
        if test.name != Path(__file__).name and f'"{bench.name}"' in text and '"--smoke"' in text:
            return test
    return None


def smoke_env(var_dir: Path) -> dict[str, str]:
    from django.conf import settings

    server = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
    name = f"compx_smoke_{os.getpid()}"
    env = {
        **os.environ,
        "COMPX_VAR_DIR": str(var_dir), "COMPX_MODEL_CACHE": str(settings.MODEL_CACHE_DIR),  # the installed models
        "BENCH_PG": server, "BENCH_DB": name,  # bench/export.py
        "BENCH_DATABASE_URL": f"{server}/{name}_review",  # bench/review_load.py
        "BENCH_CACHE_URL": "",  # sessions in the throwaway database, not in a Redis database others share
        "PYTHONUNBUFFERED": "1",
    }
    for variable in ("DATABASE_URL", "CELERY_BROKER_URL"):  # the developer's own: no bench may write there
        env.pop(variable, None)
    return env


@pytest.mark.parametrize("bench", BENCHES, ids=[path.stem for path in BENCHES])
def test_the_benchmark_runs_at_its_smoke_size_and_its_checks_pass(bench: Path, tmp_path):
    if not declares_smoke(bench):
        pytest.skip(f"bench/{bench.name} declares no --smoke size yet (see this module's docstring)")
    other = own_smoke_test(bench)
    if other:
        pytest.skip(f"{other.name} runs bench/{bench.name} --smoke and checks what it prints")
    done = subprocess.run([sys.executable, str(bench), "--smoke"], cwd=REPO, env=smoke_env(tmp_path / "var"),
                          capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    assert done.returncode == 0, f"bench/{bench.name} --smoke exited {done.returncode}:\n" \
                                 f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


def test_the_convention_is_read_from_the_source():
    assert declares_smoke(REPO / "bench" / "export.py")
    assert not declares_smoke(Path(__file__))  # this file names the flag only in strings and comments
