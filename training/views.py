"""Staff pages for training runs and evaluations: live progress, artefacts, and the loop back to experts."""

from __future__ import annotations

import io
import json
import math
import zipfile

from django.contrib import admin, messages
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from annotation.jobs.liveness import mark_stale
from annotation.jobs.views import live_page
from annotation.models import Sample, Split
from annotation.roles import require_permission, staff_permission_required
from annotation.start import start_generation

from . import runs
from .charts import line_chart
from .forms import SendToExpertsForm
from .models import EvaluationRun, Round, TrainingRun
from .start import resume_training, start_merge

LOG_TAIL_LINES = 80
# training.evaluation needs the judging and numeric libraries: the URLconf imports this module in every web
# process, so the evaluation views import it when they run.


def _cancel(request: HttpRequest, row, page: str) -> HttpResponse:
    """Ask a run, an evaluation or a round to stop, and go back to its page saying what happened."""
    messages.info(request, f"{row.name}: {row.request_cancel()}.")
    return redirect(page, pk=row.pk)


def _get_run(pk: int) -> TrainingRun:
    # Opening a page is one of the moments a dead worker's run gets noticed (annotation.jobs.liveness).
    mark_stale()
    return get_object_or_404(TrainingRun.objects.select_related("export", "resumed_from", "created_by"), pk=pk)


def _log_tail(run: TrainingRun) -> str:
    path = runs.artefact_path(run, runs.LOG_FILE)
    if path is None:
        return ""
    with path.open("rb") as fh:
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - 64_000))
        lines = fh.read().decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _run_context(run: TrainingRun) -> dict:
    entries = list(run.log_entries.order_by("step"))
    metrics = run.latest_metrics or {}
    return {
        "run": run,
        "entries": entries[-15:][::-1],
        "figures": {"loss": metrics.get("loss"), "accuracy": metrics.get("rewards/accuracies"),
                    "margin": metrics.get("rewards/margins"), "chosen": metrics.get("rewards/chosen"),
                    "rejected": metrics.get("rewards/rejected"), "learning_rate": metrics.get("learning_rate"),
                    "epoch": metrics.get("epoch"), "eval": metrics.get("eval")},
        "loss_chart": line_chart([(e.step, e.loss) for e in entries], "loss", reference=math.log(2)),
        "accuracy_chart": line_chart([(e.step, e.reward_accuracy) for e in entries], "reward accuracy", (0, 1)),
        "margin_chart": line_chart([(e.step, e.reward_margin) for e in entries], "reward margin", reference=0),
        "log_tail": _log_tail(run),
        "waited_long": (timezone.now() - run.created_at).total_seconds() > 60,
        "artefacts": runs.artefacts(run),
        "has_adapter": runs.adapter_dir(run) is not None,
        "checkpoint": runs.last_complete_checkpoint(run) if run.is_resumable else None,
        "resumptions": list(run.resumptions.all()),
        "evaluations": list(run.evaluations.all()),
        "generators": list(run.generators.all()),
        "train_samples": Sample.objects.filter(split=Split.TRAIN).count(),
        "config_json": json.dumps(run.config, indent=2),  # as --config reads it, not a Python dict
        # In seconds: timesince says "0 minutes" for anything under a minute, which is every healthy heartbeat.
        "heartbeat_age_s": (timezone.now() - run.heartbeat_at).total_seconds() if run.heartbeat_at else None,
    }


@staff_permission_required("training.view_trainingrun")
@require_GET
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = _get_run(pk)
    return live_page(request, "training/run.html", "live", _run_context(run), finished=run.is_finished)


@staff_permission_required("training.run_training")
@require_POST
def run_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    return _cancel(request, _get_run(pk), "training:run")


@staff_permission_required("training.run_training")
@require_POST
def run_resume(request: HttpRequest, pk: int) -> HttpResponse:
    run = _get_run(pk)
    try:
        new = resume_training(run, user=request.user)
    except runs.TrainingError as exc:
        messages.error(request, str(exc))
        return redirect("training:run", pk=pk)
    messages.success(request, f"Resuming as {new.name}: {new.message}.")
    return redirect("training:run", pk=new.pk)


@staff_permission_required("training.run_training")
@require_POST
def run_merge(request: HttpRequest, pk: int) -> HttpResponse:
    run = _get_run(pk)
    if runs.adapter_dir(run) is None:
        messages.error(request, "This run has no adapter to merge.")
    else:
        start_merge(run)
        messages.info(request, "Merging in a training worker; the merged model appears under Artefacts when done.")
    return redirect("training:run", pk=pk)


@staff_permission_required("training.download_trainingrun")
@require_GET
def run_download(request: HttpRequest, pk: int, name: str) -> FileResponse:
    run = _get_run(pk)
    if name == "adapter.zip":
        return _adapter_zip(run)
    path = runs.artefact_path(run, name)
    if path is None:
        raise Http404("no such artefact")
    return FileResponse(path.open("rb"), as_attachment=True, filename=f"run-{run.pk}-{path.name}")


def _adapter_zip(run: TrainingRun) -> FileResponse:
    folder = runs.adapter_dir(run)
    if folder is None:
        raise Http404("this run has no adapter")
    buffer = io.BytesIO()  # an adapter is a few MB: zipping it in memory is fine
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name != runs.LOG_FILE:
                archive.write(path, f"adapter/{path.name}")
    buffer.seek(0)
    return FileResponse(buffer, as_attachment=True, filename=f"run-{run.pk}-adapter.zip")


@staff_permission_required("annotation.add_generator")
@require_POST
def run_make_generator(request: HttpRequest, pk: int) -> HttpResponse:
    run = _get_run(pk)
    try:
        generator = runs.tuned_generator(run)
    except runs.TrainingError as exc:
        messages.error(request, str(exc))
        return redirect("training:run", pk=pk)
    return _next_round(request, generator)


def _next_round(request: HttpRequest, generator) -> HttpResponse:
    if request.POST.get("generate"):
        require_permission(request.user, "annotation.run_jobs")
        job = start_generation(generator, Sample.objects.filter(split=Split.TRAIN), user=request.user)
        messages.success(request, f"{generator.name} is generating candidates for {job.total} train samples.")
        return redirect("job_detail", pk=job.pk)
    messages.success(request, f"{generator.name} is ready as a generator: select samples and "
                              "“Generate profiles” to start the next round.")
    return redirect(reverse("admin:annotation_generator_change", args=[generator.pk]))


# --- evaluations ---------------------------------------------------------------------------------------


def _get_evaluation(pk: int) -> EvaluationRun:
    mark_stale()
    return get_object_or_404(EvaluationRun.objects.select_related(
        "candidate", "baseline", "third", "judge", "training_run", "expert_campaign"), pk=pk)


def _evaluation_context(evaluation: EvaluationRun, form: SendToExpertsForm | None = None) -> dict:
    from . import evaluation as evaluations

    results = evaluation.results or {}
    experts = evaluations.expert_figures(evaluation)
    judged = results.get("versus", {}).get("baseline", {}).get("judged")
    roles = [("candidate", evaluation.candidate), ("baseline", evaluation.baseline), ("third", evaluation.third)]
    judged_pairs = len(evaluations.judged_pairs(evaluation))
    return {
        "evaluation": evaluation,
        "results": results,
        # Only the figures there are: none while the evaluation is still generating.
        "valid_rows": [(g, v) for role, g in roles if g is not None and (v := results.get("valid", {}).get(role))],
        "versus": [(role, results.get("versus", {}).get(role)) for role in ("baseline", "third")
                   if results.get("versus", {}).get(role)],
        "jobs": evaluation.sub_jobs().order_by("pk"),
        "experts": experts,
        "experts_rows": [("Judge, all judged pairs", judged), ("Judge, the same pairs", experts["judge_same_pairs"]),
                         ("Experts", experts["experts"])] if experts and judged else [],
        "judged_pairs": judged_pairs,
        "labelling_judges": list(evaluation.labelling_judges.all()),
        "same_judge": evaluation.graded_by_labelling_judge,
        # Only the figures there are: an evaluation from before these were measured has none.
        "profile_rows": [(g, p) for role, g in roles if g is not None and (p := results.get("profiles", {}).get(role))],
        "judge_rows": [(j, role, j["versus"][role]) for j in results.get("judges", []) for role in ("baseline", "third")
                       if role in j["versus"]],
        # All of them when there are fewer than the usual 20.
        "send_form": form or SendToExpertsForm(initial={"size": min(20, judged_pairs) or 20}),
    }


@staff_permission_required("training.view_evaluationrun")
@require_GET
def evaluation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    evaluation = _get_evaluation(pk)
    return live_page(request, "training/evaluation.html", "live", _evaluation_context(evaluation),
                     finished=evaluation.is_finished)


@staff_permission_required("training.run_evaluation")
@require_POST
def evaluation_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    return _cancel(request, _get_evaluation(pk), "training:evaluation")


@staff_permission_required("training.run_evaluation", "annotation.add_campaign")
@require_POST
def evaluation_send(request: HttpRequest, pk: int) -> HttpResponse:
    from . import evaluation as evaluations

    evaluation = _get_evaluation(pk)
    form = SendToExpertsForm(request.POST)
    if not form.is_valid():
        return render(request, "training/evaluation.html",
                      {**admin.site.each_context(request), **_evaluation_context(evaluation, form)}, status=400)
    try:
        campaign = evaluations.send_to_experts(evaluation, form.cleaned_data["experts"], form.cleaned_data["size"],
                                               form.cleaned_data["overlap"], user=request.user)
    except runs.TrainingError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Campaign “{campaign.name}” created with {campaign.items.count()} pairs for "
                                  f"{campaign.experts.count()} expert(s); model names are hidden from them.")
    return redirect("training:evaluation", pk=pk)


@staff_permission_required("annotation.add_generator")
@require_POST
def evaluation_make_generator(request: HttpRequest, pk: int) -> HttpResponse:
    from . import evaluation as evaluations

    evaluation = _get_evaluation(pk)
    try:
        generator = evaluations.next_round_generator(evaluation)
    except runs.TrainingError as exc:
        messages.error(request, str(exc))
        return redirect("training:evaluation", pk=pk)
    return _next_round(request, generator)


# --- rounds --------------------------------------------------------------------------------------------

ROUND_STEPS = [("generate", "Generate candidates on the train samples"), ("label", "Label pairs with the scoring judge"),
               ("export", "Export the pairs by policy"), ("train", "DPO + LoRA"),
               ("evaluate", "Evaluate tuned vs base on held-out samples")]


def _get_round(pk: int) -> Round:
    mark_stale()
    return get_object_or_404(Round.objects.select_related(
        "generator", "evaluation_judge", "labelling_panel", "export", "training_run", "evaluation"), pk=pk)


def _round_steps(row: Round) -> list[dict]:
    """Each step's row (job, export, run, evaluation) with its status, for the round page."""
    jobs = {job.pk: job for job in row.jobs()}
    step_jobs = row.steps.get("jobs", {})
    seconds = row.steps.get("seconds", {})
    rows = {"train": row.training_run, "evaluate": row.evaluation}
    found = []
    for index, (step, title) in enumerate(ROUND_STEPS):
        work = rows.get(step) or jobs.get(step_jobs.get(step))
        url = (reverse("training:run", args=[work.pk]) if step == "train" and work else
               reverse("training:evaluation", args=[work.pk]) if step == "evaluate" and work else
               reverse("job_detail", args=[work.pk]) if work else "")
        state = work.get_status_display() if work else ("done" if index < row.done else "not started")
        found.append({"step": step, "title": title, "work": work, "url": url, "state": state,
                      "progress": f"{work.done}/{work.total}" if work and work.total else "",
                      "message": work.message if work else "", "seconds": seconds.get(step)})
    return found


def _round_context(row: Round) -> dict:
    results = row.results or {}
    roles = [("candidate", "tuned"), ("baseline", "base")]
    return {
        "round": row,
        "steps": _round_steps(row),
        "labellers": list(row.labelling_panel.judges.all()) if row.labelling_panel else [],
        "results": results,
        "judge_rows": [(j, j["versus"]["baseline"]) for j in results.get("judges", []) if "baseline" in j["versus"]],
        "profile_rows": [(label, results["profiles"][role], results.get("valid", {}).get(role))
                         for role, label in roles if role in results.get("profiles", {})],
        "total_seconds": sum(results.get("seconds", {}).values()) if results else None,
    }


@staff_permission_required("training.view_round")
@require_GET
def round_detail(request: HttpRequest, pk: int) -> HttpResponse:
    row = _get_round(pk)
    return live_page(request, "training/round.html", "live", _round_context(row), finished=row.is_finished)


@staff_permission_required("training.run_round")
@require_POST
def round_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    return _cancel(request, _get_round(pk), "training:round")
