"""Expert review: campaigns, the comparisons in them, who is assigned which, and the votes."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from ..judging.models import Comparison, Judge


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

