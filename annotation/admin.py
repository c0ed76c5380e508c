"""The Django admin of every model, with the actions that start work: import, generate, judge, export."""

import tempfile
from collections import Counter
from pathlib import Path

from axes.admin import AccessAttemptAdmin
from axes.models import AccessAttempt
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Prefetch, Q, Sum
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from .documents.importing import ImportFailed, ImportOptions, import_documents
from .documents.models import TitleOnly
from .jobs.liveness import mark_stale
from .judging.figures import JudgeFigures, judge_figures, judges_figures
from .judging.panels import panel_verdict, panel_verdicts
from .judging.verdicts import combine_asked
from .models import (
    Backend,
    Assignment,
    Campaign,
    CampaignItem,
    Comparison,
    DatasetExport,
    Document,
    Generator,
    Job,
    Judge,
    JudgePanel,
    JudgeVerdict,
    Profile,
    Sample,
    SampleDocument,
    SupersededVote,
    Tournament,
    TournamentMatch,
    TournamentPreference,
    Vote,
)
from .start import start_export, start_generation, start_judging


def generator_figures(generator: Generator) -> list[str]:
    profiles = generator.profiles.all()
    total = profiles.count()
    if not total:
        return ["No profiles yet."]
    valid = profiles.filter(is_valid=True)
    sizes = [len(c) for c in valid.values_list("competencies", flat=True)]
    lines = [f"{total} profiles, {valid.count()} valid ({100 * valid.count() / total:.0f}%), "
             f"{profiles.filter(duplicate_of__isnull=False).count()} near-duplicates"]
    if sizes:
        lines.append(f"Mean competencies per valid profile: {sum(sizes) / len(sizes):.1f}")
    reasons = profiles.filter(is_valid=False).values("invalid_reason").annotate(n=Count("id")).order_by("-n")[:8]
    lines += [f"Invalid ({r['n']}×): {r['invalid_reason']}" for r in reasons]
    return lines


class ImportDocumentsForm(forms.Form):
    file = forms.FileField(help_text="JSONL or CSV with id, title, abstract, authors, year and optional sample.")
    group_by_author = forms.BooleanField(required=False, help_text="Build samples from each first author's documents "
                                                                   "(for rows without a sample).")
    sample_size = forms.IntegerField(min_value=1, max_value=50, initial=5)
    heldout_fraction = forms.FloatField(min_value=0, max_value=0.99, initial=0.2)
    allow_title_only = forms.BooleanField(
        required=False, label="Allow title-only documents",
        help_text="A study that kept only titles: rows may lack an abstract. Such documents carry imported profiles "
                  "and labels; generation and judging refuse them.")


class TitleOnlyFilter(admin.SimpleListFilter):
    title = "abstract"
    parameter_name = "abstract"

    def lookups(self, request, model_admin):
        return [("yes", "Has an abstract"), ("no", "Title only (imported study)")]

    def queryset(self, request, queryset):
        if self.value() == "no":
            return queryset.filter(abstract="") if queryset.model is Document else queryset.title_only()
        if self.value() == "yes":
            return queryset.exclude(abstract="") if queryset.model is Document else queryset.with_abstracts()
        return queryset


class ReadOnlyAdmin(admin.ModelAdmin):
    """Answers and verdicts: shown, never added, edited or deleted here (no user action destroys an answer)."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["external_id", "title", "first_author", "year", "has_abstract", "created_at"]
    list_filter = ["year", TitleOnlyFilter]
    search_fields = ["external_id", "title", "abstract"]
    readonly_fields = ["content_hash", "created_at"]
    change_list_template = "admin/annotation/document/change_list.html"

    @admin.display(description="First author")
    def first_author(self, obj: Document) -> str:
        return obj.authors[0] if obj.authors else ""

    @admin.display(description="Abstract", boolean=True)
    def has_abstract(self, obj: Document) -> bool:
        return not obj.title_only

    def get_urls(self):
        extra = [path("import/", self.admin_site.admin_view(self.import_view), name="annotation_document_import")]
        return extra + super().get_urls()

    def import_view(self, request):
        if not self.has_add_permission(request):
            raise PermissionDenied("Importing documents needs the permission to add documents.")
        form = ImportDocumentsForm(request.POST or None, request.FILES or None)
        report = ""
        if request.method == "POST" and form.is_valid():
            report = self._import_upload(request, form)
            if not report:
                return redirect("admin:annotation_sample_changelist")
        context = {**self.admin_site.each_context(request), "form": form, "report": report,
                   "title": "Import documents", "opts": self.model._meta}
        return TemplateResponse(request, "admin/annotation/document/import.html", context)

    def _import_upload(self, request, form) -> str:
        upload = form.cleaned_data["file"]
        options = ImportOptions(
            group_by="author" if form.cleaned_data["group_by_author"] else "",
            sample_size=form.cleaned_data["sample_size"],
            heldout_fraction=form.cleaned_data["heldout_fraction"],
            allow_title_only=form.cleaned_data["allow_title_only"],
        )
        suffix = Path(upload.name).suffix
        with tempfile.TemporaryDirectory() as tmp:
            # Keep the uploaded name so error reports say which file they are about.
            target = Path(tmp) / Path(upload.name).name
            with target.open("wb") as out:
                for chunk in upload.chunks():
                    out.write(chunk)
            try:
                options.format = "csv" if suffix.lower() == ".csv" else "jsonl"
                result = import_documents(target, options)
            except ImportFailed as exc:
                return exc.report()
        messages.success(request, f"{upload.name}: {result.summary()}")
        return ""


class GenerateForm(forms.Form):
    generator = forms.ModelChoiceField(queryset=Generator.objects.exclude(backend=Backend.IMPORTED))
    candidates = forms.IntegerField(min_value=1, max_value=32, required=False,
                                    help_text="Candidates per sample; empty means the generator's own setting.")


SAMPLE_PAIRINGS = [
    ("tournament", "Knockout tournament per sample (n − 1 matches, preferences by transitivity)"),
    ("all", "All pairs of each sample's pairable profiles"),
    ("active", "Active: add the pairs judges are least sure about to the campaign"),
]
CAMPAIGN_PAIRINGS = [
    ("existing", "The campaign's comparisons"),
    ("active", "Active: add the pairs judges are least sure about (all samples) to the campaign"),
]


class JudgeJobForm(forms.Form):
    judge = forms.ModelChoiceField(queryset=Judge.objects.all())
    pairing = forms.ChoiceField()
    campaign = forms.ModelChoiceField(queryset=Campaign.objects.all(), required=False,
                                      help_text="Where new pairs go (needed for active pairing).")
    limit = forms.IntegerField(min_value=1, required=False,
                               help_text="At most N samples (tournament/all), N pairs added (active) or N "
                                         "comparisons (campaign).")

    def __init__(self, *args, pairings, ask_campaign: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["pairing"].choices = pairings
        if not ask_campaign:  # the action already names the campaign
            del self.fields["campaign"]

    def clean(self):
        data = super().clean()
        if data.get("pairing") == "active" and "campaign" in self.fields and not data.get("campaign"):
            self.add_error("campaign", "Active pairing adds pairs to a campaign: choose one.")
        return data


class RunJobsPermission:
    """For actions that start generation or judging (``permissions=("run_jobs",)``)."""

    def has_run_jobs_permission(self, request) -> bool:
        return request.user.has_perm("annotation.run_jobs")


def judge_action(model_admin, request, queryset, action: str, pairings, scope: dict):
    """An admin action with an intermediate form that starts a judging job and opens its page.

    ``scope``: the samples and/or campaign the action's selection stands for.
    """
    form = JudgeJobForm(request.POST if "apply" in request.POST else None, pairings=pairings,
                        ask_campaign="campaign" not in scope)
    if form.is_valid():
        data = form.cleaned_data
        scope = {"campaign": data.get("campaign"), **scope}
        try:
            job = start_judging(data["judge"], data["pairing"], limit=data["limit"], user=request.user, **scope)
        except TitleOnly as exc:
            model_admin.message_user(request, str(exc), messages.ERROR)
            return None
        model_admin.message_user(request, "Judging started; verdicts already stored are not asked again.")
        return redirect("job_detail", pk=job.pk)
    context = {**model_admin.admin_site.each_context(request), "form": form, "objects": queryset, "action": action,
               "title": "Judge comparisons", "opts": model_admin.model._meta,
               "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME}
    return TemplateResponse(request, "admin/annotation/judge/start.html", context)


class SampleDocumentInline(admin.TabularInline):
    model = SampleDocument
    extra = 0
    autocomplete_fields = ["document"]


@admin.register(Sample)
class SampleAdmin(RunJobsPermission, admin.ModelAdmin):
    list_display = ["name", "split", "document_count", "title_only", "profile_count", "valid_profile_count",
                    "created_at"]
    list_filter = ["split", TitleOnlyFilter]
    search_fields = ["name", "documents__title", "documents__external_id"]
    inlines = [SampleDocumentInline]
    actions = ["generate_profiles", "judge_profiles"]

    @admin.action(description="Generate profiles for the selected samples…", permissions=("run_jobs",))
    def generate_profiles(self, request, queryset):
        form = GenerateForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            try:
                job = start_generation(form.cleaned_data["generator"], queryset, form.cleaned_data["candidates"],
                                       user=request.user)
            except TitleOnly as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return None
            self.message_user(request, f"Generating for {job.total} sample(s); re-runs only fill what is missing.")
            return redirect("job_detail", pk=job.pk)
        context = {**self.admin_site.each_context(request), "form": form, "samples": queryset,
                   "title": "Generate profiles", "opts": self.model._meta,
                   "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME}
        return TemplateResponse(request, "admin/annotation/sample/generate.html", context)

    @admin.action(description="Judge the selected samples' profiles…", permissions=("run_jobs",))
    def judge_profiles(self, request, queryset):
        return judge_action(self, request, queryset, "judge_profiles", SAMPLE_PAIRINGS, {"samples": queryset})

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            n_docs=Count("sampledocument", distinct=True),
            n_title_only=Count("sampledocument", filter=Q(sampledocument__document__abstract=""), distinct=True),
            n_profiles=Count("profiles", distinct=True),
            n_valid=Count("profiles", filter=Q(profiles__is_valid=True), distinct=True),
        )

    @admin.display(description="Documents", ordering="n_docs")
    def document_count(self, obj):
        return obj.n_docs

    @admin.display(description="Title only", boolean=True, ordering="n_title_only")
    def title_only(self, obj):
        return obj.n_title_only > 0

    @admin.display(description="Profiles", ordering="n_profiles")
    def profile_count(self, obj):
        return obj.n_profiles

    @admin.display(description="Valid", ordering="n_valid")
    def valid_profile_count(self, obj):
        return obj.n_valid


@admin.register(Generator)
class GeneratorAdmin(admin.ModelAdmin):
    list_display = ["name", "backend", "model", "attribute_list", "candidates", "temperature", "profile_count",
                    "valid_rate", "tokens_per_second"]
    list_filter = ["backend"]
    search_fields = ["name", "model"]
    readonly_fields = ["figures"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            n_profiles=Count("profiles"), n_valid=Count("profiles", filter=Q(profiles__is_valid=True)),
            tokens=Sum("profiles__completion_tokens"), latency=Sum("profiles__latency_ms"),
        )

    @admin.display(description="Profiles", ordering="n_profiles")
    def profile_count(self, obj):
        return obj.n_profiles

    @admin.display(description="Valid")
    def valid_rate(self, obj):
        return f"{100 * obj.n_valid / obj.n_profiles:.0f}%" if obj.n_profiles else "–"

    @admin.display(description="Attributes")
    def attribute_list(self, obj):
        return ", ".join(f"{key}={value}" for key, value in sorted(obj.attributes.items())) or "–"

    @admin.display(description="Tokens/s")
    def tokens_per_second(self, obj):
        return f"{1000 * obj.tokens / obj.latency:.1f}" if obj.tokens and obj.latency else "–"

    @admin.display(description="Figures")
    def figures(self, obj):
        return format_html_join("", "<p>{}</p>", ((line,) for line in generator_figures(obj)))


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ["__str__", "sample", "generator", "is_valid", "invalid_reason", "completion_tokens", "created_at"]
    list_filter = ["is_valid", "generator", "sample__split"]
    search_fields = ["raw_text", "domain", "sample__name"]
    list_select_related = ["sample", "generator"]
    raw_id_fields = ["sample", "duplicate_of"]


class JudgeVerdictInline(admin.TabularInline):
    model = JudgeVerdict
    extra = 0
    fields = ["judge", "order", "preferred", "is_valid", "error", "confidence", "latency_ms", "reasoning", "raw_text"]
    readonly_fields = fields
    can_delete = False


@admin.register(Comparison)
class ComparisonAdmin(admin.ModelAdmin):
    list_display = ["id", "sample", "profile_a", "profile_b", "source", "judges", "created_at"]
    list_filter = ["source", "sample__split"]
    search_fields = ["sample__name"]
    list_select_related = ["sample", "profile_a__generator", "profile_b__generator", "profile_a__sample",
                           "profile_b__sample"]
    raw_id_fields = ["sample", "profile_a", "profile_b"]
    readonly_fields = ["judgement"]
    inlines = [JudgeVerdictInline]

    def get_queryset(self, request):
        # One extra query for the whole page: every verdict's judge name, order and label.
        verdicts = JudgeVerdict.objects.select_related("judge").only(
            "comparison_id", "order", "preferred", "is_valid", "judge__name")
        return super().get_queryset(request).prefetch_related(Prefetch("verdicts", queryset=verdicts))

    @admin.display(description="Judges (both orders)")
    def judges(self, obj):
        return " · ".join(f"{name}: {label}" for name, label in combined_by_judge(obj)) or "–"

    @admin.display(description="Judgement")
    def judgement(self, obj):
        if obj.pk is None:
            return "–"

        rows = [(f"Judge {name}", label) for name, label in combined_by_judge(obj)]
        rows += [(f"Panel {panel.name} (≥ {panel.threshold:.0%})", panel_verdict(panel, obj))
                 for panel in JudgePanel.objects.prefetch_related("judges")]
        return format_html_join("", "<p>{}: <strong>{}</strong></p>", rows) if rows else "Not judged yet."


def combined_by_judge(comparison: Comparison) -> list[tuple[str, str]]:
    """(judge name, combined verdict) from the comparison's prefetched verdicts."""

    orders: dict[str, dict[str, str | None]] = {}
    for v in comparison.verdicts.all():
        orders.setdefault(v.judge.name, {})[v.order] = v.preferred if v.is_valid else None
    return [(name, combine_asked(o.get("ab"), o.get("ba"), len(o)) + (" (one order)" if len(o) == 1 else ""))
            for name, o in sorted(orders.items())]


NOT_APPLICABLE = "not applicable (no order)"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


class JudgeChangeList(ChangeList):
    def get_results(self, request):
        """The page's judges, and their figures from one more query."""
        super().get_results(request)
        figures = judges_figures(self.result_list)
        for judge in self.result_list:
            judge.judge_figures = figures[judge.pk]


@admin.register(Judge)
class JudgeAdmin(admin.ModelAdmin):
    list_display = ["name", "backend", "model", "verdict_count", "invalid_rate", "flip_rate", "first_position",
                    "tokens", "mean_latency", "cost"]
    list_filter = ["backend"]
    search_fields = ["name", "model"]
    readonly_fields = ["figures", "ranking"]
    fieldsets = [
        (None, {"fields": ["name", "backend", "model"]}),
        ("A/B judges (local and OpenAI-compatible)", {"fields": [
            "base_url", "api_key_env", "prompt_version", "temperature", "max_tokens", "concurrency", "orders",
            "price_prompt_per_mtok", "price_completion_per_mtok"]}),
        ("Scoring judges", {"fields": ["score_baseline", "score_part", "score_margin"],
                            "description": "Each profile is scored alone by its PMI with the abstracts; a pair is "
                                           "decided by the score difference. No presentation order."}),
        ("Figures", {"fields": ["figures", "ranking"]}),
    ]
    show_full_result_count = False  # judges are few: the list needs no second count

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_verdicts=Count("verdicts"))

    def get_changelist(self, request, **kwargs):
        return JudgeChangeList

    def _figures(self, obj) -> JudgeFigures:
        if not hasattr(obj, "judge_figures"):  # the change page: one judge
            obj.judge_figures = judge_figures(obj)
        return obj.judge_figures

    @admin.display(description="Verdicts", ordering="n_verdicts")
    def verdict_count(self, obj):
        return obj.n_verdicts

    @admin.display(description="Invalid")
    def invalid_rate(self, obj):
        return _percent(self._figures(obj).invalid_rate)

    @admin.display(description="Order flips")
    def flip_rate(self, obj):
        figures = self._figures(obj)
        if figures.orderless:
            return NOT_APPLICABLE
        return "not measured (one order)" if figures.verdicts and not figures.pairs else _percent(figures.flip_rate)

    @admin.display(description="First position")
    def first_position(self, obj):
        figures = self._figures(obj)
        return NOT_APPLICABLE if figures.orderless else _percent(figures.first_position_rate)

    @admin.display(description="Tokens (prompt + completion)")
    def tokens(self, obj):
        figures = self._figures(obj)
        return f"{figures.prompt_tokens + figures.completion_tokens:,}"

    @admin.display(description="Mean latency")
    def mean_latency(self, obj):
        latency = self._figures(obj).mean_latency_ms
        return "–" if latency is None else f"{latency / 1000:.2f} s"

    @admin.display(description="Cost (USD)")
    def cost(self, obj):
        return f"{self._figures(obj).cost_usd:.4f}"

    @admin.display(description="Figures")
    def figures(self, obj):
        f = self._figures(obj) if obj.pk else None
        if f is None or not f.verdicts:
            return "No verdicts yet."
        if f.orderless:
            order_lines = ["Order flips and first-position preference: not applicable (a scoring judge scores each "
                           "profile alone and shows no pair in any order)"]
        else:
            order_lines = [
                f"Order flips: {f.flips} of {f.pairs} comparisons with both orders valid ({_percent(f.flip_rate)})"
                if f.pairs else "Order flips: not measured (every verdict was given in one presentation order)",
                f"First-position preference: {f.first} of {f.decisive} decisive verdicts "
                f"({_percent(f.first_position_rate)}; 50% is unbiased)",
            ]
        lines = [
            f"{f.verdicts} verdicts, {f.invalid} invalid ({_percent(f.invalid_rate)}): never counted",
            *order_lines,
            f"Tokens: {f.prompt_tokens:,} prompt + {f.completion_tokens:,} completion; "
            f"mean latency {self.mean_latency(obj)}; cost {f.cost_usd:.4f} USD",
        ]
        return format_html_join("", "<p>{}</p>", ((line,) for line in lines))

    @admin.display(description="Generator ranking (all comparisons)")
    def ranking(self, obj):
        if obj.pk is None:
            return "–"
        # Rankings need the numeric libraries, which web processes load only when a page asks for them.
        from .judging.rankings import judge_matches, rank_generators

        # 200 resamples keep the page quick; `manage.py rank_generators` does 1000.
        ranks = rank_generators(judge_matches(obj, Comparison.objects.all()), n_boot=200)
        if not ranks:
            return "No decided comparisons between different generators yet."
        rows = ((r.name, f"{r.bradley_terry.value:.2f}", f"{r.bradley_terry.low:.2f}", f"{r.bradley_terry.high:.2f}",
                 f"{r.elo.value:.0f}", f"{r.elo.low:.0f}", f"{r.elo.high:.0f}", f"{r.wins:g}", r.matches) for r in ranks)
        body = format_html_join("", "<tr><td>{}</td><td>{} [{}, {}]</td><td>{} [{}, {}]</td><td>{} / {}</td></tr>", rows)
        return format_html("<table><tr><th>Generator</th><th>Bradley–Terry [95% CI]</th><th>Elo (K=16) [95% CI]</th>"
                           "<th>Score / matches</th></tr>{}</table>", body)


@admin.register(JudgeVerdict)
class JudgeVerdictAdmin(ReadOnlyAdmin):
    list_display = ["comparison", "judge", "order", "preferred", "is_valid", "error", "latency_ms", "cost_usd"]
    list_filter = ["judge", "order", "is_valid", "preferred"]
    search_fields = ["raw_text", "reasoning"]
    raw_id_fields = ["comparison"]
    list_select_related = ["judge", "comparison__sample"]


@admin.register(JudgePanel)
class JudgePanelAdmin(admin.ModelAdmin):
    list_display = ["name", "threshold", "judge_names"]
    filter_horizontal = ["judges"]
    readonly_fields = ["consensus"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("judges")

    @admin.display(description="Judges")
    def judge_names(self, obj):
        return ", ".join(j.name for j in obj.judges.all())

    @admin.display(description="Panel verdicts")
    def consensus(self, obj):
        if obj.pk is None:
            return "–"

        judged = Comparison.objects.filter(verdicts__judge__in=obj.judges.all()).distinct()
        counts = Counter(panel_verdicts(obj, judged).values())
        if not counts:
            return "No comparison judged by these judges yet."
        return format_html_join("", "<p>{}: {}</p>", sorted(counts.items()))


@admin.register(TournamentPreference)
class TournamentPreferenceAdmin(admin.ModelAdmin):
    list_display = ["judge", "tournament", "sample", "chosen", "rejected", "implied", "comparison"]
    list_filter = ["judge", "implied"]
    raw_id_fields = ["chosen", "rejected", "comparison", "tournament"]
    list_select_related = ["judge", "sample", "chosen__sample", "chosen__generator", "rejected__sample",
                           "rejected__generator", "tournament__expert", "tournament__judge", "tournament__sample"]


class TournamentMatchInline(admin.TabularInline):
    model = TournamentMatch
    extra = 0
    fields = ["position", "round", "entrant_a", "entrant_b", "outcome", "order", "comparison"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Tournament)
class TournamentAdmin(admin.ModelAdmin):
    """Imported knockout trees, read-only: what was played elsewhere is not edited here."""

    list_display = ["sample", "expert", "judge", "campaign", "match_count", "created_at"]
    list_filter = ["campaign", "judge"]
    search_fields = ["sample__name", "expert__username"]
    list_select_related = ["sample", "expert", "judge", "campaign"]
    readonly_fields = ["sample", "expert", "judge", "campaign", "created_at"]
    inlines = [TournamentMatchInline]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_matches=Count("matches", filter=~Q(matches__outcome="bye")))

    @admin.display(description="Matches (byes not counted)", ordering="n_matches")
    def match_count(self, obj):
        return obj.n_matches


class CampaignItemInline(admin.TabularInline):
    """Ticking Delete on an answered item is refused by Django itself (the votes' PROTECT); such items are
    withdrawn instead (Admin → Campaign items)."""

    model = CampaignItem
    extra = 0
    raw_id_fields = ["comparison"]
    fields = ["comparison", "gold_answer", "assignment_count", "withdrawn_at", "history_link"]
    readonly_fields = ["assignment_count", "withdrawn_at", "history_link"]

    @admin.display(description="History")
    def history_link(self, obj):
        if obj.pk is None:
            return "–"
        return format_html('<a href="{}">answers</a>', reverse("admin:annotation_campaignitem_change", args=[obj.pk]))


@admin.register(CampaignItem)
class CampaignItemAdmin(admin.ModelAdmin):
    """An item's full history, and withdrawing items (which keeps them and their votes)."""

    list_display = ["id", "campaign", "comparison", "gold_answer", "assignment_count", "withdrawn_at"]
    list_filter = ["campaign", ("withdrawn_at", admin.EmptyFieldListFilter)]
    list_select_related = ["campaign", "comparison__sample"]
    raw_id_fields = ["comparison"]
    readonly_fields = ["assignment_count", "withdrawn_at", "history"]
    actions = ["withdraw", "put_back"]

    @admin.action(description="Withdraw the selected items (kept with their votes, left out of exports and figures)",
                  permissions=("change",))
    def withdraw(self, request, queryset):
        count = queryset.filter(withdrawn_at__isnull=True).update(withdrawn_at=timezone.now())
        self.message_user(request, f"Withdrew {count} item(s); their votes are kept.", messages.SUCCESS)

    @admin.action(description="Put the selected items back into the campaign", permissions=("change",))
    def put_back(self, request, queryset):
        count = queryset.filter(withdrawn_at__isnull=False).update(withdrawn_at=None)
        self.message_user(request, f"Put {count} item(s) back.", messages.SUCCESS)

    def has_delete_permission(self, request, obj=None):
        # Answered items are withdrawn, not deleted (the votes' PROTECT refuses it too).
        if obj is not None and CampaignItem.objects.filter(pk=obj.pk).answered().exists():
            return False
        return super().has_delete_permission(request, obj)

    @admin.display(description="History (every answer, oldest first)")
    def history(self, obj):
        if obj.pk is None:
            return "–"
        rows = answer_history(obj)
        if not rows:
            return "No answers yet."
        body = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                                rows)
        return format_html("<table><tr><th>When</th><th>Expert</th><th>Answer (first → final)</th><th>Rationale</th>"
                           "<th>Status</th><th>Record</th></tr>{}</table>", body)


def answer_history(item: CampaignItem) -> list[tuple]:
    """Every answer on the item, current and superseded, oldest first, and what replaced each."""
    current = Vote.objects.filter(assignment__item=item).select_related("expert")
    old = SupersededVote.objects.filter(assignment__item=item).select_related("expert")
    entries = [(v.updated_at, v.pk, v, "") for v in current] + [(s.answered_at, s.vote_id, s, s.reason) for s in old]
    entries.sort(key=lambda e: (e[0], e[1]))
    rows = []
    for when, vote_id, answer, reason in entries:
        status = "current"
        if reason:
            replaced = "revised answer" if reason == "revised" else "next answer on the pair"
            status = f"{answer.get_reason_display()} at {answer.superseded_at:%Y-%m-%d %H:%M:%S}; replaced by the {replaced}"
        answer_text = answer.get_first_choice_display()
        if answer.choice != answer.first_choice:
            answer_text += f" → {answer.get_choice_display()}"
        rows.append((f"{when:%Y-%m-%d %H:%M:%S}", answer.expert.get_username(), answer_text,
                     answer.rationale[:200] or "–", status, f"vote #{vote_id}"))
    return rows


@admin.register(Campaign)
class CampaignAdmin(RunJobsPermission, admin.ModelAdmin):
    list_display = ["name", "judge_display", "overlap", "item_count", "vote_count", "is_active", "created_at"]
    list_filter = ["judge_display", "is_active"]
    search_fields = ["name", "description"]
    filter_horizontal = ["experts"]
    inlines = [CampaignItemInline]
    actions = ["judge_campaign"]

    @admin.action(description="Judge the campaign's comparisons, or add active pairs to it…",
                  permissions=("run_jobs",))
    def judge_campaign(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Choose exactly one campaign.", messages.WARNING)
            return None
        campaign = queryset.get()
        return judge_action(self, request, queryset, "judge_campaign", CAMPAIGN_PAIRINGS, {"campaign": campaign})

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            n_items=Count("items", distinct=True), n_votes=Count("votes", distinct=True)
        )

    @admin.display(description="Comparisons", ordering="n_items")
    def item_count(self, obj):
        return obj.n_items

    @admin.display(description="Votes", ordering="n_votes")
    def vote_count(self, obj):
        return obj.n_votes


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ["item", "expert", "flipped", "created_at", "shown_at", "skipped_at"]
    list_filter = ["item__campaign", "expert"]
    raw_id_fields = ["item"]
    list_select_related = ["item__campaign", "item__comparison__sample", "expert"]


@admin.register(Vote)
class VoteAdmin(ReadOnlyAdmin):
    list_display = ["comparison", "expert", "choice", "first_choice", "revised_after_reveal", "seconds_spent",
                    "created_at"]
    list_filter = ["choice", "revised_after_reveal", "expert", "campaign"]
    search_fields = ["rationale", "expert__username"]
    raw_id_fields = ["assignment", "comparison"]
    list_select_related = ["expert", "comparison__sample"]


@admin.register(SupersededVote)
class SupersededVoteAdmin(ReadOnlyAdmin):
    list_display = ["vote_id", "reason", "expert", "comparison", "choice", "first_choice", "answered_at",
                    "superseded_at"]
    list_filter = ["reason", "campaign", "expert"]
    search_fields = ["rationale", "expert__username"]
    list_select_related = ["expert", "comparison__sample"]


class DatasetExportForm(forms.ModelForm):
    class Meta:
        model = DatasetExport
        fields = ["name", "policy", "format", "campaign", "panel", "ties_as_kto", "test_fraction", "kappa_threshold"]
        labels = {"ties_as_kto": "Ties and both bad as KTO rows"}
        help_texts = {
            "policy": "Expert-only: the experts' majority. Judge consensus: the judges' verdict, the same in both "
                      "orders. Expert overrides judge: experts where they voted, judges elsewhere. Judges calibrated: "
                      "only judges whose κ against the experts reaches the threshold below.",
            "campaign": "Only this campaign's comparisons and votes; empty means everything.",
            "panel": "Judge policies: only this panel's judges, at its agreement threshold; empty means every judge, "
                     "unanimous.",
            "ties_as_kto": "Off: ties and both-bad pairs are dropped. On: the whole export is TRL's unpaired (KTO) "
                           "format, with ties and both-bad pairs as undesirable rows.",
            "test_fraction": "Share of training samples held out as the test split (by sample, so no prompt is in "
                             "both); held-out samples always go to test.",
            "kappa_threshold": "Judges calibrated against experts: the minimum judge–expert κ a judge needs.",
        }


@admin.register(DatasetExport)
class DatasetExportAdmin(admin.ModelAdmin):
    """Add = choose a policy and start the export on a worker; a finished export is a read-only snapshot."""

    form = DatasetExportForm

    settings_fields = ["name", "policy", "format", "campaign", "panel", "ties_as_kto", "test_fraction",
                       "kappa_threshold"]
    result_fields = ["status", "row_counts", "snapshot_files", "sha256", "path", "error", "created_by",
                     "created_at", "finished_at", "dataset_card"]
    list_display = ["name", "policy", "format", "campaign", "status", "row_counts", "created_at"]
    list_filter = ["policy", "format", "status"]
    list_select_related = ["campaign"]
    search_fields = ["name"]
    change_list_template = "admin/annotation/datasetexport/change_list.html"
    actions = ["export_again"]

    def changelist_view(self, request, extra_context=None):

        mark_stale(models=[Job])  # an export whose worker died fails with its job (annotation.jobs.liveness)
        return super().changelist_view(request, extra_context)

    def add_view(self, request, form_url="", extra_context=None):
        # Saving starts a read-only snapshot: there is nothing to go on editing.
        extra_context = {**(extra_context or {}), "show_save_and_continue": False, "show_save_and_add_another": False}
        return super().add_view(request, form_url, extra_context)

    def get_fields(self, request, obj=None):
        return self.settings_fields if obj is None else self.settings_fields + self.result_fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.get_fields(request, obj)

    def has_change_permission(self, request, obj=None):
        # A snapshot never changes: its page is for reading and downloading.
        return False if obj is not None else super().has_change_permission(request, obj)

    def save_model(self, request, obj, form, change):

        obj.created_by = request.user
        super().save_model(request, obj, form, change)
        job = start_export(obj, request.user)
        self.message_user(request, format_html("Export queued: a worker writes the snapshot ({}).",
                                               _job_link(job) or f"job #{job.pk}"))

    @admin.action(description="Export again as a new snapshot (same settings, current labels)",
                  permissions=("add",))
    def export_again(self, request, queryset):


        for old in queryset:
            stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
            new = DatasetExport.objects.create(
                name=f"{old.name[:80]} @ {stamp}", created_by=request.user,
                **{name: getattr(old, name) for name in self.settings_fields if name != "name"},
            )
            start_export(new, request.user)
        self.message_user(request, f"Queued {queryset.count()} new export(s).", messages.SUCCESS)

    @admin.display(description="Rows")
    def row_counts(self, obj: DatasetExport) -> str:
        if "train" not in obj.counts:
            return "–"
        return f"{obj.counts['train']} train · {obj.counts['test']} test"

    @admin.display(description="Files")
    def snapshot_files(self, obj: DatasetExport) -> str:
        files = obj.counts.get("files", {}) if obj.status == "succeeded" else {}
        links = []
        for name, info in files.items():
            try:
                url = reverse("dashboard:export_file", args=[obj.pk, name])
            except NoReverseMatch:  # the staff tools are not mounted
                url = ""
            links.append((url, name, f"{info.get('bytes', 0):,} bytes", info["sha256"]))
        if links:
            try:
                url = reverse("dashboard:export_file", args=[obj.pk, "SHA256SUMS"])
            except NoReverseMatch:
                url = ""
            links.append((url, "SHA256SUMS", "checksums of the files above", obj.sha256))
        return format_html_join(mark_safe("<br>"), '<a href="{}">{}</a> · {} · <code>{}</code>', links) or "–"

    @admin.display(description="Dataset card (README.md)")
    def dataset_card(self, obj: DatasetExport) -> str:
        return format_html("<pre style=\"white-space: pre-wrap; max-width: 70rem\">{}</pre>", obj.card) if obj.card else "–"


def _job_link(job) -> str:
    try:
        return format_html('<a href="{}">progress</a>', reverse("job_detail", args=[job.pk]))
    except NoReverseMatch:
        return ""


@admin.register(Job)
class JobAdmin(RunJobsPermission, admin.ModelAdmin):
    list_display = ["id", "kind", "status", "done", "total", "message", "worker", "created_at", "finished_at"]
    list_filter = ["kind", "status"]
    readonly_fields = ["kind", "status", "params", "done", "total", "message", "error", "created_by",
                       "started_at", "finished_at", "heartbeat_at", "worker"]
    actions = ["cancel_jobs"]

    def changelist_view(self, request, extra_context=None):

        mark_stale(models=[Job])  # a dead worker's job shows as failed, not running, in the list
        return super().changelist_view(request, extra_context)

    @admin.action(description="Cancel the selected jobs", permissions=("run_jobs",))
    def cancel_jobs(self, request, queryset):
        for job in queryset.active():
            self.message_user(request, f"Job #{job.pk}: {job.request_cancel()}.")


class LoginAttemptAdmin(AccessAttemptAdmin):
    """django-axes' list of failed logins; its clean-up deletes rows, so it needs the delete permission."""

    @admin.action(description="Clean up expired attempts", permissions=("delete",))
    def cleanup_expired_attempts(self, request, queryset):
        return super().cleanup_expired_attempts(request, queryset)


admin.site.unregister(AccessAttempt)
admin.site.register(AccessAttempt, LoginAttemptAdmin)
