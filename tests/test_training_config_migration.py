"""Runs stored before the configs became TRL's fields still load, so an old failed run can be resumed."""

from __future__ import annotations

import importlib

from training.ml.dpo import load_config

migration = importlib.import_module("training.migrations.0003_run_configs_as_trl_fields")

# What TrainConfig.to_dict() stored for a run on the export's test split.
OLD = {
    "dataset_path": "/media/exports/v1/train.jsonl", "output_dir": "/media/training/run-7",
    "model_name_or_path": "default", "cache_root": "/srv/models", "eval_dataset_path": "/media/exports/v1/test.jsonl",
    "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"], "beta": 0.2,
    "loss_type": "robust", "label_smoothing": 0.1, "learning_rate": 1e-4, "lr_scheduler_type": "linear",
    "warmup_steps": 0, "num_train_epochs": 1.0, "max_steps": 20, "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 2, "max_length": 2048, "precision": "fp32", "gradient_checkpointing": True,
    "seed": 42, "logging_steps": 1, "save_steps": 10, "save_total_limit": 2, "eval_steps": None,
    "resume_from_checkpoint": True,
}


def test_an_old_run_config_loads_as_the_same_run(tmp_path):
    script_args, training_args, model_args = load_config(migration.to_trl(OLD))
    assert script_args.dataset_path == OLD["dataset_path"] and script_args.cache_root == "/srv/models"
    assert script_args.resume is True and training_args.resume_from_checkpoint is None
    assert model_args.lora_target_modules == ["q_proj", "v_proj"] and model_args.lora_r == 8
    assert training_args.activation_checkpointing is True
    assert training_args.bf16 is False and model_args.dtype == "float32"
    assert training_args.loss_type == ["robust"] and training_args.learning_rate == 1e-4
    assert training_args.eval_strategy == "steps" and training_args.eval_steps == 10
    assert training_args.per_device_eval_batch_size == 1


def test_the_migration_goes_back_to_what_was_stored():
    # The same run: an eval_steps of None meant save_steps.
    assert migration.to_train_config(migration.to_trl(OLD)) == {**OLD, "eval_steps": OLD["save_steps"]}
    auto = {**OLD, "precision": "auto", "eval_dataset_path": None, "resume_from_checkpoint": "/media/run-3/checkpoint-5"}
    assert migration.to_train_config(migration.to_trl(auto)) == auto
