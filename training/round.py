"""One round of the loop as one piece of work: generate → label → export → train → evaluate (``run_round``).

1. generate: the round's generator writes ``candidates`` profiles for each train sample (a generation job).
2. label:    a scoring judge (PMI, ``training.ml.scoring``) decides every pair of a sample's candidates
             (a judging job, pairing "all").
3. export:   a DPO snapshot by policy: ``high_margin`` keeps the pairs the labelling judge decides by more
             than its (raised) tie margin; ``agree`` keeps the pairs two scoring judges decide alike.
4. train:    DPO + LoRA on the export (a training run).
5. evaluate: tuned vs base on the held-out samples, graded by the independent judge (Gemma 3 270M PMI, a
             model of another family than the labeller's) with the labelling judge reported apart (an
             evaluation).

Each step is the row it always is, on its own page: the round page links them and shows the step in progress.

Where the steps run. The round itself is a training-queue task. Generation, labelling and export are sent to
their own queues (generation, judging, default) and the round waits for each, keeping its heartbeat;
training and evaluation are training-queue work, and the round, which holds the training worker's one slot,
runs them itself in its process (sending them would wait for the slot the round holds). ``inline=True`` runs
every step in the calling process instead, through the same function the step's task runs: what
``manage.py run_round`` does by default, so that a round runs on a machine without workers (a CPU box, a
benchmark, a test) and one process keeps the loaded models.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from celery import current_app
from django.db import transaction
from django.utils import timezone

from annotation.export.dataset import run_export_task
from annotation.jobs.lifecycle import create_job, run_job
from annotation.jobs.liveness import Heartbeat
from annotation.judging.strategies import run_judging
from annotation.models import (
    DatasetExport, ExportFormat, ExportPolicy, Generator, Job, JobKind, JobStatus, Judge, JudgeBackend, JudgeOrders,
    JudgePanel, Profile, Sample, Split,
)
from annotation.profiles.generation import run_generation
from training.ml.scoring import SCORER_PROMPT_VERSION

from .evaluation import run_evaluation
from .models import EvaluationRun, Round, TrainingRun
from .grading import create_evaluation
from .runs import TrainingError, build_config, create_run, run_training, unique_name

logger = logging.getLogger(__name__)

STEPS = ("generate", "label", "export", "train", "evaluate")
POLICIES = ("high_margin", "agree")
WAIT_POLL_S = 2.0
# The steps' own tasks, sent by name: the round's logic does not import the tasks that run it.
TASKS = {JobKind.GENERATE: "annotation.tasks.generate_profiles_task",
         JobKind.JUDGE: "annotation.tasks.judge_comparisons_task",
         JobKind.EXPORT: "annotation.tasks.export_dataset_task"}


@dataclass(frozen=True)
class Preset:
    """A round's sizes. ``train_samples``/``heldout_samples``: how many of each split (None: all).

    ``label_margin``: the labelling judge's tie margin (nats per token); above the scorer's measured default
    (0.02), so that only pairs it decides clearly become training pairs ("high margin").
    """

    name: str
    train_samples: int | None
    heldout_samples: int | None
    candidates: int  # per train sample: pairs per sample = c·(c−1)/2
    eval_candidates: int  # per held-out sample and model
    max_new_tokens: int
    temperature: float = 0.7
    policy: str = "high_margin"
    label_model: str = "default"
    label_margin: float = 0.05
    grader_model: str = "gemma"
    grader_margin: float = 0.02
    training: dict[str, Any] = field(default_factory=dict)
    # Data preparation, not the round: abstracts per sample when bench/round.py imports the demo abstracts.
    abstracts_per_sample: int = 5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_changes(self, **changes: Any) -> "Preset":
        training = {**self.training, **changes.pop("training", {})}
        return replace(self, training=training, **changes)


PRESETS = {
    # A few minutes on two cores: real models, every step, sizes that only prove the plumbing.
    # A valid profile needs room: at 128 or 160 tokens most SmolLM2 candidates are cut off or too short
    # (1 of 6 and 4 of 16 valid); at 256 about half are valid (README).
    "tiny": Preset("tiny", train_samples=2, heldout_samples=1, candidates=4, eval_candidates=1, max_new_tokens=256,
                   label_margin=0.0, grader_model="default", abstracts_per_sample=2,
                   training={"max_steps": 2, "gradient_accumulation_steps": 1, "max_length": 1024,
                             "activation_checkpointing": False, "save_steps": 50}),
    # ≤ 60 minutes on two CPU cores: two abstracts per sample (prompts of ~600 tokens instead of ~1,500); eight
    # candidates per train sample (about four valid: six pairs); twelve per held-out sample and model on every
    # held-out sample, since only pairs with both profiles valid are judged (about a quarter of them).
    "cpu": Preset("cpu", train_samples=None, heldout_samples=None, candidates=8, eval_candidates=12,
                  max_new_tokens=256, abstracts_per_sample=2,
                  training={"max_steps": 32, "gradient_accumulation_steps": 1, "max_length": 1024,
                            "activation_checkpointing": False, "learning_rate": 5e-5, "beta": 0.1, "lora_r": 16,
                            "lora_alpha": 32, "save_steps": 50}),
    # One GPU: the demo's full prompts, more candidates, longer training; bf16 is picked by the worker.
    "gpu": Preset("gpu", train_samples=None, heldout_samples=None, candidates=8, eval_candidates=10,
                  max_new_tokens=256, abstracts_per_sample=5,
                  training={"max_steps": 300, "gradient_accumulation_steps": 1, "per_device_train_batch_size": 8,
                            "max_length": 2048, "activation_checkpointing": False, "learning_rate": 5e-5,
                            "beta": 0.1, "lora_r": 32, "lora_alpha": 64, "save_steps": 100}),
}


class RoundCancelled(Exception):
    pass


# ---------------------------------------------------------------------------------------------------------
# Creating a round


def scoring_judge(name: str, model: str, margin: float, baseline: str = "other") -> Judge:
    """A scoring judge with these settings, made once (a judge's verdicts are only comparable under one set)."""
    judge, created = Judge.objects.get_or_create(name=name, defaults={
        "backend": JudgeBackend.SCORING, "model": model, "orders": JudgeOrders.NONE,
        "prompt_version": SCORER_PROMPT_VERSION, "score_margin": margin, "score_baseline": baseline})
    if not created and (judge.backend, judge.model, judge.score_margin, judge.score_baseline) != (
            JudgeBackend.SCORING, model, margin, baseline):
        raise TrainingError(f"judge {name!r} exists with other settings ({judge.backend}, {judge.model}, margin "
                            f"{judge.score_margin}, baseline {judge.score_baseline}); rename it or use other ones")
    return judge


def _model_label(model: str) -> str:
    return {"default": "SmolLM2", "gemma": "Gemma"}.get(model, model.rstrip("/").rsplit("/", 1)[-1])


def labelling_panel(preset: Preset) -> JudgePanel:
    """The judges whose verdicts become training pairs, as the export's panel (unanimous)."""
    label = _model_label(preset.label_model)
    judges = [scoring_judge(f"{label} PMI · margin {preset.label_margin:g}", preset.label_model,
                            preset.label_margin)]
    if preset.policy == "agree":
        # A second opinion from the same model with another baseline: the pairs both decide alike.
        judges.append(scoring_judge(f"{label} PMI · no-abstracts baseline · margin {preset.label_margin:g}",
                                    preset.label_model, preset.label_margin, baseline="none"))
    names = " + ".join(j.name for j in judges)
    panel, _ = JudgePanel.objects.get_or_create(name=f"round labels: {names}"[:100], defaults={"threshold": 1.0})
    panel.judges.set(judges)
    return panel


def evaluation_judge(preset: Preset) -> Judge:
    label = _model_label(preset.grader_model)
    # Another baseline than the labeller's when both run on one model (the tiny preset), so the two differ.
    baseline = "none" if preset.grader_model == preset.label_model else "other"
    return scoring_judge(f"{label} PMI · margin {preset.grader_margin:g} · independent", preset.grader_model,
                         preset.grader_margin, baseline=baseline)


def round_generator(preset: Preset) -> Generator:
    """The base model as the round's generator, decoding as the preset says (made once per decoding)."""
    decoding = {"backend": "local", "model": "default", "adapter_path": "", "temperature": preset.temperature,
                "top_p": 0.95, "repetition_penalty": 1.15, "max_new_tokens": preset.max_new_tokens,
                "format_guide": True}
    existing = Generator.objects.filter(**decoding).order_by("pk").first()
    if existing:
        return existing
    return Generator.objects.create(
        name=unique_name(f"SmolLM2 · t{preset.temperature:g} · {preset.max_new_tokens} tokens", Generator),
        candidates=preset.candidates, **decoding)


def create_round(preset: Preset, generator: Generator | None = None, name: str = "", user=None) -> Round:
    if preset.policy not in POLICIES:
        raise TrainingError(f"policy: one of {', '.join(POLICIES)} (got {preset.policy!r})")
    if not _samples(Split.TRAIN, preset.train_samples):
        raise TrainingError("there are no train samples with abstracts: import documents first")
    if not _samples(Split.HELDOUT, preset.heldout_samples):
        raise TrainingError("there are no held-out samples to evaluate on; import documents with a held-out "
                            "fraction")
    with transaction.atomic():
        return Round.objects.create(
            name=unique_name(name or f"round · {preset.name} · {timezone.now():%Y-%m-%d %H:%M}", Round),
            preset=preset.name, settings=preset.to_dict(), generator=generator or round_generator(preset),
            labelling_panel=labelling_panel(preset), evaluation_judge=evaluation_judge(preset),
            total=len(STEPS), created_by=user, message="waiting for a training worker")


def _samples(split: str, limit: int | None) -> list[Sample]:
    rows = Sample.objects.filter(split=split).with_abstracts().order_by("pk")
    return list(rows[:limit] if limit else rows)


# ---------------------------------------------------------------------------------------------------------
# Running it


class _Runner:
    def __init__(self, row: Round, inline: bool):
        self.row = row
        self.inline = inline
        self.preset = Preset(**row.settings)
        self.steps: dict[str, Any] = {"jobs": {}, "seconds": {}}
        self.train_samples = _samples(Split.TRAIN, self.preset.train_samples)

    def say(self, message: str, **fields: Any) -> None:
        if not self.row.save_progress(message=message, heartbeat_at=timezone.now(), steps=self.steps, **fields) \
                or self.row.cancel_wanted():
            raise RoundCancelled

    def job(self, step: str, kind: str, params: dict, work: Callable, task_arg: int | None = None) -> Job:
        """Create the step's job; run ``work`` here (inline) or send the job's own task and wait for it."""
        total = params.pop("total", 0)
        job = create_job(kind, {**params, "round_id": self.row.pk}, total=total)
        self.steps["jobs"][step] = job.pk
        self.say(f"{step}: {job.get_kind_display().lower()} #{job.pk}")
        if self.inline:
            work(job)
        else:
            current_app.send_task(TASKS[kind], args=[task_arg or job.pk])
            self.wait(job, step)
        job.refresh_from_db()
        return self.ended(job, step)

    def wait(self, row, step: str) -> None:
        """Until the step's row ends; the round's own heartbeat keeps beating (its Heartbeat thread)."""
        while True:
            row.refresh_from_db()
            if row.is_finished:
                return
            waiting = "waiting for a worker" if row.status == JobStatus.QUEUED else f"{row.done}/{row.total or '?'}"
            self.say(f"{step}: {waiting}")
            time.sleep(WAIT_POLL_S)

    def ended(self, row, step: str):
        if row.status == JobStatus.CANCELLED:
            raise RoundCancelled
        if row.status != JobStatus.SUCCEEDED:
            raise TrainingError(f"step {step!r} {row.get_status_display().lower()}: {row.error or row.message}")
        return row

    def timed(self, step: str, work: Callable[[], Any]) -> Any:
        started = time.monotonic()
        result = work()
        self.steps["seconds"][step] = round(time.monotonic() - started, 1)
        self.row.done = STEPS.index(step) + 1
        self.say(f"{step}: done", done=self.row.done)
        return result

    # --- the steps ---

    def generate(self, samples: list[Sample]) -> None:
        g = self.row.generator
        self.job("generate", JobKind.GENERATE, {
            "generator_id": g.pk, "generator": g.name, "sample_ids": [s.pk for s in samples],
            "candidates": self.preset.candidates, "total": len(samples)},
            lambda job: run_job(job.pk, run_generation, worker=self.row.worker))

    def label(self, samples: list[Sample]) -> None:
        for n, judge in enumerate(self.row.labelling_panel.judges.order_by("pk"), start=1):
            self.job("label" if n == 1 else f"label {n}", JobKind.JUDGE, {
                "judge_id": judge.pk, "judge": judge.name, "pairing": "all", "limit": None, "campaign_id": None,
                "campaign": None, "sample_ids": [s.pk for s in samples]},
                lambda job: run_job(job.pk, run_judging, worker=self.row.worker))

    def export(self) -> DatasetExport:
        export = DatasetExport.objects.create(
            name=unique_name(f"{self.row.name} · {self.preset.policy}", DatasetExport),
            policy=ExportPolicy.JUDGE_CONSENSUS, format=ExportFormat.JSONL, panel=self.row.labelling_panel,
            test_fraction=0.0)
        self.row.export = export
        self.say("export: writing the snapshot", export=export)
        # The export task finds its job by the export's id and runs it (annotation.export.dataset).
        self.job("export", JobKind.EXPORT, {"export_id": export.pk, "name": export.name},
                 lambda job: run_export_task(export.pk), task_arg=export.pk)
        export.refresh_from_db()
        if not export.counts.get("train"):
            profiles = Profile.objects.filter(generator=self.row.generator, sample__in=self.train_samples)
            raise TrainingError(
                f"no pair to train on: {profiles.filter(is_valid=True).count()} of {profiles.count()} candidates "
                f"are valid profiles, {export.counts.get('comparisons', 0)} pairs were judged, dropped "
                f"{ {k: v for k, v in export.counts.get('dropped', {}).items() if v} }. Generate more candidates "
                "(or more tokens, if they were cut off), or lower the labelling margin.")
        return export

    def train(self, export: DatasetExport) -> TrainingRun:
        try:
            config = build_config(export, self.preset.training)
        except ValueError as exc:
            raise TrainingError(str(exc)) from exc
        run = create_run(export, config, f"{self.row.name} · DPO")
        self.row.training_run = run
        self.say(f"train: run #{run.pk}", training_run=run)
        run_training(run.pk, worker=self.row.worker)
        run.refresh_from_db()
        return self.ended(run, "train")

    def evaluate(self, run: TrainingRun) -> EvaluationRun:
        heldout = _samples(Split.HELDOUT, self.preset.heldout_samples)
        evaluation = create_evaluation(self.row.evaluation_judge, training_run=run, baseline=self.row.generator,
                                       sample_limit=len(heldout), candidates=self.preset.eval_candidates,
                                       name=f"{self.row.name} · tuned vs base")
        self.row.evaluation = evaluation
        self.say(f"evaluate: evaluation #{evaluation.pk}", evaluation=evaluation)
        run_evaluation(evaluation.pk, worker=self.row.worker)
        evaluation.refresh_from_db()
        return self.ended(evaluation, "evaluate")

    def run(self) -> str:
        self.timed("generate", lambda: self.generate(self.train_samples))
        self.timed("label", lambda: self.label(self.train_samples))
        export = self.timed("export", self.export)
        run = self.timed("train", lambda: self.train(export))
        evaluation = self.timed("evaluate", lambda: self.evaluate(run))
        self.row.results = summary(self.row, export, run, evaluation)
        return headline(self.row.results)


def summary(row: Round, export: DatasetExport, run: TrainingRun, evaluation: EvaluationRun) -> dict[str, Any]:
    """The round's figures in one place: what bench/round.py prints and the round page shows."""
    results = evaluation.results
    counts = export.counts or {}
    return {
        "pairs_labelled": counts.get("train", 0),
        "comparisons": counts.get("comparisons", 0),
        "dropped": counts.get("dropped", {}),
        "steps": run.done,
        "loss": run.latest_metrics.get("loss"),
        "reward_accuracy": run.latest_metrics.get("rewards/accuracies"),
        "heldout_samples": results.get("samples"),
        "judges": results.get("judges", []),
        "valid": results.get("valid", {}),
        "profiles": results.get("profiles", {}),
        "seconds": row.steps.get("seconds", {}),
    }


def headline(results: dict[str, Any]) -> str:
    independent = next((j for j in results.get("judges", []) if not j["labelled_training_data"]), None)
    if not independent or "baseline" not in independent["versus"]:
        return f"{results.get('pairs_labelled', 0)} pairs, {results.get('steps', 0)} steps; no independent figure"
    judged = independent["versus"]["baseline"]["judged"]
    ci = judged["ci"]
    rate = "–" if judged["win_rate"] is None else f"{100 * judged['win_rate']:.0f}%"
    interval = "" if ci[0] is None else f" [{100 * ci[0]:.0f}–{100 * ci[1]:.0f}%]"
    return (f"{results['pairs_labelled']} pairs, {results['steps']} steps; {independent['judge']} prefers tuned "
            f"{rate}{interval} of {judged['n']} held-out pairs")


def run_round(round_id: int, worker: str = "", inline: bool = False) -> str:
    """Run one queued round to its end; returns its final status."""
    row = Round.claim(round_id, worker or "inline", message="starting")
    if row is None:
        logger.info("round %s is not queued: nothing to do", round_id)
        return "skipped"
    runner = _Runner(row, inline)
    with Heartbeat(Round, row.pk):
        try:
            message = runner.run()
        except RoundCancelled:
            row.finish(JobStatus.CANCELLED, "cancelled by an admin", steps=runner.steps)
            return JobStatus.CANCELLED
        except Exception as exc:
            logger.exception("round %s failed", row.pk)
            row.finish(JobStatus.FAILED, "failed", error=f"{type(exc).__name__}: {exc}", steps=runner.steps)
            return JobStatus.FAILED
    row.finish(JobStatus.SUCCEEDED, message, steps=runner.steps, results=row.results, done=len(STEPS))
    return JobStatus.SUCCEEDED
