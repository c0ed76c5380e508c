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
runs them itself in its process (sending them would wait for the slot the round holds); so are the other steps
in a one-slot worker that also consumes their queue (annotation.jobs.slots). ``inline=True`` runs
every step in the calling process instead, through the same function the step's task runs: what
``manage.py run_round`` does by default, so that a round runs on a machine without workers (a CPU box, a
benchmark, a test) and one process keeps the loaded models.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery import current_app
from django.utils import timezone

from annotation.export.dataset import run_export_task
from annotation.jobs.lifecycle import Cancelled, WorkRunner, create_job, run_job
from annotation.jobs.slots import would_wait_on_itself
from annotation.judging.strategies import run_judging
from annotation.models import DatasetExport, ExportFormat, ExportPolicy, Job, JobKind, JobStatus, Profile, Sample, Split
from annotation.profiles.generation import run_generation

from .evaluation import run_evaluation
from .models import EvaluationRun, Round, TrainingRun
from .grading import create_evaluation
from .presets import STEPS, Preset, samples_of
from .runs import TrainingError, build_config, create_run, run_training, unique_name

WAIT_POLL_S = 2.0
# The steps' own tasks, sent by name: the round's logic does not import the tasks that run it.
TASKS = {JobKind.GENERATE: "annotation.tasks.generate_profiles_task",
         JobKind.JUDGE: "annotation.tasks.judge_comparisons_task",
         JobKind.EXPORT: "annotation.tasks.export_dataset_task"}


# ---------------------------------------------------------------------------------------------------------
# Running it


class _Runner(WorkRunner):
    model = Round
    starting = "starting"

    def __init__(self, row: Round, inline: bool):
        super().__init__(row)
        self.inline = inline
        self.preset = Preset(**row.settings)
        self.steps: dict[str, Any] = {"jobs": {}, "seconds": {}}
        self.train_samples = samples_of(Split.TRAIN, self.preset.train_samples)

    def say(self, message: str, **fields: Any) -> None:
        if not self.row.save_progress(message=message, heartbeat_at=timezone.now(), steps=self.steps, **fields) \
                or self.row.cancel_wanted():
            raise Cancelled

    def job(self, step: str, kind: str, params: dict, work: Callable, task_arg: int | None = None) -> Job:
        """Create the step's job; run ``work`` here (inline) or send the job's own task and wait for it."""
        total = params.pop("total", 0)
        job = create_job(kind, {**params, "round_id": self.row.pk}, total=total)
        self.steps["jobs"][step] = job.pk
        self.say(f"{step}: {job.get_kind_display().lower()} #{job.pk}")
        if self.inline or would_wait_on_itself(TASKS[kind]):  # sent, it would wait for the slot this round holds
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
            raise Cancelled
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
        heldout = samples_of(Split.HELDOUT, self.preset.heldout_samples)
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

    def ending(self, status: str) -> dict[str, Any]:
        if status == JobStatus.SUCCEEDED:
            return {"steps": self.steps, "results": self.row.results, "done": len(STEPS)}
        return {"steps": self.steps}


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
    return _Runner.start(round_id, worker or "inline", inline=inline)
