"""bench/round.py --smoke: the round benchmark runs end to end at the tiny preset and prints its figures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.model
def test_the_round_benchmark_smoke_run_prints_every_figure(tmp_path):
    env = {**os.environ, "COMPX_VAR_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    done = subprocess.run([sys.executable, str(REPO / "bench" / "round.py"), "--smoke"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for needle in ("pairs labelled (training pairs):", "DPO steps: 2", "(independent):",
                   "(LABELLED THE TRAINING DATA (not independent)):", "copied from the abstracts", "valid ",
                   "seconds: generate", "headline:"):
        assert needle in out, needle
