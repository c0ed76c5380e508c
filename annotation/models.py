"""The data model of the whole loop: documents → samples → profiles → comparisons → verdicts and votes."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone


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


class Sample(models.Model):
    """The unit a profile is extracted from, e.g. one author's 4–5 abstracts."""

    name = models.CharField(max_length=200, unique=True)
    split = models.CharField(max_length=10, choices=Split.choices, default=Split.TRAIN)
    documents = models.ManyToManyField(Document, through="SampleDocument", related_name="samples")
    created_at = models.DateTimeField(auto_now_add=True)

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


class Backend(models.TextChoices):
    LOCAL = "local", "Local transformers"
    OPENAI = "openai", "OpenAI-compatible"
    IMPORTED = "imported", "Imported (made elsewhere)"


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


class PairingSource(models.TextChoices):
    TOURNAMENT = "tournament", "Knockout tournament"
    ALL = "all", "All pairs"
    ACTIVE = "active", "Active (judges unsure)"
    EVALUATION = "evaluation", "Evaluation"
    IMPORTED = "imported", "Imported"


class Comparison(models.Model):
    """An unordered pair of profiles of one sample; stored canonically with profile_a.id < profile_b.id."""

    sample = models.ForeignKey(Sample, on_delete=models.CASCADE, related_name="comparisons")
    profile_a = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+")
    profile_b = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+")
    source = models.CharField(max_length=12, choices=PairingSource.choices, default=PairingSource.ALL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["profile_a", "profile_b"], name="comparison_pair_unique"),
            models.CheckConstraint(condition=Q(profile_a__lt=F("profile_b")), name="comparison_canonical_order"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.sample}"

    @classmethod
    def canonical(cls, first: Profile, second: Profile) -> tuple[Profile, Profile]:
        if first.sample_id != second.sample_id:
            raise ValueError("a comparison pairs two profiles of the same sample")
        return (first, second) if first.pk < second.pk else (second, first)


class Judge(models.Model):
    name = models.CharField(max_length=100, unique=True)
    backend = models.CharField(max_length=10, choices=Backend.choices, default=Backend.OPENAI)
    model = models.CharField(max_length=300)
    base_url = models.URLField(blank=True)
    api_key_env = models.CharField(max_length=100, blank=True)
    prompt_version = models.CharField(max_length=50, default="judge-v1")
    temperature = models.FloatField(default=0.0)
    max_tokens = models.PositiveIntegerField(default=512)
    concurrency = models.PositiveSmallIntegerField(default=4)
    # USD per million tokens; leave at 0 for local or free judges.
    price_prompt_per_mtok = models.DecimalField(max_digits=10, decimal_places=4, default=0)
    price_completion_per_mtok = models.DecimalField(max_digits=10, decimal_places=4, default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(backend__in=["local", "openai"]), name="judge_backend_valid"),
            models.CheckConstraint(condition=Q(concurrency__gte=1), name="judge_concurrency_positive"),
        ]

    def __str__(self) -> str:
        return self.name


class Order(models.TextChoices):
    AB = "ab", "a shown first"
    BA = "ba", "b shown first"


class Preferred(models.TextChoices):
    """Verdicts and votes are stored in canonical terms: 'a' is always comparison.profile_a."""

    A = "a", "A"
    B = "b", "B"
    TIE = "tie", "Tie"


class JudgeVerdict(models.Model):
    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="verdicts")
    judge = models.ForeignKey(Judge, on_delete=models.CASCADE, related_name="verdicts")
    order = models.CharField(max_length=2, choices=Order.choices)
    raw_text = models.TextField(blank=True)
    reasoning = models.TextField(blank=True)
    # Empty when the output was invalid: such a verdict is kept for audit and never counted.
    preferred = models.CharField(max_length=3, choices=Preferred.choices, blank=True)
    is_valid = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    confidence = models.FloatField(null=True, blank=True)
    prompt_version = models.CharField(max_length=50, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["comparison", "judge", "order"]
        constraints = [
            models.UniqueConstraint(fields=["comparison", "judge", "order"], name="verdict_unique_per_order"),
            models.CheckConstraint(condition=Q(order__in=Order.values), name="verdict_order_valid"),
            models.CheckConstraint(
                condition=Q(is_valid=True, preferred__in=Preferred.values) | Q(is_valid=False, preferred=""),
                name="verdict_valid_has_preference",
            ),
            models.CheckConstraint(
                condition=Q(confidence__isnull=True) | Q(confidence__gte=0, confidence__lte=1),
                name="verdict_confidence_probability",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.judge} on {self.comparison} ({self.order}): {self.preferred or 'invalid'}"


class JudgePanel(models.Model):
    name = models.CharField(max_length=100, unique=True)
    judges = models.ManyToManyField(Judge, related_name="panels")
    # Share of valid judge verdicts that must agree: 1.0 is unanimous, just over 0.5 a simple majority.
    threshold = models.FloatField(default=1.0)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(threshold__gt=0.5, threshold__lte=1), name="panel_threshold_range"),
        ]

    def __str__(self) -> str:
        return self.name


class TournamentPreference(models.Model):
    """A preference derived from one judge's knockout tournament over one sample's candidates.

    A match's winner is preferred over its loser (direct) and over everyone the loser had beaten (implied,
    by transitivity). The set is derived from the stored verdicts, so re-running the tournament replaces
    a judge's preferences for the sample as a whole.
    """

    judge = models.ForeignKey(Judge, on_delete=models.CASCADE, related_name="tournament_preferences")
    sample = models.ForeignKey(Sample, on_delete=models.CASCADE, related_name="tournament_preferences")
    chosen = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+")
    rejected = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+")
    implied = models.BooleanField(default=False)
    # The judged match this comes from: chosen vs rejected when direct, the winner's match when implied.
    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="tournament_preferences")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["judge", "sample", "id"]
        constraints = [
            models.UniqueConstraint(fields=["judge", "chosen", "rejected"], name="tournament_preference_unique"),
            models.CheckConstraint(condition=~Q(chosen=F("rejected")), name="tournament_preference_distinct"),
        ]

    def __str__(self) -> str:
        kind = "implied" if self.implied else "direct"
        return f"{self.judge}: #{self.chosen_id} over #{self.rejected_id} ({kind})"


class JudgeDisplay(models.TextChoices):
    HIDDEN = "hidden", "Hidden"
    REVEAL = "reveal", "Revealed after the vote"
    ALONGSIDE = "alongside", "Shown alongside"


class CampaignQuerySet(models.QuerySet):
    def for_expert(self, expert):
        """The active campaigns this expert reviews in."""
        return self.filter(experts=expert, is_active=True)


class Campaign(models.Model):
    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    guidelines = models.TextField(blank=True, help_text="Markdown, shown to experts.")
    judge_display = models.CharField(max_length=10, choices=JudgeDisplay.choices, default=JudgeDisplay.HIDDEN)
    judge = models.ForeignKey(Judge, null=True, blank=True, on_delete=models.SET_NULL, related_name="campaigns")
    overlap = models.PositiveSmallIntegerField(default=1, help_text="How many experts review each comparison.")
    comparisons = models.ManyToManyField(Comparison, through="CampaignItem", related_name="campaigns")
    experts = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="campaigns")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = CampaignQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(overlap__gte=1), name="campaign_overlap_positive"),
            models.CheckConstraint(condition=Q(judge_display__in=JudgeDisplay.values), name="campaign_display_valid"),
        ]

    def __str__(self) -> str:
        return self.name


class Choice(models.TextChoices):
    A = "a", "A"
    B = "b", "B"
    TIE = "tie", "Tie"
    BOTH_BAD = "both_bad", "Both bad"


class CampaignItem(models.Model):
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="items")
    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="campaign_items")
    # Gold items carry a known answer and measure each expert's calibration.
    gold_answer = models.CharField(max_length=8, choices=Choice.choices, blank=True)
    # Live assignments that count toward the overlap (skips give theirs back; gold items, shown to every
    # expert, never count). Denormalised so "least reviewed first" is one indexed ORDER BY, not a join.
    assignment_count = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["campaign", "id"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "comparison"], name="campaign_item_unique"),
        ]
        indexes = [models.Index(fields=["campaign", "assignment_count", "id"], name="campaign_item_queue")]

    def __str__(self) -> str:
        return f"{self.campaign} · {self.comparison}"


class Assignment(models.Model):
    item = models.ForeignKey(CampaignItem, on_delete=models.CASCADE, related_name="assignments")
    expert = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    # Left/right is randomised per expert and kept, so the shown order is known for every vote.
    flipped = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    shown_at = models.DateTimeField(null=True, blank=True)
    skipped_at = models.DateTimeField(null=True, blank=True)
    # Set in the vote's own transaction by a conditional UPDATE that only one request can win, so a double
    # submit, a stale page or a skip from another tab can never add a second answer (on SQLite too).
    voted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["item", "expert"], name="assignment_unique_per_expert"),
        ]
        # The expert's pairs still waiting (a handful), found without reading all they ever answered.
        indexes = [models.Index(fields=["expert"], condition=Q(voted_at__isnull=True, skipped_at__isnull=True),
                                name="assignment_waiting")]

    def __str__(self) -> str:
        return f"{self.expert} · {self.item}"


class VoteQuerySet(models.QuerySet):
    def in_campaign(self, campaign: Campaign):
        return self.filter(campaign=campaign)


class Vote(models.Model):
    assignment = models.OneToOneField(Assignment, on_delete=models.CASCADE, related_name="vote")
    expert = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="votes")
    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="votes")
    # The assignment's campaign, kept on the vote: an expert's votes in a campaign are read on every review
    # round trip, and through assignment → item that read grows with all the votes the expert ever gave. Its
    # one index is (campaign, expert) in Meta: an index on the campaign alone tempts a plan made for any expert
    # into reading every vote of the campaign.
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="votes", db_index=False)
    # Canonical terms ('a' is comparison.profile_a), whatever side it was shown on.
    choice = models.CharField(max_length=8, choices=Choice.choices)
    # In reveal-after-vote campaigns the choice before the judge was shown; equal to choice otherwise.
    first_choice = models.CharField(max_length=8, choices=Choice.choices)
    revised_after_reveal = models.BooleanField(default=False)
    rationale = models.TextField(blank=True)
    # {"a": {"<competency name>": "irrelevant" | "unsupported"}, "b": {...}}
    competency_flags = models.JSONField(default=dict, blank=True)
    shown_flipped = models.BooleanField(default=False)
    seconds_spent = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = VoteQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["campaign", "expert", "id"], name="vote_campaign_expert")]
        constraints = [
            models.UniqueConstraint(fields=["expert", "comparison"], name="vote_unique_per_expert"),
            models.CheckConstraint(condition=Q(choice__in=Choice.values), name="vote_choice_valid"),
            models.CheckConstraint(condition=Q(first_choice__in=Choice.values), name="vote_first_choice_valid"),
            models.CheckConstraint(
                condition=Q(seconds_spent__isnull=True) | Q(seconds_spent__gte=0), name="vote_seconds_nonnegative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.expert} → {self.choice} on {self.comparison}"


class ExportPolicy(models.TextChoices):
    EXPERT = "expert", "Expert-only (majority of experts)"
    JUDGE_CONSENSUS = "judge_consensus", "Judge consensus (both orders)"
    EXPERT_OVERRIDES = "expert_overrides", "Expert overrides judge"
    JUDGE_CALIBRATED = "judge_calibrated", "Judges calibrated against experts"


class ExportFormat(models.TextChoices):
    JSONL = "jsonl", "JSONL"
    PARQUET = "parquet", "Parquet"
    HF = "hf", "Hugging Face datasets folder"


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


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
        constraints = [
            models.CheckConstraint(condition=Q(test_fraction__gte=0, test_fraction__lt=1), name="export_test_fraction"),
            models.CheckConstraint(condition=Q(policy__in=ExportPolicy.values), name="export_policy_valid"),
        ]

    def __str__(self) -> str:
        return self.name


class JobKind(models.TextChoices):
    GENERATE = "generate", "Generate profiles"
    JUDGE = "judge", "Judge comparisons"
    EXPORT = "export", "Export dataset"
    IMPORT = "import", "Import"
    PING = "ping", "Worker check"


class JobQuerySet(models.QuerySet):
    """Shared by jobs, training runs and evaluations: work a worker runs, watched through a heartbeat."""

    def active(self):
        return self.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING])

    def stale(self, now=None):
        """Running rows whose worker stopped sending heartbeats (annotation.liveness)."""
        from .liveness import stale_cutoff

        cutoff = stale_cutoff(now)
        return self.filter(status=JobStatus.RUNNING).filter(
            Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
        )


class Job(models.Model):
    """A long piece of work run by a Celery worker, with progress the admin watches live."""

    kind = models.CharField(max_length=10, choices=JobKind.choices)
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    params = models.JSONField(default=dict, blank=True)
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    message = models.TextField(blank=True)
    # Rates the progress page shows, e.g. {"tokens": 1234} for generation.
    stats = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A live worker touches this every few seconds (annotation.liveness); a stale one means the worker died.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The Celery worker (hostname) running it: a worker that restarts fails the jobs it left behind.
    worker = models.CharField(max_length=200, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=JobStatus.values), name="job_status_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else (100 if self.is_finished else 0)

    def elapsed_seconds(self) -> float:
        if not self.started_at:
            return 0.0
        return ((self.finished_at or timezone.now()) - self.started_at).total_seconds()

    def eta_seconds(self) -> float | None:
        """Remaining time at the rate so far; None until there is a rate to go on."""
        if self.is_finished or not self.done or not self.total:
            return None
        return self.elapsed_seconds() / self.done * (self.total - self.done)

    def tokens_per_second(self) -> float | None:
        elapsed = self.elapsed_seconds()
        tokens = self.stats.get("tokens")
        return tokens / elapsed if tokens and elapsed > 0 else None
