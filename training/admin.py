from django.contrib import admin

from .models import EvaluationRun, TrainingLogEntry, TrainingRun


class TrainingLogInline(admin.TabularInline):
    model = TrainingLogEntry
    extra = 0
    can_delete = False
    fields = ["step", "epoch", "loss", "reward_accuracy", "reward_margin", "learning_rate", "elapsed_s"]
    readonly_fields = fields


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["name", "export", "base_model", "status", "step", "total_steps", "created_at", "finished_at"]
    list_filter = ["status"]
    search_fields = ["name", "base_model"]
    readonly_fields = ["status", "step", "total_steps", "latest_metrics", "output_dir", "error", "heartbeat_at",
                       "started_at", "finished_at", "created_by"]
    inlines = [TrainingLogInline]


@admin.register(EvaluationRun)
class EvaluationRunAdmin(admin.ModelAdmin):
    list_display = ["name", "candidate", "baseline", "judge", "status", "created_at"]
    list_filter = ["status", "judge"]
    search_fields = ["name"]
    readonly_fields = ["status", "results", "error", "finished_at", "created_by"]
