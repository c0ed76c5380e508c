"""What a round is made of, and creating one: its presets, its judges and generator, its row (``create_round``).

Light on purpose: the admin and ``training.start`` import it in web processes; running a round
(``training.round``) needs the export, judging and generation code and their libraries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from django.db import transaction
from django.utils import timezone

from annotation.models import Generator, Judge, JudgeBackend, JudgeOrders, JudgePanel, Sample, Split
from training.ml.scoring import SCORER_PROMPT_VERSION

from .models import Round
from .runs import TrainingError, unique_name

STEPS = ("generate", "label", "export", "train", "evaluate")
POLICIES = ("high_margin", "agree")
@dataclass(frozen=True)
class Preset:
    """A round's sizes. ``train_samples``/``heldout_samples``: how many of each split (None: all).

    ``label_margin``: the labelling judge's tie margin (nats per token); above the scorer's measured default
    (0.02), so that only pairs it decides clearly become training pairs ("high margin").
    """

    name: str
    train_samples: int | None
    heldout_samples: int | None
    candidates: int  # per train sample: pairs per sample = c·(c−1)/2
    eval_candidates: int  # per held-out sample and model
    max_new_tokens: int
    temperature: float = 0.7
    policy: str = "high_margin"
    label_model: str = "default"
    label_margin: float = 0.05
    grader_model: str = "gemma"
    grader_margin: float = 0.02
    training: dict[str, Any] = field(default_factory=dict)
    # Data preparation, not the round: abstracts per sample when bench/round.py imports the demo abstracts.
    abstracts_per_sample: int = 5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_changes(self, **changes: Any) -> "Preset":
        training = {**self.training, **changes.pop("training", {})}
        return replace(self, training=training, **changes)


PRESETS = {
    # A few minutes on two cores: real models, every step, sizes that only prove the plumbing.
    # A valid profile needs room: at 128 or 160 tokens most SmolLM2 candidates are cut off or too short
    # (1 of 6 and 4 of 16 valid); at 256 about half are valid (README).
    "tiny": Preset("tiny", train_samples=2, heldout_samples=1, candidates=4, eval_candidates=1, max_new_tokens=256,
                   label_margin=0.0, grader_model="default", abstracts_per_sample=2,
                   training={"max_steps": 2, "gradient_accumulation_steps": 1, "max_length": 1024,
                             "activation_checkpointing": False, "save_steps": 50}),
    # Meant for ≤ 60 minutes on two CPU cores (measured 65 on a shared one, README): two abstracts per sample
    # (prompts of ~600 tokens instead of ~1,500); eight candidates per train sample, of which the guide keeps
    # most valid; only the pairs the labeller decides clearly (margin 0.1) train, for about one epoch; six
    # profiles per held-out sample and model.
    "cpu": Preset("cpu", train_samples=None, heldout_samples=None, candidates=8, eval_candidates=6,
                  max_new_tokens=256, abstracts_per_sample=2, label_margin=0.1,
                  training={"max_steps": 40, "gradient_accumulation_steps": 2, "max_length": 1024,
                            "activation_checkpointing": False, "learning_rate": 1e-4, "beta": 0.1, "lora_r": 16,
                            "lora_alpha": 32, "save_steps": 50}),
    # One GPU: the demo's full prompts, more candidates, longer training; bf16 is picked by the worker.
    "gpu": Preset("gpu", train_samples=None, heldout_samples=None, candidates=8, eval_candidates=10,
                  max_new_tokens=256, abstracts_per_sample=5,
                  training={"max_steps": 300, "gradient_accumulation_steps": 1, "per_device_train_batch_size": 8,
                            "max_length": 2048, "activation_checkpointing": False, "learning_rate": 5e-5,
                            "beta": 0.1, "lora_r": 32, "lora_alpha": 64, "save_steps": 100}),
}


def scoring_judge(name: str, model: str, margin: float, baseline: str = "other") -> Judge:
    """A scoring judge with these settings, made once (a judge's verdicts are only comparable under one set)."""
    judge, created = Judge.objects.get_or_create(name=name, defaults={
        "backend": JudgeBackend.SCORING, "model": model, "orders": JudgeOrders.NONE,
        "prompt_version": SCORER_PROMPT_VERSION, "score_margin": margin, "score_baseline": baseline})
    if not created and (judge.backend, judge.model, judge.score_margin, judge.score_baseline) != (
            JudgeBackend.SCORING, model, margin, baseline):
        raise TrainingError(f"judge {name!r} exists with other settings ({judge.backend}, {judge.model}, margin "
                            f"{judge.score_margin}, baseline {judge.score_baseline}); rename it or use other ones")
    return judge


def _model_label(model: str) -> str:
    return {"default": "SmolLM2", "gemma": "Gemma"}.get(model, model.rstrip("/").rsplit("/", 1)[-1])


def labelling_panel(preset: Preset) -> JudgePanel:
    """The judges whose verdicts become training pairs, as the export's panel (unanimous)."""
    label = _model_label(preset.label_model)
    judges = [scoring_judge(f"{label} PMI · margin {preset.label_margin:g}", preset.label_model,
                            preset.label_margin)]
    if preset.policy == "agree":
        # A second opinion from the same model with another baseline: the pairs both decide alike.
        judges.append(scoring_judge(f"{label} PMI · no-abstracts baseline · margin {preset.label_margin:g}",
                                    preset.label_model, preset.label_margin, baseline="none"))
    names = " + ".join(j.name for j in judges)
    panel, _ = JudgePanel.objects.get_or_create(name=f"round labels: {names}"[:100], defaults={"threshold": 1.0})
    panel.judges.set(judges)
    return panel


def evaluation_judge(preset: Preset) -> Judge:
    label = _model_label(preset.grader_model)
    # Another baseline than the labeller's when both run on one model (the tiny preset), so the two differ.
    baseline = "none" if preset.grader_model == preset.label_model else "other"
    return scoring_judge(f"{label} PMI · margin {preset.grader_margin:g} · independent", preset.grader_model,
                         preset.grader_margin, baseline=baseline)


def round_generator(preset: Preset) -> Generator:
    """The base model as the round's generator, decoding as the preset says (made once per decoding)."""
    decoding = {"backend": "local", "model": "default", "adapter_path": "", "temperature": preset.temperature,
                "top_p": 0.95, "repetition_penalty": 1.15, "max_new_tokens": preset.max_new_tokens,
                "format_guide": True}
    existing = Generator.objects.filter(**decoding).order_by("pk").first()
    if existing:
        return existing
    return Generator.objects.create(
        name=unique_name(f"SmolLM2 · t{preset.temperature:g} · {preset.max_new_tokens} tokens", Generator),
        candidates=preset.candidates, **decoding)


def create_round(preset: Preset, generator: Generator | None = None, name: str = "", user=None) -> Round:
    if preset.policy not in POLICIES:
        raise TrainingError(f"policy: one of {', '.join(POLICIES)} (got {preset.policy!r})")
    if not samples_of(Split.TRAIN, preset.train_samples):
        raise TrainingError("there are no train samples with abstracts: import documents first")
    if not samples_of(Split.HELDOUT, preset.heldout_samples):
        raise TrainingError("there are no held-out samples to evaluate on; import documents with a held-out "
                            "fraction")
    with transaction.atomic():
        return Round.objects.create(
            name=unique_name(name or f"round · {preset.name} · {timezone.now():%Y-%m-%d %H:%M}", Round),
            preset=preset.name, settings=preset.to_dict(), generator=generator or round_generator(preset),
            labelling_panel=labelling_panel(preset), evaluation_judge=evaluation_judge(preset),
            total=len(STEPS), created_by=user, message="waiting for a training worker")


def samples_of(split: str, limit: int | None) -> list[Sample]:
    rows = Sample.objects.filter(split=split).with_abstracts().order_by("pk")
    return list(rows[:limit] if limit else rows)
