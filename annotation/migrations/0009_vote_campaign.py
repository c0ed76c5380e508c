import django.db.models.deletion
from django.db import migrations, models
from django.db.models import OuterRef, Q, Subquery


def fill_in(apps, schema_editor):
    """Every vote's campaign, from its assignment; and ``voted_at`` on assignments answered by an import (the
    import did not set it before), so an assignment with a vote always says it was answered."""
    Vote = apps.get_model("annotation", "Vote")
    Assignment = apps.get_model("annotation", "Assignment")
    Vote.objects.update(campaign_id=Subquery(
        Assignment.objects.filter(pk=OuterRef("assignment_id")).values("item__campaign_id")[:1]))
    Assignment.objects.filter(voted_at__isnull=True, vote__isnull=False).update(voted_at=Subquery(
        Vote.objects.filter(assignment_id=OuterRef("pk")).values("created_at")[:1]))


class Migration(migrations.Migration):

    dependencies = [
        ('annotation', '0008_job_worker'),
    ]

    operations = [
        migrations.AddField(
            model_name='vote',
            name='campaign',
            field=models.ForeignKey(db_index=False, null=True, on_delete=django.db.models.deletion.CASCADE,
                                    related_name='votes', to='annotation.campaign'),
        ),
        migrations.RunPython(fill_in, migrations.RunPython.noop),
        migrations.AlterField(
            model_name='vote',
            name='campaign',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                                    related_name='votes', to='annotation.campaign'),
        ),
        migrations.AddIndex(
            model_name='vote',
            index=models.Index(fields=['campaign', 'expert', 'id'], name='vote_campaign_expert'),
        ),
        migrations.AddIndex(
            model_name='assignment',
            index=models.Index(condition=Q(skipped_at__isnull=True, voted_at__isnull=True), fields=['expert'],
                               name='assignment_waiting'),
        ),
    ]
