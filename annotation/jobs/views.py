"""A job's live page (progress, parameters, cancel) and ``live_page``, the self-polling page training uses too."""

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseStopPolling

from ..models import Job
from ..roles import staff_permission_required
from .liveness import mark_stale


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


@staff_permission_required("annotation.view_job")
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    # Opening (or polling) the page is one of the moments a dead worker's job gets noticed (annotation.jobs.liveness).
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


@staff_permission_required("annotation.run_jobs")
@require_POST
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(Job, pk=pk)
    messages.info(request, f"Job #{pk}: {job.request_cancel()}.")
    return redirect("job_detail", pk=pk)
