"""Documents (abstracts) and the samples they are grouped into: what a profile is extracted from."""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class Split(models.TextChoices):
    TRAIN = "train", "Train"
    HELDOUT = "heldout", "Held-out"


class Document(models.Model):
    external_id = models.CharField(max_length=200, unique=True)
    title = models.TextField()
    abstract = models.TextField()
    authors = models.JSONField(default=list)
    year = models.PositiveIntegerField(null=True, blank=True)
    # Re-importing the same id with other content is an error; the hash makes that check cheap.
    content_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["external_id"]
        constraints = [
            models.CheckConstraint(condition=~Q(title=""), name="document_title_not_empty"),
            models.CheckConstraint(condition=~Q(abstract=""), name="document_abstract_not_empty"),
        ]

    def __str__(self) -> str:
        return f"{self.external_id}: {self.title[:60]}"


class SampleQuerySet(models.QuerySet):
    def heldout(self):
        """The held-out samples (never trained on), in a fixed order: what evaluations run on."""
        return self.filter(split=Split.HELDOUT).order_by("pk")


class Sample(models.Model):
    """The unit a profile is extracted from, e.g. one author's 4–5 abstracts."""

    name = models.CharField(max_length=200, unique=True)
    split = models.CharField(max_length=10, choices=Split.choices, default=Split.TRAIN)
    documents = models.ManyToManyField(Document, through="SampleDocument", related_name="samples")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = SampleQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(split__in=Split.values), name="sample_split_valid"),
        ]

    def __str__(self) -> str:
        return self.name

    def ordered_documents(self):
        return self.documents.order_by("sampledocument__position")


class SampleDocument(models.Model):
    sample = models.ForeignKey(Sample, on_delete=models.CASCADE)
    document = models.ForeignKey(Document, on_delete=models.CASCADE)
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["sample", "position"]
        constraints = [
            models.UniqueConstraint(fields=["sample", "document"], name="sample_document_unique"),
            models.UniqueConstraint(fields=["sample", "position"], name="sample_position_unique"),
        ]

