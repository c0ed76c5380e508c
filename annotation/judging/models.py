"""Comparisons (two profiles of one sample), the judges, their verdicts in both orders, panels, tournaments."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Count, F, Max, Q

from training.ml.scoring import BASELINES, PARTS, SCORER_PROMPT_VERSION, ScorerSettings

from ..documents.models import Sample
from ..profiles.models import Profile
from .verdicts import combine_asked


# How a judging job picks the comparisons it judges (annotation.judging.strategies).
PAIRINGS = ("existing", "all", "tournament", "active")


class PairingSource(models.TextChoices):
    TOURNAMENT = "tournament", "Knockout tournament"
    ALL = "all", "All pairs"
    ACTIVE = "active", "Active (judges unsure)"
    EVALUATION = "evaluation", "Evaluation"
    IMPORTED = "imported", "Imported"


class ComparisonQuerySet(models.QuerySet):
    def ensure(self, pairs: Sequence[tuple[int, int, int]], source: str) -> list[Comparison]:
        """The comparison of each (sample id, profile id, profile id), created where missing (existing ones keep
        their source); in the order of ``pairs``, profiles loaded."""
        keys = [(s, min(p, q), max(p, q)) for s, p, q in pairs]
        self.bulk_create([Comparison(sample_id=s, profile_a_id=a, profile_b_id=b, source=source) for s, a, b in keys],
                         ignore_conflicts=True)
        found = self.filter(profile_a_id__in={a for _, a, _ in keys}, profile_b_id__in={b for *_, b in keys})
        by_pair = {(c.profile_a_id, c.profile_b_id): c for c in found.select_related("profile_a", "profile_b")}
        return [by_pair[(a, b)] for _, a, b in keys]


class Comparison(models.Model):
    """An unordered pair of profiles of one sample; stored canonically with profile_a.id < profile_b.id."""

    sample = models.ForeignKey(Sample, on_delete=models.CASCADE, related_name="comparisons")
    profile_a = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+")
    profile_b = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+")
    source = models.CharField(max_length=12, choices=PairingSource.choices, default=PairingSource.ALL)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ComparisonQuerySet.as_manager()

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


class JudgeBackend(models.TextChoices):
    LOCAL = "local", "Local transformers (A/B prompt)"
    OPENAI = "openai", "OpenAI-compatible (A/B prompt)"
    SCORING = "scoring", "Scoring (each profile's PMI with the abstracts; no presentation order)"


class JudgeOrders(models.TextChoices):
    BOTH = "both", "Both orders"
    ONE = "one", "One order (half the cost; order flips not measured)"
    # A scoring judge never shows a pair: its one verdict per comparison is stored in canonical order "ab".
    NONE = "none", "No presentation order (scoring judges)"


_DEFAULT_SCORING = ScorerSettings()


class Judge(models.Model):
    name = models.CharField(max_length=100, unique=True)
    backend = models.CharField(max_length=10, choices=JudgeBackend.choices, default=JudgeBackend.OPENAI)
    model = models.CharField(max_length=300, help_text='A scoring judge: "default" (SmolLM2-135M-Instruct), '
                             '"gemma" (Gemma 3 270M), or a local model folder.')
    base_url = models.URLField(blank=True)
    api_key_env = models.CharField(max_length=100, blank=True)
    prompt_version = models.CharField(max_length=50, default="judge-v1")
    temperature = models.FloatField(default=0.0)
    max_tokens = models.PositiveIntegerField(default=512)
    concurrency = models.PositiveSmallIntegerField(default=4)
    orders = models.CharField(
        max_length=4, choices=JudgeOrders.choices, default=JudgeOrders.BOTH,
        help_text="One order halves the cost: each comparison is shown in one order, chosen by a stable coin per "
                  "comparison so that position bias does not favour either side. Its verdicts count (as one-order); "
                  "whether they would flip with the order is not measured. A scoring judge has no order (set for "
                  "you).")
    # Scoring judges only (training.ml.scoring.ScorerSettings; defaults measured in bench/data/README.md).
    score_baseline = models.CharField(
        max_length=12, choices=[(b, b) for b in BASELINES], default=_DEFAULT_SCORING.baseline,
        help_text="Scoring judges: what a profile's likelihood with its abstracts is compared with — another "
                  "sample's abstracts (other) or no abstracts (none).")
    score_part = models.CharField(
        max_length=12, choices=[(p, p) for p in PARTS], default=_DEFAULT_SCORING.part,
        help_text="Scoring judges: score the whole profile, or its competency lines only.")
    score_margin = models.FloatField(
        default=_DEFAULT_SCORING.margin,
        help_text="Scoring judges: a PMI difference (nats per token) at most this is a tie.")
    # USD per million tokens; leave at 0 for local or free judges.
    price_prompt_per_mtok = models.DecimalField(max_digits=10, decimal_places=4, default=0)
    price_completion_per_mtok = models.DecimalField(max_digits=10, decimal_places=4, default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(backend__in=JudgeBackend.values), name="judge_backend_valid"),
            models.CheckConstraint(condition=Q(concurrency__gte=1), name="judge_concurrency_positive"),
            # Scoring judges, and only they, have no presentation order.
            models.CheckConstraint(condition=Q(backend=JudgeBackend.SCORING, orders=JudgeOrders.NONE)
                                   | ~Q(backend=JudgeBackend.SCORING) & ~Q(orders=JudgeOrders.NONE),
                                   name="judge_orderless_iff_scoring"),
            models.CheckConstraint(condition=Q(score_margin__gte=0), name="judge_score_margin_nonnegative"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """A scoring judge gets no order and the scorer's prompt version; its settings must be valid."""
        if self.backend == JudgeBackend.SCORING:
            self.orders = JudgeOrders.NONE
            self.prompt_version = SCORER_PROMPT_VERSION
            try:
                self.scorer_settings()
            except ValueError as error:
                raise ValidationError(str(error)) from None
        elif self.orders == JudgeOrders.NONE:
            raise ValidationError({"orders": "only a scoring judge has no presentation order"})

    @property
    def orderless(self) -> bool:
        """True for a scoring judge: its one verdict per comparison is complete, with no order to flip."""
        return self.orders == JudgeOrders.NONE

    def scorer_settings(self) -> ScorerSettings:
        return ScorerSettings(baseline=self.score_baseline, part=self.score_part,
                              margin=self.score_margin).validate()

    @property
    def orders_asked(self) -> int:
        return 1 if self.orders in (JudgeOrders.ONE, JudgeOrders.NONE) else 2

    def orders_for(self, comparison_id: int) -> tuple[str, ...]:
        """The presentation orders this judge is asked for a comparison ("ab" alone for a scoring judge: the
        canonical order its one verdict is stored in)."""
        if self.orderless:
            return ("ab",)
        if self.orders != JudgeOrders.ONE:
            return ("ab", "ba")
        coin = hashlib.sha256(f"order:{comparison_id}".encode()).digest()[0] % 2
        return ("ab",) if coin == 0 else ("ba",)


class Order(models.TextChoices):
    AB = "ab", "a shown first"
    BA = "ba", "b shown first"


class Preferred(models.TextChoices):
    """Verdicts and votes are stored in canonical terms: 'a' is always comparison.profile_a."""

    A = "a", "A"
    B = "b", "B"
    TIE = "tie", "Tie"


class JudgeVerdictQuerySet(models.QuerySet):
    def per_pair(self):
        """One row per (comparison, judge), grouped by the database: the canonical label of each order (``ab``,
        ``ba``; None where that order is invalid or not asked), the verdicts stored (``answered``) and how many
        of them are invalid (``invalid``)."""
        return self.order_by().values("comparison_id", "judge_id").annotate(
            ab=Max("preferred", filter=Q(order=Order.AB, is_valid=True)),
            ba=Max("preferred", filter=Q(order=Order.BA, is_valid=True)),
            answered=Count("pk"),
            invalid=Count("pk", filter=Q(is_valid=False)),
        )

    def combined(self) -> dict[tuple[int, int], str]:
        """(comparison id, judge id) → the verdict over the orders asked: "a", "b", "tie", "inconsistent" or
        "invalid" (``verdicts.combine_asked``: one order asked gives that order's verdict); pairs never judged
        are absent."""
        return {(row["comparison_id"], row["judge_id"]): combine_asked(row["ab"], row["ba"], row["answered"])
                for row in self.per_pair()}


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

    objects = JudgeVerdictQuerySet.as_manager()

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


class Tournament(models.Model):
    """One knockout tree over one sample's profiles, played elsewhere by one expert or one judge (imported).

    Its matches are stored as what they were (an expert's vote, a judge's verdict in the order it was given),
    and the preferences the tree implies as ``TournamentPreference`` rows marked implied: never votes.
    """

    sample = models.ForeignKey(Sample, on_delete=models.CASCADE, related_name="tournaments")
    judge = models.ForeignKey(Judge, null=True, blank=True, on_delete=models.CASCADE, related_name="tournaments")
    expert = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                               related_name="tournaments")
    # The campaign its matches are in (required for an expert's: votes belong to a campaign).
    campaign = models.ForeignKey("annotation.Campaign", null=True, blank=True, on_delete=models.CASCADE,
                                 related_name="tournaments")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["sample", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(judge__isnull=True) ^ Q(expert__isnull=True),
                                   name="tournament_judge_or_expert"),
            models.CheckConstraint(condition=Q(expert__isnull=True) | Q(campaign__isnull=False),
                                   name="tournament_expert_has_campaign"),
            models.UniqueConstraint(fields=["sample", "judge"], condition=Q(judge__isnull=False),
                                    name="tournament_unique_per_judge"),
            models.UniqueConstraint(fields=["sample", "expert", "campaign"], condition=Q(expert__isnull=False),
                                    name="tournament_unique_per_expert"),
        ]

    def __str__(self) -> str:
        return f"{self.sample} · {self.judge or self.expert}"


class MatchOutcome(models.TextChoices):
    """In the match's own terms: "a" is ``entrant_a``."""

    A = "a", "a won"
    B = "b", "b won"
    TIE = "tie", "Tie"
    BOTH_BAD = "both_bad", "Both bad"
    BYE = "bye", "Bye"


class TournamentMatch(models.Model):
    tournament = models.ForeignKey(Tournament, on_delete=models.CASCADE, related_name="matches")
    position = models.PositiveSmallIntegerField()  # as listed in the imported file
    round = models.PositiveSmallIntegerField()
    entrant_a = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+")
    entrant_b = models.ForeignKey(Profile, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    comparison = models.ForeignKey(Comparison, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    outcome = models.CharField(max_length=8, choices=MatchOutcome.choices)
    # A judge's match: "ab" when entrant_a was shown first.
    order = models.CharField(max_length=2, blank=True)

    class Meta:
        ordering = ["tournament", "position"]
        constraints = [
            models.UniqueConstraint(fields=["tournament", "position"], name="tournament_match_position_unique"),
            models.CheckConstraint(condition=Q(outcome="bye", entrant_b__isnull=True, comparison__isnull=True)
                                   | ~Q(outcome="bye") & Q(entrant_b__isnull=False, comparison__isnull=False),
                                   name="tournament_match_bye_has_one_entrant"),
        ]


class TournamentPreference(models.Model):
    """A preference derived from a knockout tournament over one sample's candidates.

    A match's winner is preferred over its loser (direct) and over everyone the loser had beaten (implied,
    by transitivity). A judge's tournaments run here are derived from the stored verdicts, so re-running one
    replaces the judge's preferences for the sample as a whole; an imported tournament (``tournament``, an
    expert's or a judge's) keeps the preferences its tree implies.
    """

    judge = models.ForeignKey(Judge, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="tournament_preferences")
    tournament = models.ForeignKey(Tournament, null=True, blank=True, on_delete=models.CASCADE,
                                   related_name="preferences")
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
            models.UniqueConstraint(fields=["tournament", "chosen", "rejected"],
                                    name="tournament_preference_unique_per_tournament"),
            models.CheckConstraint(condition=~Q(chosen=F("rejected")), name="tournament_preference_distinct"),
            models.CheckConstraint(condition=Q(judge__isnull=False) | Q(tournament__isnull=False),
                                   name="tournament_preference_has_source"),
        ]

    def __str__(self) -> str:
        kind = "implied" if self.implied else "direct"
        who = self.judge or (self.tournament.expert if self.tournament_id else "")
        return f"{who}: #{self.chosen_id} over #{self.rejected_id} ({kind})"

