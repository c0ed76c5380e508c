"""Shared by the training and evaluation tests: a small real export, tiny-but-real configs, a worker to restart.

Also the URLconf those tests use (``pytest.mark.urls("tests.training_factory")``): the site's URLs plus
``training.urls``, so the tests pass whether or not compx_site/urls.py mounts them yet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.urls import include, path

from compx_site.urls import urlpatterns as _site

urlpatterns = list(_site)
if not any(getattr(p, "namespace", None) == "training" for p in _site):
    urlpatterns.append(path("training/", include("training.urls")))

from tests.conftest import LOG_DIR, REPO
SYSTEM = "You extract competency profiles from scientific abstracts."
TOPICS = ["protein folding", "soil nitrogen", "galaxy clusters", "battery cathodes", "malaria vaccines",
          "dialect speech recognition", "coral reefs", "graph algorithms"]

# Short pairs and max_length 128 keep a DPO step at ~2 s on two CPU cores with the real 135M model.
TINY = {"max_steps": 2, "max_length": 128, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
        "precision": "fp32", "gradient_checkpointing": False, "save_steps": 50}


def write_pairs(path: Path, n: int = 6) -> Path:
    """TRL conversational preference rows with provenance columns, as annotation.export writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            topic = TOPICS[i % len(TOPICS)]
            fh.write(json.dumps({
                "prompt": [{"role": "system", "content": SYSTEM},
                           {"role": "user", "content": f"Abstract 1: We study {topic}."}],
                "chosen": [{"role": "assistant", "content":
                            f'Domain: "{topic}"\n\nCompetencies:\n- Modelling: models {topic}.\n'
                            f"- Measurement: measures {topic}.\n- Analysis: analyses {topic}."}],
                "rejected": [{"role": "assistant", "content": "Domain: code\n\ndef f(): pass"}],
                "comparison_id": i + 1, "sample": f"s{i}", "chosen_profile_id": 2 * i + 1,
                "rejected_profile_id": 2 * i + 2, "decision": "a", "source": "experts", "agreement": 1.0,
                "votes": "[]", "verdicts": "[]", "policy": "expert",
            }) + "\n")
    return path


def make_export(folder: Path, name: str = "tiny-v1", n: int = 6, test_n: int = 2):
    from annotation.models import DatasetExport, ExportPolicy, JobStatus

    write_pairs(folder / "train.jsonl", n)
    if test_n:
        write_pairs(folder / "test.jsonl", test_n)
    return DatasetExport.objects.create(name=name, policy=ExportPolicy.EXPERT, status=JobStatus.SUCCEEDED,
                                        path=str(folder), counts={"train": n, "test": test_n})


def form_data(export, **overrides) -> dict:
    """What the admin's start form posts: the CPU defaults with the tiny overrides."""
    from training.forms import FORM_FIELDS as NAMES
    from training.runs import CPU_DEFAULTS

    defaults = {NAMES.get(key, key): value for key, value in CPU_DEFAULTS.items()}
    data = {**defaults, "precision": "auto", **TINY, "model_name_or_path": "default", "export": export.pk, "name": ""}
    data["target_modules"] = ",".join(data["target_modules"])
    data.update(overrides)
    for key in ("gradient_checkpointing", "use_test_split"):
        if not data.get(key):
            data.pop(key, None)  # an unchecked box is absent from a real POST
    return {k: v for k, v in data.items() if k in FORM_FIELDS}


FORM_FIELDS = {
    "export", "name", "model_name_or_path", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "beta",
    "loss_type", "label_smoothing", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_length", "precision", "gradient_checkpointing", "seed", "save_steps",
    "use_test_split",
}


def start_worker(database_url: str, log_name: str = "test-worker.log") -> subprocess.Popen:
    """A real worker like conftest's ``celery_worker_process``, with the same node name (so a second one
    started after killing the first is "the same worker restarting")."""
    env = {**os.environ, "DATABASE_URL": database_url, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
           "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    log = LOG_DIR / log_name
    with log.open("a") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "compx_site", "worker", "-Q", settings.CELERY_QUEUES_ALL,
             "--pool", "solo", "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "info",
             "-n", f"test-{os.getpid()}@%h"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
