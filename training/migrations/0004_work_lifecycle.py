"""Training runs and evaluations are ``Work`` like jobs: a run's step / total steps become the shared progress
fields (renamed, so every run keeps its figures), evaluations gain them, and the status checks are named per model."""

from django.db import migrations, models

STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"]


class Migration(migrations.Migration):

    dependencies = [
        ("training", "0003_run_configs_as_trl_fields"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="trainingrun", name="training_step_within_total"),
        migrations.RemoveConstraint(model_name="trainingrun", name="training_status_valid"),
        migrations.RemoveConstraint(model_name="evaluationrun", name="evaluation_status_valid"),
        migrations.RenameField(model_name="trainingrun", old_name="step", new_name="done"),
        migrations.RenameField(model_name="trainingrun", old_name="total_steps", new_name="total"),
        migrations.AddField(model_name="evaluationrun", name="done", field=models.PositiveIntegerField(default=0)),
        migrations.AddField(model_name="evaluationrun", name="total", field=models.PositiveIntegerField(default=0)),
        migrations.AddConstraint(
            model_name="trainingrun",
            constraint=models.CheckConstraint(condition=models.Q(("status__in", STATUSES)),
                                              name="training_trainingrun_status_valid"),
        ),
        migrations.AddConstraint(
            model_name="trainingrun",
            constraint=models.CheckConstraint(
                condition=models.Q(("done__lte", models.F("total")), ("total", 0), _connector="OR"),
                name="training_step_within_total"),
        ),
        migrations.AddConstraint(
            model_name="evaluationrun",
            constraint=models.CheckConstraint(condition=models.Q(("status__in", STATUSES)),
                                              name="training_evaluationrun_status_valid"),
        ),
    ]
