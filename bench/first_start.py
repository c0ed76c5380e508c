"""The demo's first start, timed as a new user meets it: `make demo` on a fresh database (warm install), then
when the site answers, when the first pair is in the campaign, and when both jobs are done.

    .venv/bin/python bench/first_start.py            # the demo's own settings (README: First start, measured)
    .venv/bin/python bench/first_start.py --smoke    # tiny decoding: the pipeline runs through, in a minute or two

It runs `manage.py run_demo` itself with its own var dir (SQLite, the SQLAlchemy broker), as `make demo` does,
and prints the machine's load average beside each time: on a shared machine the times say little without it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addr", default="127.0.0.1:8797")
    parser.add_argument("--smoke", action="store_true", help="2 candidates of 12 tokens: no pair is expected")
    parser.add_argument("--timeout", type=float, default=3 * 3600)
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="compx-first-start-"))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(COMPX_VAR_DIR=str(var), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               DJANGO_SETTINGS_MODULE="compx_site.settings")
    env.setdefault("COMPX_MODEL_CACHE", str(REPO / "var" / "models"))
    subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v0"], cwd=REPO, env=env, check=True)
    os.environ.update(env)
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from annotation import demo
    from annotation.models import CampaignItem, Generator, Job, JobStatus

    if args.smoke:  # the demo keeps an existing generator's settings
        demo.ensure_demo_objects()
        Generator.objects.filter(name=demo.GENERATOR).update(candidates=2, max_new_tokens=12)

    started = time.monotonic()
    log_file = (var / "run_demo.log").open("w")
    process = subprocess.Popen([PY, "manage.py", "run_demo", "--addr", args.addr], cwd=REPO, env=env,
                               stdout=log_file, stderr=subprocess.STDOUT)

    def say(what: str) -> None:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{time.monotonic() - started:8.1f} s  {what}  (load average {load})", flush=True)

    try:
        while not _answers(args.addr):
            if process.poll() is not None or time.monotonic() - started > args.timeout:
                raise SystemExit(f"the site never answered; see {var / 'run_demo.log'}")
            time.sleep(0.5)
        up = time.monotonic()
        say("site up")
        first = None
        while time.monotonic() - started < args.timeout:
            if first is None and CampaignItem.objects.exists():
                first = time.monotonic()
                say(f"first pair in the campaign, {first - up:.0f} s after the site came up")
            jobs = demo.pipeline_jobs()
            if jobs and all(job.is_finished for job in jobs):
                say(f"both jobs ended, {time.monotonic() - up:.0f} s after the site came up: "
                    + "; ".join(f"{job.get_kind_display()} {job.status}: {job.message}" for job in jobs))
                say(f"{CampaignItem.objects.count()} pairs in the campaign")
                ok = all(job.status == JobStatus.SUCCEEDED for job in jobs) and (args.smoke or first is not None)
                return 0 if ok else 1
            time.sleep(1)
        say("timed out: " + "; ".join(f"{j.get_kind_display()} {j.status} {j.done}/{j.total}"
                                      for j in Job.objects.all()))
        return 1
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _answers(addr: str) -> bool:
    try:
        urllib.request.urlopen(f"http://{addr}/accounts/login/", timeout=2)
        return True
    except OSError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
