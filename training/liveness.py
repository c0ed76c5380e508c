"""Training runs and evaluations are watched like jobs: heartbeats while alive, failed with the reason when
their worker died (the mechanism is ``annotation.jobs.liveness``; this module registers the two models and says
what to do next). The training app imports it on start (``TrainingConfig.ready``), so every process that
looks for dead workers knows these models.
"""

from __future__ import annotations

from annotation.jobs.liveness import (  # noqa: F401  (the names training code and commands use)
    Heartbeat,
    mark_stale,
    mark_worker_restarted,
    start_watchdog,
    watch,
)

from .models import EvaluationRun, TrainingRun

watch(TrainingRun, where=lambda run: f" at step {run.step} of {run.total_steps}",
      hint=lambda run: "Resume the run to continue from its last checkpoint.")
watch(EvaluationRun, hint=lambda evaluation: "Start it again: generation fills in only what is missing.")
