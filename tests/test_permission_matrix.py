"""Every URL pattern and every admin action × every role, generated from the URL conf and the admin registry:
a new endpoint or action that this file does not name fails ``test_every_endpoint_has_a_rule`` until someone
says who may use it.

Roles: anonymous, an expert (who owns the review objects), another expert, staff without permissions, each
shipped group (annotation lead, ML engineer, viewer) and a superuser. The rules below are written out by hand,
independently of the views: a view that checks the wrong permission, or none, fails here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.test import RequestFactory
from django.urls import URLPattern, URLResolver, get_resolver

from annotation.roles import ANNOTATION_LEAD_GROUP, EXPERTS_GROUP, ML_ENGINEER_GROUP, VIEWER_GROUP
from tests.review_factories import make_campaign

pytestmark = pytest.mark.django_db

ROLES = ["anonymous", "expert", "other expert", "staff", ANNOTATION_LEAD_GROUP, ML_ENGINEER_GROUP, VIEWER_GROUP,
         "superuser"]


@dataclass(frozen=True)
class Rule:
    """Who may use an endpoint: ``public``, ``signed_in``, ``expert``, ``own`` (the expert whose object it is;
    another expert gets 404), ``staff`` (any staff account), or staff with every permission in ``perms``."""

    who: str
    perms: tuple[str, ...] = ()


PUBLIC, SIGNED_IN, EXPERT, OWN, STAFF = Rule("public"), Rule("signed_in"), Rule("expert"), Rule("own"), Rule("staff")


def perm(*perms: str) -> Rule:
    return Rule("perm", perms)


SITE_RULES = {
    "home": SIGNED_IN,
    "healthz": PUBLIC,
    "login": PUBLIC,
    "logout": SIGNED_IN,
    "job_detail": perm("annotation.view_job"),
    "job_cancel": perm("annotation.run_jobs"),
    "annotation:queue": EXPERT,
    "annotation:campaign": OWN,
    "annotation:undo": OWN,
    "annotation:assignment": OWN,
    "annotation:vote": OWN,
    "annotation:skip": OWN,
    "annotation:revise": OWN,
    "dashboard:agreement": perm("annotation.view_agreement"),
    "dashboard:agreement_csv": perm("annotation.view_agreement"),
    "dashboard:rankings_csv": perm("annotation.view_agreement"),
    "dashboard:export_file": perm("annotation.download_datasetexport"),
    "training:run": perm("training.view_trainingrun"),
    "training:run_cancel": perm("training.run_training"),
    "training:run_resume": perm("training.run_training"),
    "training:run_merge": perm("training.run_training"),
    "training:run_make_generator": perm("annotation.add_generator"),
    "training:run_download": perm("training.download_trainingrun"),
    "training:evaluation": perm("training.view_evaluationrun"),
    "training:evaluation_cancel": perm("training.run_evaluation"),
    "training:evaluation_send": perm("training.run_evaluation", "annotation.add_campaign"),
    "training:evaluation_make_generator": perm("annotation.add_generator"),
    "training:round": perm("training.view_round"),
    "training:round_cancel": perm("training.run_round"),
    # The admin's own pages every staff account has: the index (which lists only what the account may see),
    # its password, the JavaScript catalogue, and "view on site".
    "admin:index": STAFF,
    "admin:logout": STAFF,
    "admin:login": PUBLIC,
    "admin:password_change": STAFF,
    "admin:password_change_done": STAFF,
    "admin:jsi18n": STAFF,
    "admin:view_on_site": STAFF,
    # Asked here for a sample document's document (SampleDocumentInline): whoever may see documents.
    "admin:autocomplete": Rule("view_or_change", ("annotation.view_document", "annotation.change_document")),
    "admin:app_list": Rule("module", ("annotation",)),  # Django's 404 for an app the account sees nothing of
    # Imported knockout trees are read-only, for everyone; so are answers and verdicts (no user action destroys
    # one): nobody adds or deletes them in the admin.
    "admin:annotation_tournament_add": Rule("nobody"),
    # django-axes' records of logins are written by logins alone.
    **{f"admin:axes_{model}_add": Rule("nobody") for model in ("accessattempt", "accesslog", "accessfailurelog")},
    **{f"admin:annotation_{model}_{page}": Rule("nobody") for model in ("vote", "supersededvote", "judgeverdict")
       for page in ("add", "delete")},
    "admin:annotation_document_import": perm("annotation.add_document"),
    "admin:auth_user_password_change": perm("auth.change_user"),
}
# Starting a run or an evaluation is its "add" (training.admin).
ADD_OVERRIDES = {"training_trainingrun": "training.run_training", "training_evaluationrun": "training.run_evaluation",
                 "training_round": "training.run_round"}
ADMIN_PAGE = re.compile(r"^admin:(?P<app>[a-z]+)_(?P<model>[a-z]+)_(?P<page>changelist|add|change|delete|history)$")

ACTION_RULES = {
    ("annotation.sample", "generate_profiles"): "annotation.run_jobs",
    ("annotation.sample", "judge_profiles"): "annotation.run_jobs",
    ("annotation.campaign", "judge_campaign"): "annotation.run_jobs",
    ("annotation.job", "cancel_jobs"): "annotation.run_jobs",
    ("annotation.datasetexport", "export_again"): "annotation.add_datasetexport",
    ("training.trainingrun", "cancel_runs"): "training.run_training",
    ("training.trainingrun", "resume_runs"): "training.run_training",
    ("training.evaluationrun", "cancel_evaluations"): "training.run_evaluation",
    ("training.round", "cancel_rounds"): "training.run_round",
    ("training.round", "run_again"): "training.run_round",
    ("annotation.campaignitem", "withdraw"): "annotation.change_campaignitem",
    ("annotation.campaignitem", "put_back"): "annotation.change_campaignitem",
    ("axes.accessattempt", "cleanup_expired_attempts"): "axes.delete_accessattempt",
}
READ_ONLY = {"annotation.vote", "annotation.supersededvote", "annotation.judgeverdict"}


def rule_for(name: str) -> Rule | None:
    if name in SITE_RULES:
        return SITE_RULES[name]
    match = ADMIN_PAGE.match(name)
    if not match:
        return None
    app, model, page = match["app"], match["model"], match["page"]
    if page == "add":
        return perm(ADD_OVERRIDES.get(f"{app}_{model}", f"{app}.add_{model}"))
    if page == "delete":
        return perm(f"{app}.delete_{model}")
    return Rule("view_or_change", (f"{app}.view_{model}", f"{app}.change_{model}"))


def endpoints(patterns=None, prefix: str = "", namespace: str = "") -> list[tuple[str, URLPattern]]:
    """(qualified name or route, pattern) of every endpoint in the URL conf, nested ones included."""
    found = []
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            found += endpoints(entry.url_patterns, prefix + str(entry.pattern), inner)
        else:
            name = f"{namespace}{entry.name}" if entry.name else f"{prefix}{entry.pattern}"
            found.append((name, entry))
    return found


# Unnamed patterns: Django's admin redirect from /admin/<app>/<model>/<pk>/ to the change page, and its
# catch-all (a 404 for staff, the login page for anyone else).
UNNAMED = {"admin/annotation/", "admin/training/", "admin/auth/", "admin/axes/", "admin/(?P<url>.*)$", "favicon.ico"}


def test_every_endpoint_has_a_rule():
    missing = []
    for name, pattern in endpoints():
        if rule_for(name) is None and not any(name.startswith(p) for p in UNNAMED):
            missing.append(name)
    assert not missing, f"say who may use these endpoints in tests/test_permission_matrix.py: {missing}"


# --- the world every role is tried against --------------------------------------------------------------


@pytest.fixture
def world(make_user, django_user_model):
    from annotation.models import (
        Assignment, Campaign, DatasetExport, Generator, Job, Judge, JudgePanel, JudgeVerdict, Tournament,
        SupersededVote, TournamentMatch, TournamentPreference, Vote,
    )
    from training.models import EvaluationRun, TrainingLogEntry, TrainingRun

    users = {"anonymous": None, "expert": make_user("alice", expert=True),
             "other expert": make_user("bob", expert=True), "superuser": make_user("root", admin=True)}
    staff = make_user("staffer")
    staff.is_staff = True
    staff.save()
    users["staff"] = staff
    for group in (ANNOTATION_LEAD_GROUP, ML_ENGINEER_GROUP, VIEWER_GROUP):
        user = make_user(group.replace(" ", "-").lower())
        user.is_staff = True
        user.save()
        user.groups.add(Group.objects.get(name=group))
        users[group] = user

    campaign = make_campaign([users["expert"]], pairs=2)
    item = campaign.items.first()
    comparison = item.comparison
    assignment = Assignment.objects.create(item=item, expert=users["expert"])
    judge = Judge.objects.create(name="judge", model="m")
    JudgeVerdict.objects.create(comparison=comparison, judge=judge, order="ab", preferred="a", is_valid=True)
    JudgePanel.objects.create(name="panel").judges.add(judge)
    other = campaign.items.last()
    voted = Assignment.objects.create(item=other, expert=users["expert"])
    answer = Vote.objects.create(assignment=voted, expert=users["expert"], comparison=other.comparison,
                                 campaign=campaign, choice="a", first_choice="a")
    SupersededVote.record(answer, "revised")
    profile_a, profile_b = comparison.profile_a, comparison.profile_b
    tournament = Tournament.objects.create(sample=comparison.sample, judge=judge)
    TournamentMatch.objects.create(tournament=tournament, position=0, round=1, entrant_a=profile_a, outcome="bye")
    TournamentPreference.objects.create(judge=judge, sample=comparison.sample, chosen=profile_a, rejected=profile_b,
                                        comparison=comparison)
    export = DatasetExport.objects.create(name="export", policy="expert")
    run = TrainingRun.objects.create(name="run", export=export)
    TrainingLogEntry.objects.create(run=run, step=1)
    baseline = Generator.objects.create(name="baseline")
    evaluation = EvaluationRun.objects.create(name="evaluation", candidate=profile_a.generator, baseline=baseline,
                                              judge=judge)
    job = Job.objects.create(kind="generate")
    from training.models import Round

    round_ = Round.objects.create(name="round", preset="tiny", generator=baseline, evaluation_judge=judge)
    from axes.models import AccessAttempt, AccessFailureLog, AccessLog

    login = {"username": "alice", "ip_address": "127.0.0.1", "user_agent": "test", "http_accept": "*/*",
             "path_info": "/accounts/login/"}
    AccessAttempt.objects.create(**login, get_data="", post_data="", failures_since_start=1)
    AccessFailureLog.objects.create(**login)
    AccessLog.objects.create(**login)
    return {"users": users, "campaign": campaign, "assignment": assignment, "job": job, "run": run, "round": round_,
            "evaluation": evaluation, "export": export}


def kwargs_for(name: str, pattern: URLPattern, world) -> dict:
    keys = set(pattern.pattern.converters) | set(re.findall(r"\(\?P<(\w+)>", str(pattern.pattern)))
    if not keys:
        return {}
    if name.startswith("annotation:"):
        pk = world["campaign"].pk if name in ("annotation:campaign", "annotation:undo") else world["assignment"].pk
        return {"pk": pk}
    if name.startswith("job_"):
        return {"pk": world["job"].pk}
    if name.startswith("training:run"):
        return {"pk": world["run"].pk, **({"name": "adapter.zip"} if "name" in keys else {})}
    if name.startswith("training:evaluation"):
        return {"pk": world["evaluation"].pk}
    if name.startswith("training:round"):
        return {"pk": world["round"].pk}
    if name == "dashboard:export_file":
        return {"pk": world["export"].pk, "name": "train.jsonl"}
    if name == "admin:auth_user_password_change":
        return {"id": world["users"]["expert"].pk}
    if name == "admin:app_list":
        return {"app_label": "annotation"}
    if name == "admin:view_on_site":
        from django.contrib.contenttypes.models import ContentType

        return {"content_type_id": ContentType.objects.get_for_model(world["campaign"]).pk,
                "object_id": world["campaign"].pk}
    match = ADMIN_PAGE.match(name)
    if match and "object_id" in keys:
        from django.apps import apps

        model = apps.get_model(match["app"], match["model"])
        return {"object_id": model._default_manager.order_by("pk").values_list("pk", flat=True).first()}
    raise AssertionError(f"no arguments known for {name} ({pattern.pattern})")


QUERIES = {"admin:autocomplete": "?app_label=annotation&model_name=sampledocument&field_name=document"}


def allowed(rule: Rule, role: str, user) -> bool:
    if rule.who == "public":
        return True
    if rule.who == "nobody":
        return False
    if user is None:
        return False
    if rule.who == "signed_in":
        return True
    if rule.who in ("expert", "own"):
        return role in ("expert", "other expert") if rule.who == "expert" else role == "expert"
    if not user.is_staff:
        return False
    if rule.who == "staff":
        return True
    if rule.who == "module":
        return user.has_module_perms(rule.perms[0])
    if rule.who == "view_or_change":
        return any(user.has_perm(p) for p in rule.perms)
    return all(user.has_perm(p) for p in rule.perms)


def goes_to_login(response) -> bool:
    return response.status_code == 302 and "/login/" in response["Location"]


def named_endpoints():
    return [(name, pattern) for name, pattern in endpoints() if rule_for(name) is not None]


@pytest.mark.parametrize("role", ROLES)
def test_every_endpoint_answers_each_role_by_its_rule(role, world, client):
    from django.urls import reverse

    user = world["users"][role]
    if user is not None:
        client.force_login(user)
    wrong = []
    for name, pattern in named_endpoints():
        rule = rule_for(name)
        if name in ("logout", "admin:logout", "login", "admin:login"):
            continue  # logging out ends the session the other endpoints need; login is tried in test_site_roles
        url = reverse(name, kwargs=kwargs_for(name, pattern, world)) + QUERIES.get(name, "")
        may = allowed(rule, role, user)
        response = client.get(url)
        denied = response.status_code == 403 or goes_to_login(response)
        if rule.who == "own" and role == "other expert":
            # Someone else's pair does not exist for them (a wrong method is refused before it is looked up).
            denied = response.status_code in (404, 405)
        if name == "admin:app_list" and user is not None and user.is_staff:
            denied = response.status_code == 404  # Django's answer for an app the account sees nothing of
        if may == denied:
            wrong.append(f"GET {url} ({name}): {response.status_code}, expected {'allowed' if may else 'denied'}")
        if not may:
            # A refused action writes nothing: the same refusal for a POST (CSRF is not checked by the client).
            posted = client.post(url)
            if not (posted.status_code in (403, 404, 405) or goes_to_login(posted)):
                wrong.append(f"POST {url} ({name}): {posted.status_code}, expected denied")
    assert not wrong, "\n".join(wrong)


def test_every_admin_action_has_a_rule_and_answers_each_role_by_it(world):
    from django.contrib.auth.models import AnonymousUser

    found, wrong = set(), []
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label_lower
        base = {name for _, name, _ in model_admin._get_base_actions()}
        for name in base:
            key = (label, name)
            found.add(key)
            required = (f"{model._meta.app_label}.delete_{model._meta.model_name}" if name == "delete_selected"
                        else ACTION_RULES.get(key))
            if required is None:
                wrong.append(f"no rule for the action {name} of {label}")
                continue
            for role in ROLES:
                user = world["users"][role] or AnonymousUser()
                request = RequestFactory().get("/admin/")
                request.user = user
                offered = name in model_admin.get_actions(request)
                may = bool(getattr(user, "is_staff", False)) and user.has_perm(required) and label not in READ_ONLY
                if offered != may:
                    wrong.append(f"{label} · {name} for {role}: offered={offered}, expected {may}")
    assert set(ACTION_RULES) <= found, f"actions named here that no longer exist: {set(ACTION_RULES) - found}"
    assert not wrong, "\n".join(wrong)


def test_staff_without_permissions_is_refused_every_staff_page_download_and_action(world, client):
    """The issue's list: exports, artefacts, the comparison CSV, cancelling jobs, merging, generators."""
    from django.urls import reverse

    client.force_login(world["users"]["staff"])
    run, export, job = world["run"], world["export"], world["job"]
    for url, method in [
        (reverse("dashboard:export_file", args=[export.pk, "train.jsonl"]), "get"),
        (reverse("training:run_download", args=[run.pk, "adapter.zip"]), "get"),
        (reverse("dashboard:agreement_csv"), "get"),
        (reverse("job_cancel", args=[job.pk]), "post"),
        (reverse("training:run_merge", args=[run.pk]), "post"),
        (reverse("training:run_make_generator", args=[run.pk]), "post"),
        (reverse("admin:annotation_document_import"), "get"),
        (reverse("admin:annotation_generator_add"), "post"),
    ]:
        assert getattr(client, method)(url).status_code == 403, url
    response = client.post(reverse("admin:annotation_job_changelist"),
                           {"action": "cancel_jobs", "_selected_action": [job.pk]})
    job.refresh_from_db()
    assert response.status_code == 403 and not job.cancel_requested  # no view permission: the list itself is refused


def test_a_viewer_can_read_but_not_cancel_or_export_again(world, client):
    from django.urls import reverse

    client.force_login(world["users"][VIEWER_GROUP])
    job, export = world["job"], world["export"]
    assert client.get(reverse("admin:annotation_job_changelist")).status_code == 200
    client.post(reverse("admin:annotation_job_changelist"), {"action": "cancel_jobs", "_selected_action": [job.pk]})
    job.refresh_from_db()
    assert not job.cancel_requested
    from annotation.models import DatasetExport

    client.post(reverse("admin:annotation_datasetexport_changelist"),
                {"action": "export_again", "_selected_action": [export.pk]})
    assert DatasetExport.objects.count() == 1


def test_the_shipped_groups_each_do_exactly_their_jobs(world):
    """What the README's table says each group does."""
    users = world["users"]
    jobs = {
        "manage campaigns": "annotation.change_campaign",
        "read agreement": "annotation.view_agreement",
        "download exports": "annotation.download_datasetexport",
        "export": "annotation.add_datasetexport",
        "run judges and generation": "annotation.run_jobs",
        "start and cancel training": "training.run_training",
        "download training artefacts": "training.download_trainingrun",
        "evaluate": "training.run_evaluation",
        "run rounds": "training.run_round",
        "import documents": "annotation.add_document",
        "delete anything": "annotation.delete_campaign",
    }
    expected = {
        ANNOTATION_LEAD_GROUP: {"manage campaigns", "read agreement"},
        ML_ENGINEER_GROUP: {"read agreement", "download exports", "export", "run judges and generation",
                            "start and cancel training", "download training artefacts", "evaluate", "run rounds",
                            "import documents"},
        VIEWER_GROUP: {"read agreement"},
        "superuser": set(jobs),
        "staff": set(),
        "expert": set(),
    }
    for role, can in expected.items():
        user = users[role]
        assert {job for job, p in jobs.items() if user.has_perm(p)} == can, role
    assert not Group.objects.get(name=EXPERTS_GROUP).permissions.exists()
