"""The staff groups CompX ships, one per job on a team (README, "Who may do what").

The lists are written out here, not imported: a migration must say what it did when it ran, whatever the code
says later. A change to a group is a new migration.
"""

from django.db import migrations

ANNOTATION_MODELS = ["document", "sample", "sampledocument", "generator", "profile", "comparison", "judge",
                     "judgepanel", "judgeverdict", "tournament", "tournamentmatch", "tournamentpreference", "campaign",
                     "campaignitem", "assignment", "vote", "datasetexport", "job"]
TRAINING_MODELS = ["trainingrun", "traininglogentry", "evaluationrun", "round"]
EVERYTHING_VIEWED = ([f"annotation.view_{m}" for m in ANNOTATION_MODELS]
                     + [f"training.view_{m}" for m in TRAINING_MODELS] + ["annotation.view_agreement"])

GROUPS = {
    # Runs the expert side: campaigns and who is in them, and reads agreement.
    "annotation lead": EVERYTHING_VIEWED + [
        "annotation.add_campaign", "annotation.change_campaign",
        "annotation.add_campaignitem", "annotation.change_campaignitem",
        "auth.view_user",
    ],
    # Runs the machine side: documents, generators and judges, jobs, exports, training, evaluation, rounds.
    "ML engineer": EVERYTHING_VIEWED + [
        "annotation.add_document", "annotation.change_document", "annotation.add_sample", "annotation.change_sample",
        "annotation.add_sampledocument", "annotation.change_sampledocument",
        "annotation.add_generator", "annotation.change_generator", "annotation.add_judge", "annotation.change_judge",
        "annotation.add_judgepanel", "annotation.change_judgepanel",
        "annotation.run_jobs", "annotation.add_datasetexport", "annotation.download_datasetexport",
        # Sending an evaluation's pairs to experts makes a campaign.
        "annotation.add_campaign",
        "training.run_training", "training.download_trainingrun", "training.run_evaluation", "training.run_round",
    ],
    # Reads everything, changes and downloads nothing.
    "viewer": EVERYTHING_VIEWED,
}


def create_groups(apps, schema_editor):
    from django.contrib.auth.management import create_permissions
    from django.contrib.contenttypes.management import create_contenttypes

    # Permissions are normally made after the last migration; the groups need them now.
    for config in apps.get_app_configs():
        config.models_module = True
        create_contenttypes(config, apps=apps, verbosity=0)
        create_permissions(config, apps=apps, verbosity=0)
        config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, perms in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        found = []
        for perm in perms:
            app_label, codename = perm.split(".")
            found.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        group.permissions.set(found)


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=GROUPS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("annotation", "0014_permissions_by_task"),
        ("training", "0007_permissions_by_task"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
