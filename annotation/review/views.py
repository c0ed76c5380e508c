"""The expert review screen: the queue, the comparison, and the answers to it.

One round trip per judgment: an htmx POST is answered with the next comparison's partial; the same forms
posted without JavaScript are answered with a redirect to the next screen.
"""

from __future__ import annotations

from functools import wraps
from time import perf_counter, process_time

from django import forms
from django.contrib import messages
from django.db import connection
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from . import assignments
from .assignments import Progress
from ..models import Assignment, Campaign, CampaignItem, Comparison, JudgeDisplay, JudgeVerdict, Vote
from .screen import (
    DISPLAY_CHOICES, Pair, build_screen, canonical_choice, display_choices, has_flags, render_guidelines,
)
from ..roles import expert_required

PAGE = "annotation/compare.html"
PANEL = "annotation/compare.html#vote-panel"
ALREADY_ANSWERED = "That pair already had your answer, which stands. Here is the next one."
NOT_REVISABLE = "That answer can no longer be changed. Here is the next pair."
NOTHING_TO_UNDO = "Nothing to undo: that vote is no longer your latest."
MISSING_CHOICE = "Choose A, B, tie or both bad first."
RATIONALE_MAX = 4000


class VoteForm(forms.Form):
    choice = forms.ChoiceField(choices=[(value, label) for value, label, _ in DISPLAY_CHOICES])
    rationale = forms.CharField(required=False, max_length=RATIONALE_MAX)

    def problem(self) -> str:
        """What to tell the expert about an invalid form, in their terms."""
        if "rationale" in self.errors:
            return (f"The rationale is {len(self.data.get('rationale', '')):,} characters; at most {RATIONALE_MAX:,} "
                    f"fit. It is shown cut to {RATIONALE_MAX:,}: shorten it and submit again.")
        return MISSING_CHOICE

    def posted(self) -> QueryDict:
        """The post to show again: a rationale over the limit cut to it, not echoed whole."""
        posted = self.data.copy()
        posted["rationale"] = posted.get("rationale", "")[:RATIONALE_MAX]
        return posted


def server_timing(view):
    """Adds a Server-Timing header: the view's wall and CPU time and its SQL queries (see bench/review_load.py).

    CPU time is what the request itself cost; wall time also holds waiting for the database and for a busy
    machine's cores.
    """

    @wraps(view)
    def timed(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        query_seconds: list[float] = []

        def measure(execute, sql, params, many, context):
            start = perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                query_seconds.append(perf_counter() - start)

        start, start_cpu = perf_counter(), process_time()
        with connection.execute_wrapper(measure):
            response = view(request, *args, **kwargs)
        total_ms, cpu_ms = (perf_counter() - start) * 1000, (process_time() - start_cpu) * 1000
        response["Server-Timing"] = (
            f"app;dur={total_ms:.2f}, cpu;dur={cpu_ms:.2f}, "
            f'db;dur={sum(query_seconds) * 1000:.2f};desc="{len(query_seconds)} queries"'
        )
        return response

    return timed


def _get_campaign_for_expert(request: HttpRequest, pk: int) -> Campaign:
    return get_object_or_404(Campaign.objects.for_expert(request.user), pk=pk)


def _get_assignment_for_expert(request: HttpRequest, pk: int, *, screen: bool = True) -> Assignment:
    """The expert's own assignment ``pk`` in one of their active campaigns, else 404. ``screen=False``: as an
    answer needs it, without what showing the pair again needs (assignments.for_answer, for_screen)."""
    mine = assignments.for_screen(request.user) if screen else assignments.for_answer(request.user)
    return get_object_or_404(mine, pk=pk)


def _with_pair(assignment: Assignment) -> Assignment:
    """The assignment with its comparison's two profiles, in one query if it was loaded with ``screen=False``."""
    item = assignment.item
    if not CampaignItem.comparison.is_cached(item):
        item.comparison = Comparison.objects.select_related("profile_a", "profile_b").get(pk=item.comparison_id)
    return assignment


def _vote_of(assignment: Assignment) -> Vote | None:
    return getattr(assignment, "vote", None)


def _is_answered(assignment: Assignment) -> bool:
    return assignment.voted_at is not None or assignment.skipped_at is not None


def _is_revisable(assignment: Assignment) -> bool:
    vote = _vote_of(assignment)
    return (vote is not None and vote.pk == assignment.latest_vote_id
            and assignment.item.campaign.judge_display == JudgeDisplay.REVEAL)


def _verdicts(campaign: Campaign, assignment: Assignment, *, revealed: bool) -> list[JudgeVerdict] | None:
    """The campaign judge's verdicts on the pair, when this display mode shows them now; None otherwise."""
    shown = (campaign.judge_display == JudgeDisplay.ALONGSIDE
             or campaign.judge_display == JudgeDisplay.REVEAL and revealed)
    if not shown or campaign.judge_id is None:
        return None
    return assignments.verdicts_on(assignment, campaign.judge_id)


def _render(request: HttpRequest, campaign: Campaign, assignment: Assignment | None, progress: Progress, *,
            notice: str = "", error: str = "", revealed: bool = False, posted: QueryDict | None = None,
            verdicts: list[JudgeVerdict] | None = None, status: int = 200) -> HttpResponse:
    """The comparison screen: the whole page, or just the panel for htmx. ``verdicts``: if already fetched."""
    screen = None
    if assignment is not None:
        documents = assignments.abstracts_of(assignment)
        if verdicts is None:
            verdicts = _verdicts(campaign, assignment, revealed=revealed)
        screen = build_screen(assignment, documents, verdicts, revealed=revealed, posted=posted)
    context = {
        "campaign": campaign,
        "screen": screen,
        "progress": progress,
        "choices": display_choices(screen.choice if screen else ""),
        "notice": notice,
        "error": error,
    }
    if request.htmx:
        return render(request, PANEL, context, status=status)
    context["guidelines"] = render_guidelines(campaign.guidelines) if campaign.guidelines else ""
    return render(request, PAGE, context, status=status)


def _next(request: HttpRequest, campaign: Campaign, *, notice: str = "", may_have_open: bool = True) -> HttpResponse:
    """After an answer: the next comparison (htmx), or a redirect to it (a plain form post)."""
    if not request.htmx:
        if notice:
            messages.info(request, notice)
        return redirect("annotation:campaign", campaign.pk)
    assignment, progress = assignments.next_assignment(request.user, campaign, may_have_open=may_have_open)
    return _render(request, campaign, assignment, progress, notice=notice)


@server_timing
@expert_required
@require_GET
def queue(request: HttpRequest) -> HttpResponse:
    """The expert's next comparison, in the oldest campaign that has one; else where they stand."""
    campaigns = list(Campaign.objects.for_expert(request.user).order_by("created_at"))
    for campaign in campaigns:
        if assignments.has_work(request.user, campaign):
            return redirect("annotation:campaign", campaign.pk)
    standing = [(campaign, assignments.campaign_progress(campaign, request.user)) for campaign in campaigns]
    return render(request, "annotation/queue.html", {"standing": standing})


@server_timing
@expert_required
@require_GET
def campaign_queue(request: HttpRequest, pk: int) -> HttpResponse:
    campaign = _get_campaign_for_expert(request, pk)
    assignment, progress = assignments.next_assignment(request.user, campaign)
    return _render(request, campaign, assignment, progress)


@server_timing
@expert_required
@require_GET
def assignment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One pair: open for a vote, or revealed for revision right after a reveal-after-vote vote."""
    assignment = _get_assignment_for_expert(request, pk)
    campaign = assignment.item.campaign
    open_ = not _is_answered(assignment)
    if not open_ and not _is_revisable(assignment):
        return redirect("annotation:campaign", campaign.pk)
    progress = assignments.campaign_progress(campaign, request.user)
    return _render(request, campaign, assignment, progress, revealed=not open_)


@server_timing
@expert_required
@require_POST
def vote(request: HttpRequest, pk: int) -> HttpResponse:
    assignment = _get_assignment_for_expert(request, pk, screen=False)
    campaign = assignment.item.campaign
    if _is_answered(assignment):
        return _next(request, campaign, notice=ALREADY_ANSWERED, may_have_open=assignment.others_open)
    form = VoteForm(request.POST)
    if not form.is_valid():
        progress = assignments.campaign_progress(campaign, request.user)
        return _render(request, campaign, _with_pair(assignment), progress, error=form.problem(),
                       posted=form.posted(), status=422)
    flags = Pair.of(_with_pair(assignment)).flags_from(request.POST) if has_flags(request.POST) else {}
    # Read before the vote is stored, so the vote records whether the judge is shown after it (what keeps
    # its blind answer through an undo); the same one query as reading them after.
    verdicts = _verdicts(campaign, assignment, revealed=True) if campaign.judge_display == JudgeDisplay.REVEAL else None
    revealed = bool(verdicts) and any(verdict.is_valid for verdict in verdicts)
    recorded = assignments.record_vote(
        assignment,
        choice=canonical_choice(form.cleaned_data["choice"], flipped=assignment.flipped),
        rationale=form.cleaned_data["rationale"],
        flags=flags,
        revealed=revealed,
    )
    if recorded is None:
        return _next(request, campaign, notice=ALREADY_ANSWERED, may_have_open=assignment.others_open)
    request.answer_saved = True
    if revealed:
        return _reveal(request, campaign, assignment, recorded, verdicts)
    return _next(request, campaign, may_have_open=assignment.others_open)


def _reveal(request: HttpRequest, campaign: Campaign, assignment: Assignment, recorded: Vote,
            verdicts: list[JudgeVerdict]) -> HttpResponse:
    """Show the judge's verdict on the pair just voted on, so the expert may revise."""
    if not request.htmx:
        return redirect("annotation:assignment", assignment.pk)
    _with_pair(assignment)
    assignment.vote = recorded
    progress = assignments.campaign_progress(campaign, request.user)
    return _render(request, campaign, assignment, progress, revealed=True, verdicts=verdicts)


@server_timing
@expert_required
@require_POST
def skip(request: HttpRequest, pk: int) -> HttpResponse:
    assignment = _get_assignment_for_expert(request, pk, screen=False)
    skipped = assignments.skip(assignment)
    request.answer_saved = bool(skipped)
    return _next(request, assignment.item.campaign, notice="" if skipped else ALREADY_ANSWERED,
                 may_have_open=assignment.others_open)


@server_timing
@expert_required
@require_POST
def revise(request: HttpRequest, pk: int) -> HttpResponse:
    """The expert's final answer after the reveal; only their latest vote, only in reveal campaigns."""
    assignment = _get_assignment_for_expert(request, pk)
    campaign = assignment.item.campaign
    if not _is_revisable(assignment):
        return _next(request, campaign, notice=NOT_REVISABLE, may_have_open=assignment.others_open)
    form = VoteForm(request.POST)
    if not form.is_valid():
        progress = assignments.campaign_progress(campaign, request.user)
        return _render(request, campaign, assignment, progress, error=form.problem(), revealed=True,
                       posted=form.posted(), status=422)
    pair = Pair.of(assignment)
    assignments.revise(
        assignment.vote,
        choice=pair.canonical_choice(form.cleaned_data["choice"]),
        rationale=form.cleaned_data["rationale"],
        flags=pair.flags_from(request.POST),
    )
    request.answer_saved = True
    return _next(request, campaign, may_have_open=assignment.others_open)


@server_timing
@expert_required
@require_POST
def undo(request: HttpRequest, pk: int) -> HttpResponse:
    """Take back the expert's latest vote in the campaign (named by the form) and show that pair again."""
    campaign = _get_campaign_for_expert(request, pk)
    vote_id = request.POST.get("undo_vote", "")
    reopened = assignments.undo_last_vote(request.user, campaign, int(vote_id)) if vote_id.isdigit() else None
    if reopened is None:
        return _next(request, campaign, notice=NOTHING_TO_UNDO)
    request.answer_saved = True
    if not request.htmx:
        return redirect("annotation:assignment", reopened)
    assignment = _get_assignment_for_expert(request, reopened)
    return _render(request, campaign, assignment, assignments.campaign_progress(campaign, request.user))
