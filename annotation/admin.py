import tempfile
from pathlib import Path

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q, Sum
from django.utils.html import format_html_join
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path

from .generation import start_generation
from .importing import ImportFailed, ImportOptions, import_documents
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
    Vote,
)


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


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["external_id", "title", "first_author", "year", "created_at"]
    list_filter = ["year"]
    search_fields = ["external_id", "title", "abstract"]
    readonly_fields = ["content_hash", "created_at"]
    change_list_template = "admin/annotation/document/change_list.html"

    @admin.display(description="First author")
    def first_author(self, obj: Document) -> str:
        return obj.authors[0] if obj.authors else ""

    def get_urls(self):
        extra = [path("import/", self.admin_site.admin_view(self.import_view), name="annotation_document_import")]
        return extra + super().get_urls()

    def import_view(self, request):
        if not self.has_add_permission(request):
            raise PermissionError
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


class SampleDocumentInline(admin.TabularInline):
    model = SampleDocument
    extra = 0
    autocomplete_fields = ["document"]


@admin.register(Sample)
class SampleAdmin(admin.ModelAdmin):
    list_display = ["name", "split", "document_count", "profile_count", "valid_profile_count", "created_at"]
    list_filter = ["split"]
    search_fields = ["name", "documents__title", "documents__external_id"]
    inlines = [SampleDocumentInline]
    actions = ["generate_profiles"]

    @admin.action(description="Generate profiles for the selected samples…")
    def generate_profiles(self, request, queryset):
        form = GenerateForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            job = start_generation(form.cleaned_data["generator"], queryset, form.cleaned_data["candidates"],
                                   user=request.user)
            self.message_user(request, f"Generating for {job.total} sample(s); re-runs only fill what is missing.")
            return redirect("job_detail", pk=job.pk)
        context = {**self.admin_site.each_context(request), "form": form, "samples": queryset,
                   "title": "Generate profiles", "opts": self.model._meta,
                   "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME}
        return TemplateResponse(request, "admin/annotation/sample/generate.html", context)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            n_docs=Count("sampledocument", distinct=True),
            n_profiles=Count("profiles", distinct=True),
            n_valid=Count("profiles", filter=Q(profiles__is_valid=True), distinct=True),
        )

    @admin.display(description="Documents", ordering="n_docs")
    def document_count(self, obj):
        return obj.n_docs

    @admin.display(description="Profiles", ordering="n_profiles")
    def profile_count(self, obj):
        return obj.n_profiles

    @admin.display(description="Valid", ordering="n_valid")
    def valid_profile_count(self, obj):
        return obj.n_valid


@admin.register(Generator)
class GeneratorAdmin(admin.ModelAdmin):
    list_display = ["name", "backend", "model", "candidates", "temperature", "profile_count", "valid_rate",
                    "tokens_per_second"]
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
    fields = ["judge", "order", "preferred", "is_valid", "error", "confidence", "latency_ms"]
    readonly_fields = fields
    can_delete = False


@admin.register(Comparison)
class ComparisonAdmin(admin.ModelAdmin):
    list_display = ["id", "sample", "profile_a", "profile_b", "source", "created_at"]
    list_filter = ["source", "sample__split"]
    search_fields = ["sample__name"]
    list_select_related = ["sample", "profile_a__generator", "profile_b__generator", "profile_a__sample",
                           "profile_b__sample"]
    raw_id_fields = ["sample", "profile_a", "profile_b"]
    inlines = [JudgeVerdictInline]


@admin.register(Judge)
class JudgeAdmin(admin.ModelAdmin):
    list_display = ["name", "backend", "model", "base_url", "concurrency", "created_at"]
    list_filter = ["backend"]
    search_fields = ["name", "model"]


@admin.register(JudgeVerdict)
class JudgeVerdictAdmin(admin.ModelAdmin):
    list_display = ["comparison", "judge", "order", "preferred", "is_valid", "error", "latency_ms", "cost_usd"]
    list_filter = ["judge", "order", "is_valid", "preferred"]
    search_fields = ["raw_text", "reasoning"]
    raw_id_fields = ["comparison"]
    list_select_related = ["judge", "comparison__sample"]


@admin.register(JudgePanel)
class JudgePanelAdmin(admin.ModelAdmin):
    list_display = ["name", "threshold"]
    filter_horizontal = ["judges"]


class CampaignItemInline(admin.TabularInline):
    model = CampaignItem
    extra = 0
    raw_id_fields = ["comparison"]
    readonly_fields = ["assignment_count"]


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ["name", "judge_display", "overlap", "item_count", "vote_count", "is_active", "created_at"]
    list_filter = ["judge_display", "is_active"]
    search_fields = ["name", "description"]
    filter_horizontal = ["experts"]
    inlines = [CampaignItemInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            n_items=Count("items", distinct=True), n_votes=Count("items__assignments__vote", distinct=True)
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
class VoteAdmin(admin.ModelAdmin):
    list_display = ["comparison", "expert", "choice", "first_choice", "revised_after_reveal", "seconds_spent",
                    "created_at"]
    list_filter = ["choice", "revised_after_reveal", "expert", "assignment__item__campaign"]
    search_fields = ["rationale", "expert__username"]
    raw_id_fields = ["assignment", "comparison"]
    list_select_related = ["expert", "comparison__sample"]


@admin.register(DatasetExport)
class DatasetExportAdmin(admin.ModelAdmin):
    list_display = ["name", "policy", "format", "status", "counts", "sha256", "created_at"]
    list_filter = ["policy", "format", "status"]
    search_fields = ["name"]
    readonly_fields = ["status", "path", "sha256", "counts", "card", "error", "created_by", "finished_at"]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "status", "done", "total", "message", "created_at", "finished_at"]
    list_filter = ["kind", "status"]
    readonly_fields = ["kind", "status", "params", "done", "total", "message", "error", "created_by",
                       "started_at", "finished_at", "heartbeat_at"]
    actions = ["cancel_jobs"]

    @admin.action(description="Cancel the selected jobs")
    def cancel_jobs(self, request, queryset):
        count = queryset.active().update(cancel_requested=True)
        self.message_user(request, f"Asked {count} job(s) to stop.", messages.SUCCESS)
