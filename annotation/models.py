"""Every model of the loop, in one import: documents → samples → profiles → comparisons → verdicts and votes
→ exports, and the jobs that make them. Each is defined in its area's ``models`` module; migrations and other
apps import them from here."""

from .documents.models import Document, Sample, SampleDocument, SampleQuerySet, Split
from .export.models import DatasetExport, ExportFormat, ExportPolicy
from .jobs.models import FINISHED_STATUSES, Job, JobKind, JobStatus, Work, WorkQuerySet
from .judging.models import (
    PAIRINGS, Comparison, Judge, JudgeBackend, JudgeOrders, JudgePanel, JudgeVerdict, MatchOutcome, Order, PairingSource,
    Preferred, Tournament, TournamentMatch, TournamentPreference,
)
from .profiles.models import Backend, Generator, Profile, ProfileQuerySet
from .review.models import (
    Assignment, Campaign, CampaignItem, CampaignQuerySet, Choice, JudgeDisplay, SupersededReason, SupersededVote, Vote,
    VoteQuerySet,
)

__all__ = [
    "Assignment", "Backend", "Campaign", "CampaignItem", "CampaignQuerySet", "Choice", "Comparison", "DatasetExport",
    "Document", "ExportFormat", "ExportPolicy", "FINISHED_STATUSES", "Generator", "Job", "JobKind",
    "JobStatus", "Judge", "JudgeBackend", "JudgeDisplay", "JudgeOrders", "JudgePanel", "JudgeVerdict", "MatchOutcome", "Order", "PAIRINGS",
    "PairingSource", "Preferred", "Profile", "ProfileQuerySet", "Sample", "SampleDocument", "SampleQuerySet", "Split",
    "SupersededReason", "SupersededVote",
    "Tournament", "TournamentMatch", "TournamentPreference", "Vote", "VoteQuerySet", "Work", "WorkQuerySet",
]
