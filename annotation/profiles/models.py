"""Generators (a model and its decoding settings) and the candidate profiles they write."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from ..documents.models import Sample


class Backend(models.TextChoices):
    LOCAL = "local", "Local transformers"
    OPENAI = "openai", "OpenAI-compatible"
    IMPORTED = "imported", "Imported (made elsewhere)"


def clean_attributes(value) -> dict[str, str]:
    """Generator attributes as a flat {text: text} dict; numbers become text ("round": 2 → "2")."""
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"attributes must be an object of key/value pairs, got {type(value).__name__}")
    cleaned = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError("attribute names must be non-empty text")
        if isinstance(item, bool) or not isinstance(item, (str, int, float)) or not str(item).strip():
            raise ValueError(f"attribute {key!r} must be non-empty text or a number, got {item!r}")
        cleaned[key.strip()] = str(item).strip()
    return cleaned


class Generator(models.Model):
    """A model plus decoding settings that writes candidate profiles."""

    name = models.CharField(max_length=100, unique=True)
    backend = models.CharField(max_length=10, choices=Backend.choices, default=Backend.LOCAL)
    # "default" means the offline SmolLM2 cache; otherwise a local path, hub id or API model name.
    model = models.CharField(max_length=300, default="default")
    adapter_path = models.CharField(max_length=500, blank=True)
    base_url = models.URLField(blank=True)
    # The key itself never enters the database: only the name of the variable that holds it.
    api_key_env = models.CharField(max_length=100, blank=True)
    temperature = models.FloatField(default=0.8)
    top_p = models.FloatField(default=0.95)
    repetition_penalty = models.FloatField(default=1.15)
    max_new_tokens = models.PositiveIntegerField(default=256)
    candidates = models.PositiveSmallIntegerField(default=4)
    # num_beams > 1 switches to diverse beam search (the original: 8 beams, 8 groups, penalty 0.8).
    num_beams = models.PositiveSmallIntegerField(default=1)
    num_beam_groups = models.PositiveSmallIntegerField(default=1)
    diversity_penalty = models.FloatField(default=0.0)
    format_guide = models.BooleanField(
        default=True,
        help_text="Local models: the profile's line structure (domain line, 'Competencies:', 3–8 '- Name: "
                  "description' items) is enforced while the model writes the words. Small models need it; "
                  "it has no effect on HTTP backends or with beam search.")
    concurrency = models.PositiveSmallIntegerField(default=4, help_text="Parallel requests (HTTP backends).")
    # Free key/values (model, method, prompt version, round, …): rankings can be grouped by any key.
    attributes = models.JSONField(
        default=dict, blank=True,
        help_text='Free attributes rankings can be grouped by, e.g. {"model": "phi-3", "method": "few-shot", '
                  '"round": "2"}: text keys, text or number values.')
    source_run = models.ForeignKey(
        "training.TrainingRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="generators"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(backend__in=Backend.values), name="generator_backend_valid"),
            models.CheckConstraint(condition=Q(temperature__gte=0), name="generator_temperature_nonnegative"),
            models.CheckConstraint(condition=Q(top_p__gt=0, top_p__lte=1), name="generator_top_p_range"),
            models.CheckConstraint(condition=Q(candidates__gte=1), name="generator_candidates_positive"),
            models.CheckConstraint(condition=Q(max_new_tokens__gte=1), name="generator_max_tokens_positive"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        try:
            self.attributes = clean_attributes(self.attributes)
        except ValueError as exc:
            raise ValidationError({"attributes": str(exc)}) from exc

    def decoding_settings(self) -> dict:
        fields = [
            "model", "adapter_path", "temperature", "top_p", "repetition_penalty", "max_new_tokens",
            "candidates", "num_beams", "num_beam_groups", "diversity_penalty", "format_guide",
        ]
        return {name: getattr(self, name) for name in fields}


class ProfileQuerySet(models.QuerySet):
    def pairable(self):
        return self.filter(is_valid=True, duplicate_of__isnull=True)


class Profile(models.Model):
    sample = models.ForeignKey(Sample, on_delete=models.CASCADE, related_name="profiles")
    generator = models.ForeignKey(Generator, on_delete=models.PROTECT, related_name="profiles")
    candidate_index = models.PositiveSmallIntegerField()
    raw_text = models.TextField()
    domain = models.TextField(blank=True)
    competencies = models.JSONField(default=list, blank=True)
    is_valid = models.BooleanField(default=False)
    invalid_reason = models.TextField(blank=True)
    duplicate_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL)
    prompt_version = models.CharField(max_length=50, blank=True)
    settings = models.JSONField(default=dict, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ProfileQuerySet.as_manager()

    class Meta:
        ordering = ["sample", "generator", "candidate_index"]
        constraints = [
            models.UniqueConstraint(
                fields=["sample", "generator", "candidate_index"], name="profile_candidate_unique"
            ),
            # A profile is either valid or says why it is not.
            models.CheckConstraint(
                condition=Q(is_valid=True, invalid_reason="") | Q(is_valid=False) & ~Q(invalid_reason=""),
                name="profile_validity_has_reason",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.sample} · {self.generator} #{self.candidate_index}"

