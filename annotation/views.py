from django.conf import settings as django_settings
from django.contrib import admin, messages
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseStopPolling

from compx_site.celery import app as celery_app

from .liveness import mark_stale
from .models import Campaign, Job
from .roles import admin_required, is_admin, is_expert


@login_required
def home(request: HttpRequest) -> HttpResponse:
    campaigns = Campaign.objects.filter(experts=request.user, is_active=True) if is_expert(request.user) else []
    jobs = []
    if is_admin(request.user):
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
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
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
    db_ok, db_detail = _database_ok()
    broker_ok, broker_detail = _broker_ok()
    healthy = db_ok and broker_ok
    body = {
        "status": "ok" if healthy else "error",
        "database": {"ok": db_ok, "detail": db_detail},
        "broker": {"ok": broker_ok, "detail": broker_detail},
    }
    return JsonResponse(body, status=200 if healthy else 503)


def root(request: HttpRequest) -> HttpResponse:
    return redirect("home")


def _job_context(job: Job) -> dict:
    return {"job": job, "eta": job.eta_seconds(), "tokens_per_second": job.tokens_per_second(),
            "params": parameter_rows(job.params)}


def parameter_rows(params: dict, shown: int = 12) -> list[tuple[str, str]]:
    """A job's parameters as label and text for the page: no Python dict, and a long id list stays one line."""
    rows = []
    for key, value in params.items():
        if isinstance(value, (list, tuple)):
            text = ", ".join(map(str, value[:shown]))
            text = f"{text}, … ({len(value)} in all)" if len(value) > shown else text or "none"
        elif isinstance(value, bool):
            text = "yes" if value else "no"
        elif value is None:
            text = "–"
        else:
            text = str(value)
        rows.append((key.replace("_", " "), text))
    return rows


@admin_required
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    # Opening (or polling) the page is one of the moments a dead worker's job gets noticed (annotation.liveness).
    mark_stale(models=[Job])
    job = get_object_or_404(Job, pk=pk)
    return live_page(request, "annotation/job.html", "progress", _job_context(job), finished=job.is_finished)


def live_page(request: HttpRequest, template: str, partial: str, context: dict, *, finished: bool) -> HttpResponse:
    """An admin page that polls itself: htmx polls get ``partial`` alone, the first visit the whole page."""
    if request.htmx:
        response = render(request, f"{template}#{partial}", context)
        # 286 tells htmx to stop polling: the page stops asking once the work has ended.
        return HttpResponseStopPolling(response.content) if finished else response
    return render(request, template, {**admin.site.each_context(request), **context})


@admin_required
@require_POST
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(Job, pk=pk)
    if not job.is_finished:
        Job.objects.filter(pk=pk).update(cancel_requested=True)
        messages.info(request, f"Asked job #{pk} to stop; it stops after the current step.")
    return redirect("job_detail", pk=pk)
