"""Fine-tuning runs, their logged steps, and evaluations. The training code itself lives in training/ml and knows
no Django."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from annotation.models import Campaign, DatasetExport, Generator, Job, JobStatus, Judge, JudgePanel, Work


class TrainingRun(Work):
    """A DPO + LoRA run on an export snapshot; ``done`` of ``total`` are optimiser steps."""

    name = models.CharField(max_length=100, unique=True)
    export = models.ForeignKey(DatasetExport, on_delete=models.PROTECT, related_name="training_runs")
    base_model = models.CharField(max_length=300, default="default")
    # The run's config as `python -m training.ml.dpo --config` reads it, saved as submitted so it can be run again.
    config = models.JSONField(default=dict)
    latest_metrics = models.JSONField(default=dict, blank=True)
    output_dir = models.CharField(max_length=500, blank=True)
    # A resumed run is a new row that starts from the last checkpoint of this one (which keeps its error).
    resumed_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="resumptions")

    stops_when = "after the current step, with a checkpoint"
    unit = "step"

    class Meta(Work.Meta):
        # Starting a run is "run_training" too: the admin's Add button starts one (training.admin).
        permissions = [("run_training", "Can start and cancel training runs"),
                       ("download_trainingrun", "Can download training artefacts")]
        constraints = [
            *Work.Meta.constraints,
            models.CheckConstraint(condition=Q(done__lte=models.F("total")) | Q(total=0),
                                   name="training_step_within_total"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_resumable(self) -> bool:
        return self.status in (JobStatus.FAILED, JobStatus.CANCELLED)

    def where(self) -> str:
        return f" at step {self.done} of {self.total}"

    def retry_hint(self) -> str:
        return "Resume the run to continue from its last checkpoint."


class TrainingLogEntry(models.Model):
    """One logging step of a run: the curve the run page draws."""

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="log_entries")
    step = models.PositiveIntegerField()
    epoch = models.FloatField(null=True, blank=True)
    loss = models.FloatField(null=True, blank=True)
    reward_accuracy = models.FloatField(null=True, blank=True)
    reward_margin = models.FloatField(null=True, blank=True)
    learning_rate = models.FloatField(null=True, blank=True)
    elapsed_s = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "step"]
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="training_log_step_unique")]


class EvaluationRun(Work):
    """Tuned vs base (and optionally a third model) on held-out samples, judged in both orders."""

    name = models.CharField(max_length=100, unique=True)
    training_run = models.ForeignKey(TrainingRun, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="evaluations")
    candidate = models.ForeignKey(Generator, on_delete=models.PROTECT, related_name="+")
    baseline = models.ForeignKey(Generator, on_delete=models.PROTECT, related_name="+")
    third = models.ForeignKey(Generator, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    judge = models.ForeignKey(Judge, on_delete=models.PROTECT, related_name="evaluations")
    sample_limit = models.PositiveIntegerField(default=20)
    # Profiles per held-out sample and model; profile i of the tuned model meets profile i of the others.
    candidates = models.PositiveSmallIntegerField(default=1)
    # {"baseline": {"wins":..,"ties":..,"losses":..,"win_rate":..,"ci":[lo,hi]}, "valid_rate": {...}}
    results = models.JSONField(default=dict, blank=True)
    expert_campaign = models.ForeignKey(Campaign, null=True, blank=True, on_delete=models.SET_NULL)
    # Who labelled the training data (training.grading), recorded when the evaluation is created: "experts",
    # "judges", "experts and judges" or "unknown". The labelling judges also grade, reported apart.
    labels_source = models.CharField(max_length=20, blank=True)
    labelling_judges = models.ManyToManyField(Judge, blank=True, related_name="+")
    # Graded by a judge that labelled the training data, on purpose: the page warns that it is not independent.
    same_judge_allowed = models.BooleanField(default=False)

    stops_when = "after the current batch"

    class Meta(Work.Meta):
        permissions = [("run_evaluation", "Can start and cancel evaluations and send them to experts")]
        constraints = [
            *Work.Meta.constraints,
            models.CheckConstraint(condition=~Q(candidate=models.F("baseline")), name="evaluation_distinct_models"),
            models.CheckConstraint(condition=Q(candidates__gte=1), name="evaluation_candidates_positive"),
        ]

    def __str__(self) -> str:
        return self.name

    # What ``done`` counts in each phase of training.evaluation (results["phase"]).
    PHASES = {"generate": ("profile", "profiles generated"), "judge": ("pair", "pairs judged")}

    @property
    def unit(self) -> str:
        return self.PHASES.get(self.results.get("phase"), ("item", ""))[0]

    @property
    def phase_text(self) -> str:
        return self.PHASES.get(self.results.get("phase"), ("item", ""))[1]

    def sub_jobs(self):
        """The generation and judging jobs it ran, each visible on the jobs page."""
        return Job.objects.filter(params__evaluation_id=self.pk)

    def request_cancel(self) -> str:
        said = super().request_cancel()
        # The generation or judging job in progress stops after its current batch.
        self.sub_jobs().active().update(cancel_requested=True)
        return said

    def retry_hint(self) -> str:
        return "Start it again: generation fills in only what is missing."

    @property
    def graded_by_labelling_judge(self) -> bool:
        return self.labelling_judges.filter(pk=self.judge_id).exists()


class Round(Work):
    """One round of the loop as one piece of work (training.round): generate on the train samples → label with
    a scoring judge → export by a policy → DPO + LoRA → evaluate tuned vs base on held-out samples. ``done`` of
    ``total`` are steps; each step is its own row (a job, the export, the training run, the evaluation)."""

    name = models.CharField(max_length=100, unique=True)
    preset = models.CharField(max_length=20)
    # The preset's sizes and settings as this round ran them (training.presets.Preset.to_dict).
    settings = models.JSONField(default=dict)
    generator = models.ForeignKey(Generator, on_delete=models.PROTECT, related_name="+")
    labelling_panel = models.ForeignKey(JudgePanel, null=True, blank=True, on_delete=models.SET_NULL,
                                        related_name="+")
    evaluation_judge = models.ForeignKey(Judge, on_delete=models.PROTECT, related_name="+")
    export = models.ForeignKey(DatasetExport, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    training_run = models.ForeignKey(TrainingRun, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    evaluation = models.ForeignKey(EvaluationRun, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    # {"generate": job id, "label": job id, "export": job id} and each step's wall seconds.
    steps = models.JSONField(default=dict, blank=True)
    results = models.JSONField(default=dict, blank=True)

    stops_when = "after the step in progress stops"

    class Meta(Work.Meta):
        permissions = [("run_round", "Can start and cancel rounds")]

    def __str__(self) -> str:
        return self.name

    def jobs(self):
        return Job.objects.filter(pk__in=[pk for pk in self.steps.get("jobs", {}).values()]).order_by("pk")

    def request_cancel(self) -> str:
        said = super().request_cancel()
        # The step in progress stops at its own next check.
        self.jobs().active().update(cancel_requested=True)
        for row in (self.training_run, self.evaluation):
            if row is not None and not row.is_finished:
                row.request_cancel()
        return said

    def retry_hint(self) -> str:
        return "Start a new round: generation fills in only the profiles that are missing."
