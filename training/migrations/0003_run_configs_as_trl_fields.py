# Stored run configs were training.ml.dpo.TrainConfig fields; they are now the fields TrlParser reads (DPOConfig,
# ModelConfig, training.ml.dpo.ScriptArguments), so that an old failed or cancelled run can still be resumed.

from django.db import migrations

PRECISIONS = {"fp32": {"bf16": False, "dtype": "float32"}, "bf16": {"bf16": True, "dtype": "bfloat16"}}


def to_trl(config: dict) -> dict:
    config = dict(config)
    if "target_modules" in config:
        config["lora_target_modules"] = config.pop("target_modules")
    if "gradient_checkpointing" in config:
        config["activation_checkpointing"] = config.pop("gradient_checkpointing")
    config.update(PRECISIONS.get(config.pop("precision", "auto"), {}))
    if config.get("eval_dataset_path"):
        config.update(eval_strategy="steps", eval_steps=config.get("eval_steps") or config.get("save_steps", 50),
                      per_device_eval_batch_size=config.get("per_device_train_batch_size", 2))
    if config.get("resume_from_checkpoint") is True:
        config["resume"] = True
    if config.get("resume_from_checkpoint") in (True, False, ""):
        config["resume_from_checkpoint"] = None
    return config


def to_train_config(config: dict) -> dict:
    config = dict(config)
    if "lora_target_modules" in config:
        modules = config.pop("lora_target_modules")
        config["target_modules"] = [modules] if isinstance(modules, str) else modules
    if "activation_checkpointing" in config:
        config["gradient_checkpointing"] = config.pop("activation_checkpointing")
    config.pop("bf16", None)
    config["precision"] = {"float32": "fp32", "bfloat16": "bf16"}.get(config.pop("dtype", None), "auto")
    for key in ("eval_strategy", "per_device_eval_batch_size"):
        config.pop(key, None)
    if isinstance(config.get("loss_type"), list):
        config["loss_type"] = config["loss_type"][0]
    if config.pop("resume", False):
        config["resume_from_checkpoint"] = True
    return config


def convert(apps, convert_one):
    TrainingRun = apps.get_model("training", "TrainingRun")
    for run in TrainingRun.objects.exclude(config={}).only("pk", "config"):
        TrainingRun.objects.filter(pk=run.pk).update(config=convert_one(run.config))


class Migration(migrations.Migration):
    dependencies = [("training", "0002_liveness_and_progress")]

    operations = [
        migrations.RunPython(lambda apps, schema: convert(apps, to_trl), lambda apps, schema: convert(apps, to_train_config)),
    ]
