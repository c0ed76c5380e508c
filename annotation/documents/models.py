"""Documents (abstracts) and the samples they are grouped into: what a profile is extracted from.

A document may be *title-only*: a study made elsewhere that kept only titles can still bring its profiles,
votes and tournaments in. Such a document has an empty abstract, says so wherever it is shown, and its
samples are refused by generation and judging (``refuse_title_only``): a title is not an abstract.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Exists, OuterRef, Q


class Split(models.TextChoices):
    TRAIN = "train", "Train"
    HELDOUT = "heldout", "Held-out"


class Document(models.Model):
    external_id = models.CharField(max_length=200, unique=True)
    title = models.TextField()
    # Empty only for a title-only document (imported with --allow-title-only).
    abstract = models.TextField(blank=True)
    authors = models.JSONField(default=list)
    year = models.PositiveIntegerField(null=True, blank=True)
    # Re-importing the same id with other content is an error; the hash makes that check cheap.
    content_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["external_id"]
        constraints = [
            models.CheckConstraint(condition=~Q(title=""), name="document_title_not_empty"),
        ]

    def __str__(self) -> str:
        return f"{self.external_id}: {self.title[:60]}" + (" (title only)" if self.title_only else "")

    @property
    def title_only(self) -> bool:
        return not self.abstract


class TitleOnly(ValueError):
    """Generation or judging asked for samples whose documents have no abstract."""


def _has_title_only_document():
    return Exists(SampleDocument.objects.filter(sample=OuterRef("pk"), document__abstract=""))


class SampleQuerySet(models.QuerySet):
    def heldout(self):
        """The held-out samples (never trained on) that have abstracts, in a fixed order: what evaluations run on."""
        return self.filter(split=Split.HELDOUT).with_abstracts().order_by("pk")

    def title_only(self):
        """Samples with at least one title-only document: they carry imported labels, never prompts."""
        return self.filter(_has_title_only_document())

    def with_abstracts(self):
        return self.exclude(_has_title_only_document())


def refuse_title_only(samples: models.QuerySet, what: str) -> None:
    """Raise TitleOnly naming the samples (a few) when any of ``samples`` is title-only."""
    names = list(samples.title_only().order_by("name").values_list("name", flat=True)[:6])
    if not names:
        return
    total = samples.title_only().count()
    shown = ", ".join(repr(n) for n in names[:5]) + (f" and {total - 5} more" if total > 5 else "")
    raise TitleOnly(f"{what} needs abstracts, and {total} of the samples have title-only documents (imported from "
                    f"a study that kept only titles): {shown}. Leave them out, or import their abstracts.")


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

    @property
    def title_only(self) -> bool:
        return self.documents.filter(abstract="").exists()


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

