"""Every shipped staff group may read superseded answers (the history of each item), as it reads votes."""

from django.db import migrations

GROUPS = ["annotation lead", "ML engineer", "viewer"]


def grant(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    config = apps.get_app_config("annotation")
    config.models_module = True
    create_permissions(config, apps=apps, verbosity=0)
    config.models_module = None
    Permission = apps.get_model("auth", "Permission")
    view = Permission.objects.get(content_type__app_label="annotation", codename="view_supersededvote")
    for group in apps.get_model("auth", "Group").objects.filter(name__in=GROUPS):
        group.permissions.add(view)


def revoke(apps, schema_editor):
    Permission = apps.get_model("auth", "Permission")
    for group in apps.get_model("auth", "Group").objects.filter(name__in=GROUPS):
        group.permissions.remove(*Permission.objects.filter(codename="view_supersededvote"))


class Migration(migrations.Migration):
    dependencies = [("annotation", "0016_append_only_answers")]

    operations = [migrations.RunPython(grant, revoke)]
