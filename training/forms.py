"""Forms for starting training runs and evaluations, and for sending an evaluation to experts."""

from __future__ import annotations

import re
from pathlib import Path

from django import forms
from django.contrib.auth import get_user_model

from annotation.models import Backend, DatasetExport, Generator, JobStatus, Judge
from annotation.roles import EXPERTS_GROUP
from training.ml.dpo import PRECISIONS

from .models import TrainingRun
from .grading import check_grader, independent_judge, provenance
from .runs import CPU_DEFAULTS, TrainingError, build_config, export_files

# A hub id ("org/name"); anything else that is not "default" must be a local model folder.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LOSS_LABELS = {
    "sigmoid": "sigmoid (standard DPO)",
    "robust": "robust (cDPO-style, for noisy labels: set label smoothing)",
    "ipo": "IPO (bounded, resists overfitting)",
    "hinge": "hinge (SLiC)",
}
# DPOConfig.loss_type values of TRL 1.16 (trl/trainer/dpo_config.py).
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
# Config fields (DPOConfig, ModelConfig) the form edits besides precision, in the order it shows them ...
CONFIG_FIELDS = [
    "model_name_or_path", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "beta", "loss_type",
    "label_smoothing", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_length", "gradient_checkpointing", "seed", "save_steps",
]
# ... under their form names where the config's differ.
CONFIG_KEYS = {"target_modules": "lora_target_modules", "gradient_checkpointing": "activation_checkpointing"}
FORM_FIELDS = {key: name for name, key in CONFIG_KEYS.items()}


class StartTrainingForm(forms.Form):
    export = forms.ModelChoiceField(queryset=DatasetExport.objects.filter(status=JobStatus.SUCCEEDED),
                                    help_text="A frozen dataset snapshot (its train.jsonl).")
    name = forms.CharField(max_length=90, required=False, help_text="Empty: export · model · date.")
    model_name_or_path = forms.CharField(
        label="Base model", max_length=300, initial="default",
        help_text='"default" is the offline SmolLM2-135M-Instruct; or a local model folder on the worker; or a hub '
                  "id such as microsoft/Phi-3-mini-128k-instruct (the worker needs it cached or network access).")
    lora_r = forms.IntegerField(label="LoRA r", min_value=1, max_value=512)
    lora_alpha = forms.IntegerField(label="LoRA alpha", min_value=1, max_value=1024)
    lora_dropout = forms.FloatField(label="LoRA dropout", min_value=0, max_value=0.9)
    target_modules = forms.CharField(label="LoRA target modules", max_length=300,
                                     help_text="Comma-separated module names, e.g. q_proj,k_proj,v_proj,o_proj.")
    beta = forms.FloatField(label="DPO beta", min_value=0.001, max_value=10,
                            help_text="How far the tuned model may move from the base: lower moves further.")
    loss_type = forms.ChoiceField(choices=[(t, LOSS_LABELS.get(t, t)) for t in LOSS_TYPES])
    label_smoothing = forms.FloatField(min_value=0, max_value=0.49,
                                       help_text="robust loss: the share of labels you believe are flipped.")
    learning_rate = forms.FloatField(min_value=1e-8, max_value=1e-2)
    num_train_epochs = forms.FloatField(label="Epochs", min_value=0.01, max_value=100)
    max_steps = forms.IntegerField(min_value=1, required=False,
                                   help_text="Optimiser steps; overrides epochs when set.")
    per_device_train_batch_size = forms.IntegerField(label="Batch size", min_value=1, max_value=256)
    gradient_accumulation_steps = forms.IntegerField(min_value=1, max_value=256)
    max_length = forms.IntegerField(min_value=64, max_value=131072,
                                    help_text="Tokens of prompt + answer; pairs whose prompt fills it are dropped.")
    precision = forms.ChoiceField(choices=[(p, p) for p in PRECISIONS], initial="auto",
                                  help_text="auto: bf16 on a GPU that supports it, fp32 elsewhere.")
    gradient_checkpointing = forms.BooleanField(required=False, help_text="Less memory, ~30% slower.")
    seed = forms.IntegerField(min_value=0)
    save_steps = forms.IntegerField(min_value=1, help_text="Checkpoint every N steps: what a resume starts from.")
    use_test_split = forms.BooleanField(required=False, initial=False,
                                        help_text="Also report loss and reward accuracy on the export's test pairs "
                                                  "at every checkpoint (slower).")

    # How the template groups the fields.
    GROUPS = [
        ("Data and model", ["export", "name", "model_name_or_path", "use_test_split"]),
        ("LoRA", ["lora_r", "lora_alpha", "lora_dropout", "target_modules"]),
        ("DPO", ["loss_type", "beta", "label_smoothing"]),
        ("Optimisation", ["learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                          "gradient_accumulation_steps", "max_length", "precision", "gradient_checkpointing", "seed",
                          "save_steps"]),
    ]

    def groups(self):
        return [(title, [self[name] for name in names]) for title, names in self.GROUPS]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in CONFIG_FIELDS:
            default = CPU_DEFAULTS[CONFIG_KEYS.get(name, name)]
            self.fields[name].initial = ",".join(default) if isinstance(default, list) else (
                None if name == "max_steps" and default == -1 else default)

    def clean_model_name_or_path(self) -> str:
        value = self.cleaned_data["model_name_or_path"].strip()
        if value in ("", "default"):
            return "default"
        if value.startswith(("/", ".", "~")):
            folder = Path(value).expanduser()
            if not (folder / "config.json").is_file():
                raise forms.ValidationError(f"{folder} is not a model folder (no config.json there)")
            return str(folder)
        if not HUB_ID.match(value):
            raise forms.ValidationError('Use "default", an absolute path to a model folder, or a hub id like org/name.')
        return value

    def clean_target_modules(self) -> list[str]:
        modules = [m.strip() for m in self.cleaned_data["target_modules"].split(",") if m.strip()]
        if not modules or not all(re.fullmatch(r"[\w.]+", m) for m in modules):
            raise forms.ValidationError("Give module names separated by commas, e.g. q_proj,v_proj.")
        return modules

    def clean_export(self) -> DatasetExport:
        export = self.cleaned_data["export"]
        try:
            export_files(export)
        except TrainingError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return export

    def config_values(self) -> dict:
        values = {CONFIG_KEYS.get(name, name): self.cleaned_data[name] for name in CONFIG_FIELDS}
        values["max_steps"] = values["max_steps"] or -1
        return {**values, **PRECISIONS[self.cleaned_data["precision"]]}

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            build_config(cleaned["export"], self.config_values(), cleaned["use_test_split"])
        except (ValueError, TrainingError) as exc:
            # training.ml.dpo.check names the config field first: "<field>: why".
            match = re.match(r"(\w+):", str(exc))
            field = FORM_FIELDS.get(match.group(1), match.group(1)) if match else None
            self.add_error(field if field in self.fields else None, str(exc))
        return cleaned


class EvaluationForm(forms.Form):
    training_run = forms.ModelChoiceField(
        queryset=TrainingRun.objects.filter(status=JobStatus.SUCCEEDED), required=False,
        help_text="Its adapter on its base model becomes the candidate generator.")
    candidate = forms.ModelChoiceField(queryset=Generator.objects.exclude(backend=Backend.IMPORTED), required=False,
                                       help_text="Or any generator as the candidate (instead of a run).")
    baseline = forms.ModelChoiceField(queryset=Generator.objects.all(), required=False,
                                      help_text="Empty: the run's base model with default decoding. The tuned model "
                                                "copies the baseline's decoding settings.")
    third = forms.ModelChoiceField(queryset=Generator.objects.all(), required=False,
                                   help_text="Optional: e.g. a larger model behind an OpenAI-compatible endpoint.")
    judge = forms.ModelChoiceField(
        queryset=Judge.objects.all(), required=False,
        help_text="Empty: the independent scoring judge (one that did not label the run's training data). The "
                  "judges that labelled the training data also grade the same pairs, shown apart.")
    allow_same_judge = forms.BooleanField(
        required=False, label="Grade with the labelling judge anyway",
        help_text="Only on purpose: a judge the model was tuned towards measures the fit, not an improvement. "
                  "The evaluation page then warns that its figure is not independent.")
    sample_limit = forms.IntegerField(min_value=1, max_value=10_000, initial=20, label="Held-out samples")
    candidates = forms.IntegerField(min_value=1, max_value=16, initial=1, label="Profiles per sample and model",
                                    help_text="More pairs per sample narrow the interval.")
    name = forms.CharField(max_length=90, required=False)

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("training_run") and not cleaned.get("candidate"):
            raise forms.ValidationError("Choose a training run or a candidate generator.")
        if not cleaned.get("training_run") and not cleaned.get("baseline"):
            self.add_error("baseline", "Without a training run, choose the baseline.")
        if self.errors:
            return cleaned
        run = cleaned.get("training_run") or cleaned["candidate"].source_run
        labelled_by = provenance(run)
        try:
            cleaned["judge"] = cleaned.get("judge") or independent_judge(labelled_by)
            check_grader(cleaned["judge"], labelled_by, cleaned.get("allow_same_judge", False))
        except TrainingError as exc:
            self.add_error("judge", str(exc))
        return cleaned


def experts_queryset():
    return get_user_model().objects.filter(groups__name=EXPERTS_GROUP, is_active=True).order_by("username")


class SendToExpertsForm(forms.Form):
    size = forms.IntegerField(min_value=1, max_value=1000, initial=20, label="Pairs",
                              help_text="Drawn at random from the judged tuned-vs-base pairs.")
    experts = forms.ModelMultipleChoiceField(queryset=experts_queryset(), widget=forms.CheckboxSelectMultiple)
    overlap = forms.IntegerField(min_value=1, max_value=10, initial=1, help_text="Experts per pair.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["experts"].queryset = experts_queryset()


class RoundForm(forms.Form):
    preset = forms.ChoiceField(choices=[("cpu", "cpu: ≤ 60 minutes on two CPU cores"), ("gpu", "gpu: one GPU"),
                                        ("tiny", "tiny: every step at toy sizes (minutes)")], initial="cpu")
    generator = forms.ModelChoiceField(
        queryset=Generator.objects.filter(backend=Backend.LOCAL), required=False,
        help_text="Empty: the base model, decoding as the preset says. The tuned model decodes as this one.")
    policy = forms.ChoiceField(choices=[("high_margin", "High margin: pairs the labelling judge decides clearly"),
                                        ("agree", "Two judges agree: pairs two scoring judges decide alike")],
                               initial="high_margin")
    name = forms.CharField(max_length=90, required=False)

    def chosen_preset(self):
        from .round import PRESETS  # the round's sizes; loaded only when a round is started

        return PRESETS[self.cleaned_data["preset"]].with_changes(policy=self.cleaned_data["policy"])
