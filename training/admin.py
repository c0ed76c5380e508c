"""The admin of training runs and evaluations: "Add" opens the start form, actions cancel and resume."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from annotation.jobs.liveness import mark_stale

from .forms import EvaluationForm, RoundForm, StartTrainingForm
from .models import EvaluationRun, Round, TrainingLogEntry, TrainingRun
from .runs import TrainingError
from .start import resume_training, start_evaluation, start_round, start_training

class TrainingLogInline(admin.TabularInline):
    model = TrainingLogEntry
    extra = 0
    can_delete = False
    fields = ["step", "epoch", "loss", "reward_accuracy", "reward_margin", "learning_rate", "elapsed_s"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    """Adding a run starts it, so "add" is the permission to start and cancel runs (run_training)."""

    list_display = ["name", "live_page", "export", "base_model", "status", "progress", "created_at", "finished_at"]
    list_filter = ["status"]
    search_fields = ["name", "base_model"]
    readonly_fields = ["live_page", "export", "base_model", "config", "status", "done", "total",
                       "latest_metrics", "output_dir", "message", "error", "cancel_requested", "resumed_from",
                       "worker", "heartbeat_at", "created_by", "started_at", "finished_at"]
    fields = ["name", *readonly_fields]
    inlines = [TrainingLogInline]
    actions = ["cancel_runs", "resume_runs"]

    @admin.display(description="Run page")
    def live_page(self, obj: TrainingRun) -> str:
        return format_html('<a href="{}">open</a>', reverse("training:run", args=[obj.pk])) if obj.pk else "–"

    @admin.display(description="Progress")
    def progress(self, obj: TrainingRun) -> str:
        return f"{obj.done}/{obj.total or '?'} ({obj.percent}%)"

    def changelist_view(self, request, extra_context=None):
        mark_stale()  # a dead worker's run shows as failed, not running, in the list
        return super().changelist_view(request, extra_context)

    def add_view(self, request, form_url="", extra_context=None):
        """The "Add" button opens the start form: a run is started, never typed in."""
        if not self.has_add_permission(request):
            raise PermissionDenied("Starting a training run needs the permission training.run_training.")
        initial = {"export": request.GET.get("export")} if request.GET.get("export") else None
        form = StartTrainingForm(request.POST or None, initial=initial)
        if request.method == "POST" and form.is_valid():
            try:
                run = start_training(form.cleaned_data["export"], form.config_values(), name=form.cleaned_data["name"],
                                     use_test_split=form.cleaned_data["use_test_split"], user=request.user)
            except TrainingError as exc:
                form.add_error(None, str(exc))
            else:
                self.message_user(request, f"Training run “{run.name}” queued for a training worker.", messages.SUCCESS)
                return redirect("training:run", pk=run.pk)
        context = {**self.admin_site.each_context(request), "form": form, "title": "Start a training run",
                   "opts": self.model._meta}
        return TemplateResponse(request, "admin/training/trainingrun/start.html", context)

    def has_add_permission(self, request) -> bool:
        return request.user.has_perm("training.run_training")

    def has_run_training_permission(self, request) -> bool:
        return request.user.has_perm("training.run_training")

    @admin.action(description="Cancel the selected runs", permissions=("run_training",))
    def cancel_runs(self, request, queryset):
        for run in queryset.active():
            self.message_user(request, f"{run.name}: {run.request_cancel()}.")

    @admin.action(description="Resume the selected runs from their last checkpoint",
                  permissions=("run_training",))
    def resume_runs(self, request, queryset):
        for run in queryset:
            try:
                new = resume_training(run, user=request.user)
            except TrainingError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(request, f"{run.name}: resuming as “{new.name}” ({new.message}).", messages.SUCCESS)


@admin.register(EvaluationRun)
class EvaluationRunAdmin(admin.ModelAdmin):
    list_display = ["name", "live_page", "candidate", "baseline", "judge", "status", "message", "created_at"]
    list_filter = ["status", "judge"]
    search_fields = ["name"]
    readonly_fields = ["live_page", "training_run", "candidate", "baseline", "third", "judge", "labels_source",
                       "labelling_judges", "same_judge_allowed", "sample_limit", "candidates", "status", "message",
                       "results", "expert_campaign", "error", "worker", "heartbeat_at", "created_by", "started_at",
                       "finished_at"]
    fields = ["name", *readonly_fields]
    actions = ["cancel_evaluations"]

    @admin.display(description="Page")
    def live_page(self, obj: EvaluationRun) -> str:
        return format_html('<a href="{}">open</a>', reverse("training:evaluation", args=[obj.pk])) if obj.pk else "–"

    def changelist_view(self, request, extra_context=None):
        mark_stale()
        return super().changelist_view(request, extra_context)

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied("Starting an evaluation needs the permission training.run_evaluation.")
        run_id = request.GET.get("training_run")
        form = EvaluationForm(request.POST or None, initial={"training_run": run_id} if run_id else None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                evaluation = start_evaluation(
                    data["judge"], training_run=data["training_run"], candidate=data["candidate"],
                    baseline=data["baseline"], third=data["third"], sample_limit=data["sample_limit"],
                    candidates=data["candidates"], name=data["name"], allow_same_judge=data["allow_same_judge"],
                    user=request.user)
            except TrainingError as exc:
                form.add_error(None, str(exc))
            else:
                self.message_user(request, f"Evaluation “{evaluation.name}” queued.", messages.SUCCESS)
                return redirect("training:evaluation", pk=evaluation.pk)
        context = {**self.admin_site.each_context(request), "form": form, "title": "Evaluate a tuned model",
                   "opts": self.model._meta}
        return TemplateResponse(request, "admin/training/evaluationrun/start.html", context)

    def has_add_permission(self, request) -> bool:
        return request.user.has_perm("training.run_evaluation")

    def has_run_evaluation_permission(self, request) -> bool:
        return request.user.has_perm("training.run_evaluation")

    @admin.action(description="Cancel the selected evaluations", permissions=("run_evaluation",))
    def cancel_evaluations(self, request, queryset):
        for evaluation in queryset.active():
            self.message_user(request, f"{evaluation.name}: {evaluation.request_cancel()}.")


@admin.register(Round)
class RoundAdmin(admin.ModelAdmin):
    """"Add" starts a round (generate → label → export → train → evaluate) in a training worker, so "add" is the
    permission to start and cancel rounds (run_round)."""

    list_display = ["name", "live_page", "preset", "status", "done", "message", "created_at"]
    list_filter = ["status", "preset"]
    readonly_fields = ["live_page", "preset", "settings", "generator", "labelling_panel", "evaluation_judge", "export",
                       "training_run", "evaluation", "steps", "results", "status", "done", "total", "message",
                       "error", "worker", "heartbeat_at", "created_by", "started_at", "finished_at"]
    fields = ["name", *readonly_fields]
    actions = ["cancel_rounds", "run_again"]

    @admin.display(description="Page")
    def live_page(self, obj: Round) -> str:
        return format_html('<a href="{}">open</a>', reverse("training:round", args=[obj.pk])) if obj.pk else "–"

    def changelist_view(self, request, extra_context=None):
        mark_stale()
        return super().changelist_view(request, extra_context)

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied("Starting a round needs the permission training.run_round.")
        form = RoundForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                row = start_round(form.chosen_preset(), form.cleaned_data["generator"], name=form.cleaned_data["name"],
                                  user=request.user)
            except TrainingError as exc:
                form.add_error(None, str(exc))
            else:
                self.message_user(request, f"Round “{row.name}” queued for a training worker.", messages.SUCCESS)
                return redirect("training:round", pk=row.pk)
        context = {**self.admin_site.each_context(request), "form": form, "title": "Run a round",
                   "opts": self.model._meta}
        return TemplateResponse(request, "admin/training/round/start.html", context)

    def has_add_permission(self, request) -> bool:
        return request.user.has_perm("training.run_round")

    def has_run_round_permission(self, request) -> bool:
        return request.user.has_perm("training.run_round")

    @admin.action(description="Cancel the selected rounds", permissions=("run_round",))
    def cancel_rounds(self, request, queryset):
        for row in queryset.active():
            self.message_user(request, f"{row.name}: {row.request_cancel()}.")

    @admin.action(description="Run the selected rounds again (same preset and generator)", permissions=("run_round",))
    def run_again(self, request, queryset):
        from .round import Preset

        for row in queryset:
            try:
                new = start_round(Preset(**row.settings), row.generator, user=request.user)
            except TrainingError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(request, f"{row.name}: queued again as “{new.name}”.", messages.SUCCESS)
