"""Expert review: campaigns, the comparisons in them, who is assigned which, and the votes."""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.db import models
from django.db.models import Exists, F, OuterRef, Q

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
        permissions = [("view_agreement", "Can view agreement")]
        constraints = [
            models.CheckConstraint(condition=Q(overlap__gte=1), name="campaign_overlap_positive"),
            models.CheckConstraint(condition=Q(judge_display__in=JudgeDisplay.values), name="campaign_display_valid"),
        ]

    def __str__(self) -> str:
        return self.name

    def add_comparisons(self, comparisons: Iterable[Comparison]) -> None:
        """Put the comparisons in the campaign's queue; those already there stay as they are."""
        CampaignItem.objects.bulk_create([CampaignItem(campaign=self, comparison=c) for c in comparisons],
                                         ignore_conflicts=True)


class Choice(models.TextChoices):
    A = "a", "A"
    B = "b", "B"
    TIE = "tie", "Tie"
    BOTH_BAD = "both_bad", "Both bad"


class CampaignItemQuerySet(models.QuerySet):
    def claimable_for(self, expert, campaign: Campaign):
        """What the expert may be given next in the campaign, least reviewed first: never a comparison they
        already have, in any campaign (a vote is unique per expert and comparison), and never an item whose
        overlap is met; gold items go to every expert, uncapped."""
        theirs = Assignment.objects.filter(expert_id=expert.pk).values("item__comparison_id")
        open_slot = Q(assignment_count__lt=campaign.overlap) | ~Q(gold_answer="")
        return (self.filter(open_slot, campaign_id=campaign.pk, withdrawn_at__isnull=True)
                .exclude(comparison_id__in=theirs).order_by("assignment_count", "id"))

    def answered(self):
        """Items someone voted on: they are withdrawn, never deleted (their answers stay)."""
        return self.filter(Exists(Vote.objects.filter(assignment__item=OuterRef("pk"))))


class CampaignItem(models.Model):
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="items")
    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="campaign_items")
    # Gold items carry a known answer and measure each expert's calibration.
    gold_answer = models.CharField(max_length=8, choices=Choice.choices, blank=True)
    # Live assignments that count toward the overlap (skips give theirs back; gold items, shown to every
    # expert, never count). Denormalised so "least reviewed first" is one indexed ORDER BY, not a join.
    assignment_count = models.PositiveSmallIntegerField(default=0)
    # A withdrawn item is kept with its votes but handed out no more, and left out of progress, exports and
    # figures: an item with answers is never deleted.
    withdrawn_at = models.DateTimeField(null=True, blank=True)

    objects = CampaignItemQuerySet.as_manager()

    class Meta:
        ordering = ["campaign", "id"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "comparison"], name="campaign_item_unique"),
        ]
        indexes = [models.Index(fields=["campaign", "assignment_count", "id"], name="campaign_item_queue")]

    def __str__(self) -> str:
        return f"{self.campaign} · {self.comparison}"

    def take_slot(self, overlap: int) -> bool:
        """Count one more expert on the item unless ``overlap`` are already on it. A conditional UPDATE: of
        two requests for the last slot only one changes the row, on SQLite (no row locks) too."""
        taken = CampaignItem.objects.filter(pk=self.pk, assignment_count__lt=overlap).update(
            assignment_count=F("assignment_count") + 1
        )
        return taken == 1

    def give_back_slot(self) -> None:
        CampaignItem.objects.filter(pk=self.pk, assignment_count__gt=0).update(
            assignment_count=F("assignment_count") - 1
        )


class AssignmentQuerySet(models.QuerySet):
    def waiting(self):
        """Neither voted on nor skipped (a vote always sets ``voted_at``)."""
        return self.filter(voted_at__isnull=True, skipped_at__isnull=True)

    def waiting_for(self, expert):
        """The expert's pairs still waiting for an answer: a handful, found by the index of waiting pairs."""
        return self.waiting().filter(expert_id=expert.pk)

    def of_expert(self, expert):
        """The expert's own assignments, in the active campaigns they still review in, on items not withdrawn."""
        return self.filter(expert_id=expert.pk, item__campaign__is_active=True, item__campaign__experts=expert.pk,
                           item__withdrawn_at__isnull=True)


class Assignment(models.Model):
    item = models.ForeignKey(CampaignItem, on_delete=models.CASCADE, related_name="assignments")
    expert = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    # Left/right is randomised per expert and kept, so the shown order is known for every vote.
    flipped = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    shown_at = models.DateTimeField(null=True, blank=True)
    skipped_at = models.DateTimeField(null=True, blank=True)
    # How often the expert skipped the pair: a skipped pair comes back once at the end of their queue.
    skips = models.PositiveSmallIntegerField(default=0)
    # Set in the vote's own transaction by a conditional UPDATE that only one request can win, so a double
    # submit, a stale page or a skip from another tab can never add a second answer (on SQLite too).
    voted_at = models.DateTimeField(null=True, blank=True)
    # In reveal-after-vote campaigns, the blind answer once the judge was shown: an undo keeps it here, and the
    # vote given next keeps it as its first choice (the judge's verdict can no longer leave it unseen).
    blind_choice = models.CharField(max_length=8, choices=Choice.choices, blank=True)

    objects = AssignmentQuerySet.as_manager()

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

    def mark_answered(self, field: str, when, **also) -> bool:
        """Set ``voted_at`` or ``skipped_at`` (and ``also``) while neither is set: a conditional UPDATE, so of a
        double submit, a stale page and a skip from another tab only one request wins, on SQLite too."""
        return Assignment.objects.filter(pk=self.pk).waiting().update(**{field: when}, **also) == 1


class VoteQuerySet(models.QuerySet):
    def in_campaign(self, campaign: Campaign):
        return self.filter(campaign=campaign)

    def latest_first(self):
        """Newest first: the latest is the one with the highest id (what undo and revise take back)."""
        return self.order_by("-pk")

    def counted(self):
        """The votes figures and exports count: not those on an item withdrawn from its campaign."""
        withdrawn = CampaignItem.objects.filter(campaign=OuterRef("campaign"), comparison=OuterRef("comparison"),
                                                withdrawn_at__isnull=False)
        return self.filter(~Exists(withdrawn))


class Vote(models.Model):
    """An expert's current answer to a pair. What it replaced (an undone or revised answer) is a
    ``SupersededVote``; nothing a user does deletes either (PROTECT on every relation)."""

    assignment = models.OneToOneField(Assignment, on_delete=models.PROTECT, related_name="vote")
    expert = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="votes")
    comparison = models.ForeignKey(Comparison, on_delete=models.PROTECT, related_name="votes")
    # The assignment's campaign, kept on the vote: an expert's votes in a campaign are read on every review
    # round trip, and through assignment → item that read grows with all the votes the expert ever gave. Its
    # one index is (campaign, expert) in Meta: an index on the campaign alone tempts a plan made for any expert
    # into reading every vote of the campaign.
    campaign = models.ForeignKey(Campaign, on_delete=models.PROTECT, related_name="votes", db_index=False)
    # Canonical terms ('a' is comparison.profile_a), whatever side it was shown on.
    choice = models.CharField(max_length=8, choices=Choice.choices)
    # In reveal-after-vote campaigns the choice before the judge was shown; equal to choice otherwise.
    first_choice = models.CharField(max_length=8, choices=Choice.choices)
    revised_after_reveal = models.BooleanField(default=False)
    # The judge's verdict was shown right after this vote (reveal-after-vote, and the judge had one).
    revealed = models.BooleanField(default=False)
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



class SupersededReason(models.TextChoices):
    UNDONE = "undone", "Undone"
    REVISED = "revised", "Revised after the reveal"


class SupersededVote(models.Model):
    """An answer as it stood before an undo or a revision replaced it: written once, never changed or deleted.

    ``vote_id`` is the vote it was: a revised vote still exists with its new answer; an undone one's pair was
    answered again by the next vote on the same assignment.
    """

    vote_id = models.BigIntegerField()
    reason = models.CharField(max_length=8, choices=SupersededReason.choices)
    assignment = models.ForeignKey(Assignment, on_delete=models.PROTECT, related_name="superseded_votes")
    expert = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    comparison = models.ForeignKey(Comparison, on_delete=models.PROTECT, related_name="+")
    campaign = models.ForeignKey(Campaign, on_delete=models.PROTECT, related_name="superseded_votes")
    choice = models.CharField(max_length=8, choices=Choice.choices)
    first_choice = models.CharField(max_length=8, choices=Choice.choices)
    revised_after_reveal = models.BooleanField(default=False)
    revealed = models.BooleanField(default=False)
    rationale = models.TextField(blank=True)
    competency_flags = models.JSONField(default=dict, blank=True)
    shown_flipped = models.BooleanField(default=False)
    seconds_spent = models.FloatField(null=True, blank=True)
    answered_at = models.DateTimeField()
    superseded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["superseded_at", "pk"]
        indexes = [models.Index(fields=["campaign", "expert"], name="superseded_vote_campaign")]

    def __str__(self) -> str:
        return f"{self.expert} → {self.choice} on {self.comparison} ({self.get_reason_display().lower()})"

    @classmethod
    def record(cls, vote: Vote, reason: str) -> "SupersededVote":
        fields = ["assignment_id", "expert_id", "comparison_id", "campaign_id", "choice", "first_choice",
                  "revised_after_reveal", "revealed", "rationale", "competency_flags", "shown_flipped",
                  "seconds_spent"]
        return cls.objects.create(vote_id=vote.pk, reason=reason, answered_at=vote.updated_at,
                                  **{name: getattr(vote, name) for name in fields})
