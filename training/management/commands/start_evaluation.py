"""``manage.py start_evaluation --run ID --judge NAME``: the admin's "Evaluate" form, from a shell."""

import time

from django.core.management.base import BaseCommand, CommandError

from annotation.models import Generator, Judge
from training.evaluation import headline
from training.start import start_evaluation
from training.models import TrainingRun
from training.runs import TrainingError


class Command(BaseCommand):
    help = "Evaluate a tuned model against its base (and optionally a third model) on held-out samples."

    def add_arguments(self, parser):
        parser.add_argument("--run", type=int, help="Training run id: its adapter is the candidate.")
        parser.add_argument("--candidate", help="Or a candidate generator name.")
        parser.add_argument("--baseline", help="Baseline generator name (default: the run's base model).")
        parser.add_argument("--third", help="Optional third generator name.")
        parser.add_argument("--judge", help="Judge name (default: the independent scoring judge, one that did not "
                                             "label the run's training data).")
        parser.add_argument("--allow-same-judge", action="store_true",
                            help="Grade with a judge that labelled the training data anyway (the page warns).")
        parser.add_argument("--samples", type=int, default=20, help="At most this many held-out samples.")
        parser.add_argument("--candidates", type=int, default=1, help="Profiles per sample and model.")
        parser.add_argument("--name", default="")
        parser.add_argument("--no-wait", action="store_true")

    def handle(self, *args, **options):
        def generator(name):
            if not name:
                return None
            found = Generator.objects.filter(name=name).first()
            if found is None:
                raise CommandError(f"no generator named {name!r}")
            return found

        judge = Judge.objects.filter(name=options["judge"]).first() if options["judge"] else None
        if options["judge"] and judge is None:
            raise CommandError(f"no judge named {options['judge']!r}")
        run = TrainingRun.objects.filter(pk=options["run"]).first() if options["run"] else None
        try:
            evaluation = start_evaluation(
                judge, training_run=run, candidate=generator(options["candidate"]),
                baseline=generator(options["baseline"]), third=generator(options["third"]),
                sample_limit=options["samples"], candidates=options["candidates"], name=options["name"],
                allow_same_judge=options["allow_same_judge"])
        except TrainingError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Evaluation #{evaluation.pk} “{evaluation.name}” queued on the 'training' queue.")
        if options["no_wait"]:
            return
        last = None
        while not evaluation.is_finished:
            time.sleep(2)
            evaluation.refresh_from_db()
            if evaluation.message != last:
                self.stderr.write(f"{evaluation.status}: {evaluation.message}")
                last = evaluation.message
        if evaluation.status != "succeeded":
            raise CommandError(f"evaluation #{evaluation.pk} {evaluation.status}: {evaluation.error or evaluation.message}")
        self.stdout.write(self.style.SUCCESS(headline(evaluation.results)))
