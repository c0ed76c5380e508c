"""DPO dataset snapshots: the policy that chose the labels, and what was written."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.dispatch import receiver
from django.utils import timezone

from ..jobs.models import Job, JobKind, JobStatus, work_failed
from ..judging.models import JudgePanel
from ..review.models import Campaign


class ExportPolicy(models.TextChoices):
    EXPERT = "expert", "Expert-only (majority of experts)"
    JUDGE_CONSENSUS = "judge_consensus", "Judge consensus (both orders)"
    EXPERT_OVERRIDES = "expert_overrides", "Expert overrides judge"
    JUDGE_CALIBRATED = "judge_calibrated", "Judges calibrated against experts"


class ExportFormat(models.TextChoices):
    JSONL = "jsonl", "JSONL"
    PARQUET = "parquet", "Parquet"
    HF = "hf", "Hugging Face datasets folder"


class DatasetExport(models.Model):
    """A frozen, versioned DPO dataset snapshot; once written it never changes."""

    name = models.CharField(max_length=100, unique=True)
    policy = models.CharField(max_length=20, choices=ExportPolicy.choices)
    format = models.CharField(max_length=8, choices=ExportFormat.choices, default=ExportFormat.JSONL)
    campaign = models.ForeignKey(Campaign, null=True, blank=True, on_delete=models.SET_NULL)
    # Judge policies count only this panel's judges, at its threshold; empty means every judge, unanimous.
    panel = models.ForeignKey(JudgePanel, null=True, blank=True, on_delete=models.SET_NULL)
    # Ties and "both bad": dropped, or written as unpaired negatives (KTO).
    ties_as_kto = models.BooleanField(default=False)
    test_fraction = models.FloatField(default=0.1)
    kappa_threshold = models.FloatField(default=0.6, help_text="judge_calibrated: minimum judge–expert κ.")
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    path = models.CharField(max_length=500, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    counts = models.JSONField(default=dict, blank=True)
    card = models.TextField(blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("download_datasetexport", "Can download dataset exports")]
        constraints = [
            models.CheckConstraint(condition=Q(test_fraction__gte=0, test_fraction__lt=1), name="export_test_fraction"),
            models.CheckConstraint(condition=Q(policy__in=ExportPolicy.values), name="export_policy_valid"),
        ]

    def __str__(self) -> str:
        return self.name


@receiver(work_failed, sender=Job)
def fail_with_its_job(sender, row: Job, error: str, **kwargs) -> None:
    """An export's own row says "running" too while its job runs: when the job's worker dies, it fails with it."""
    if row.kind == JobKind.EXPORT and row.params.get("export_id"):
        DatasetExport.objects.filter(pk=row.params["export_id"], status=JobStatus.RUNNING).update(
            status=JobStatus.FAILED, error=error, finished_at=timezone.now())
