"""A web process serves the review screens without the numeric and ML stack: numpy, scipy, scikit-learn,
pandas, pyarrow, openai and torch cost ~190 MB and ~1.5 s per gunicorn worker, and only staff pages and the
Celery worker need them (they import them when used)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("numpy", "scipy", "sklearn", "pandas", "pyarrow", "openai", "torch", "transformers", "datasets")
PROBE = f"""
import sys
import django
django.setup()
from django.urls import get_resolver
get_resolver().url_patterns  # every view module, as the first request imports them
import compx_site.wsgi
print(" ".join(name for name in {HEAVY!r} if name in sys.modules))
"""


def test_a_web_worker_imports_no_numeric_or_ml_library(tmp_path):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "compx_site.settings", "COMPX_VAR_DIR": str(tmp_path)}
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == []
