"""Annotation: documents → candidate profiles → judged comparisons → expert votes → agreement → DPO datasets.

Other apps (training) use annotation only through ``PUBLIC`` below; tests/test_layout.py holds them to it.
"""

PUBLIC = {
    "annotation.models": "*",  # every model, ``Work`` (the job lifecycle) and the choices
    "annotation.jobs.lifecycle": {"create_job", "run_job", "WorkRunner", "Cancelled", "Lost"},  # run work in this worker
    "annotation.jobs.liveness": {"Heartbeat", "mark_stale"},  # keep a row alive; fail rows whose worker died
    "annotation.jobs.eta": {"add_point"},  # a progress point for a row's live rate and ETA
    "annotation.jobs.slots": {"would_wait_on_itself"},  # whether waiting for a task here could never end
    "annotation.jobs.views": {"live_page"},  # a staff page that polls itself while the work runs
    "annotation.profiles.generation": {"run_generation"},  # the generation job's work
    "annotation.judging.strategies": {"run_judging"},  # the judging job's work
    "annotation.export.dataset": {"run_export_task"},  # the export job's work
    "annotation.start": {"start_generation"},  # queue a generation job
    "annotation.roles": {"staff_permission_required", "require_permission", "EXPERTS_GROUP"},
    "annotation.stats": {"win_rate", "wilson_interval"},
}
