"""Jobs share the ``Work`` lifecycle with training runs and evaluations: its status check is named per model."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("annotation", "0011_judge_one_order"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="job", name="job_status_valid"),
        migrations.AddConstraint(
            model_name="job",
            constraint=models.CheckConstraint(
                condition=models.Q(("status__in", ["queued", "running", "succeeded", "failed", "cancelled"])),
                name="annotation_job_status_valid"),
        ),
    ]
