"""The site's own pages: the home page each role lands on, and the health check."""

from django.conf import settings as django_settings
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from compx_site.celery import app as celery_app

from .jobs.liveness import mark_stale
from .models import Campaign, Job
from .roles import is_admin, is_expert


@login_required
def home(request: HttpRequest) -> HttpResponse:
    campaigns = Campaign.objects.filter(experts=request.user, is_active=True) if is_expert(request.user) else []
    jobs = []
    if is_admin(request.user) and request.user.has_perm("annotation.view_job"):
        mark_stale(models=[Job])  # a dead worker's job shows as failed, not running
        jobs = Job.objects.select_related("created_by")[:8]
    return render(request, "home.html", {
        "is_expert": is_expert(request.user),
        "is_admin": is_admin(request.user),
        "campaigns": campaigns,
        "jobs": jobs,
    })


def _database_ok() -> tuple[bool, str]:
    try:
        connection.ensure_connection()
        if not connection.is_usable():  # a connection opened earlier that no longer answers
            return False, "the database connection does not answer"
        return True, connection.vendor
    except Exception as exc:  # a health check reports any failure rather than raising it
        return False, f"{type(exc).__name__}: {exc}"


def _broker_ok() -> tuple[bool, str]:
    try:
        with celery_app.connection_for_write(django_settings.CELERY_BROKER_URL) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            return True, conn.as_uri()  # as_uri() masks any password
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 or 503 for anyone (a load balancer); what answered and how (hosts, errors) only for staff."""
    db_ok, db_detail = _database_ok()
    broker_ok, broker_detail = _broker_ok()
    healthy = db_ok and broker_ok
    body = {"status": "ok" if healthy else "error", "database": {"ok": db_ok}, "broker": {"ok": broker_ok}}
    if is_admin(request.user):
        body["database"]["detail"], body["broker"]["detail"] = db_detail, broker_detail
    return JsonResponse(body, status=200 if healthy else 503)


def root(request: HttpRequest) -> HttpResponse:
    return redirect("home")
