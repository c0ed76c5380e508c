"""``manage.py run_round --preset cpu``: one round of the loop (training.round), in this process or a worker.

By default every step runs here, in this process, through the same function its task runs (``--queue`` sends
the round to a training worker instead and follows it): a round is mostly a machine's worth of model work
done in order, and running it here needs no worker, keeps the loaded models, and ends with the figures.
"""

from __future__ import annotations

import json
import time

from django.core.management.base import BaseCommand, CommandError

from annotation.models import Generator
from training.models import Round
from training.round import POLICIES, PRESETS, run_round
from training.runs import TrainingError
from training.start import start_round


class Command(BaseCommand):
    help = "Generate → label (scoring judge) → export by policy → DPO + LoRA → evaluate against the base."

    def add_arguments(self, parser):
        parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                            help="tiny: a test of every step; cpu: ≤ 60 min on two cores; gpu: one GPU.")
        parser.add_argument("--generator", help="Generator name (default: the base model decoding as the preset says).")
        parser.add_argument("--policy", choices=POLICIES, help="high_margin: the labelling judge's clear verdicts; "
                                                               "agree: the pairs two scoring judges decide alike.")
        parser.add_argument("--label-margin", type=float, help="The labelling judge's tie margin (nats/token).")
        parser.add_argument("--candidates", type=int, help="Profiles per train sample.")
        parser.add_argument("--eval-candidates", type=int, help="Profiles per held-out sample and model.")
        parser.add_argument("--train-samples", type=int, help="At most this many train samples.")
        parser.add_argument("--heldout-samples", type=int, help="At most this many held-out samples.")
        parser.add_argument("--max-new-tokens", type=int)
        parser.add_argument("--steps", type=int, help="DPO optimiser steps.")
        parser.add_argument("--beta", type=float)
        parser.add_argument("--learning-rate", type=float)
        parser.add_argument("--lora-r", type=int)
        parser.add_argument("--name", default="")
        parser.add_argument("--queue", action="store_true",
                            help="Send the round to a training worker and follow it (default: run it here).")
        parser.add_argument("--json", action="store_true", help="Print the round's figures as JSON at the end.")

    def handle(self, *args, **options):
        preset = preset_from(options)
        generator = None
        if options["generator"]:
            generator = Generator.objects.filter(name=options["generator"]).first()
            if generator is None:
                raise CommandError(f"no generator named {options['generator']!r}")
        try:
            row = start_round(preset, generator, name=options["name"], queue=options["queue"])
        except TrainingError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Round #{row.pk} “{row.name}”: preset {preset.name}, generator {row.generator.name}, "
                          f"labels by {', '.join(j.name for j in row.labelling_panel.judges.all())}, graded by "
                          f"{row.evaluation_judge.name}; "
                          + ("sent to a training worker" if options["queue"] else "running in this process"))
        if not options["queue"]:
            run_round(row.pk, inline=True)
        row = follow(row, self.stdout)
        if options["json"]:
            self.stdout.write(json.dumps(row.results, indent=2))
        if row.status != "succeeded":
            raise CommandError(f"round {row.status}: {row.error or row.message}")


def preset_from(options: dict):
    changes = {key: options[key] for key in ("policy", "candidates", "eval_candidates", "train_samples",
                                             "heldout_samples", "max_new_tokens") if options.get(key) is not None}
    if options.get("label_margin") is not None:
        changes["label_margin"] = options["label_margin"]
    training = {key: options[option] for key, option in (("max_steps", "steps"), ("beta", "beta"),
                                                         ("learning_rate", "learning_rate"), ("lora_r", "lora_r"))
                if options.get(option) is not None}
    if "lora_r" in training:
        training["lora_alpha"] = 2 * training["lora_r"]
    return PRESETS[options["preset"]].with_changes(**changes, training=training)


def follow(row: Round, stream, poll_s: float = 5.0) -> Round:
    """Print the round's message whenever it changes, until it ends."""
    said = None
    while True:
        row.refresh_from_db()
        if row.message != said:
            stream.write(f"[{row.done}/{row.total}] {row.get_status_display()}: {row.message}")
            said = row.message
        if row.is_finished:
            return row
        time.sleep(poll_s)
