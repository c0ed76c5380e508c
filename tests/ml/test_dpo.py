"""DPO + LoRA training: a real two-step run on a tiny file, cancellation, resume, config validation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from training.ml.dpo import (
    TrainConfig,
    config_from_dict,
    load_preference_jsonl,
    main,
    merge_adapter,
    train,
)

LN2 = math.log(2)
ON_LOG_KEYS = {"step", "total_steps", "epoch", "loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
               "rewards/accuracies", "learning_rate", "elapsed_s"}


def tiny_config(dataset: Path, out: Path, model_dir: Path, **overrides) -> TrainConfig:
    # Short pairs, tiny max_length, fp32: ~2 s per step on two CPU cores.
    values = dict(dataset_path=str(dataset), output_dir=str(out), model_name_or_path=str(model_dir),
                  max_steps=2, max_length=96, per_device_train_batch_size=2, precision="fp32", save_steps=50)
    values.update(overrides)
    return TrainConfig(**values)


def losses(log_history):
    return [entry["loss"] for entry in log_history if "loss" in entry]


def test_dataset_drops_provenance_columns(preference_file):
    dataset = load_preference_jsonl(preference_file)
    assert dataset.column_names == ["prompt", "chosen", "rejected"]
    assert len(dataset) == 6
    assert dataset[0]["chosen"] == [{"role": "assistant", "content": dataset[0]["chosen"][0]["content"]}]


def test_dataset_errors_say_where(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "user", "content": "x"}], "chosen": []}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        load_preference_jsonl(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_preference_jsonl(bad)


def test_bad_config_names_the_field(preference_file, tmp_path):
    base = dict(dataset_path=str(preference_file), output_dir=str(tmp_path / "out"))
    TrainConfig(**base).validate()
    cases = [
        (dict(learning_rate=0), "learning_rate"),
        (dict(learning_rate=-1e-5), "learning_rate"),
        (dict(dataset_path=str(tmp_path / "missing.jsonl")), "dataset_path"),
        (dict(dataset_path=""), "dataset_path"),
        (dict(output_dir=""), "output_dir"),
        (dict(loss_type="bogus"), "loss_type"),
        (dict(loss_type="exo_pair"), "label_smoothing"),
        (dict(precision="fp8"), "precision"),
        (dict(max_steps=0), "max_steps"),
        (dict(lora_r=0), "lora_r"),
        (dict(beta=0), "beta"),
        (dict(target_modules=["lm_head"]), "target_modules"),
    ]
    for overrides, field in cases:
        with pytest.raises(ValueError, match=field):
            TrainConfig(**{**base, **overrides}).validate()
    with pytest.raises(ValueError, match="learning_rate"):
        train(TrainConfig(**{**base, "learning_rate": 0}))
    with pytest.raises(ValueError, match="unknown field"):
        config_from_dict({**base, "lr": 1e-4})
    with pytest.raises(ValueError, match="max_steps"):
        config_from_dict({**base, "max_steps": "many"})
    for loss_type in ("sigmoid", "robust", "ipo"):
        TrainConfig(**{**base, "loss_type": loss_type}).validate()
    config = TrainConfig(**base)
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_cli_rejects_bad_config(tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"dataset_path": str(tmp_path / "nope.jsonl"), "output_dir": str(tmp_path)}))
    assert main(["--config", str(config)]) == 2
    assert "dataset_path" in capsys.readouterr().err


@pytest.mark.model
def test_two_step_run_saves_a_reloadable_adapter(preference_file, tmp_path, model_dir, model_cache):
    from peft import PeftModel

    from training.ml.models import load_model

    logs = []
    out = tmp_path / "run"
    result = train(tiny_config(preference_file, out, model_dir), on_log=logs.append)

    assert not result.cancelled and result.global_step == 2 and result.max_steps == 2
    history = losses(result.log_history)
    assert len(history) == 2
    assert history[0] == pytest.approx(LN2, abs=1e-3)  # adapter starts at zero: policy == reference
    assert len(logs) == 2 and [entry["step"] for entry in logs] == [1, 2]
    for entry in logs:
        assert ON_LOG_KEYS <= entry.keys()
        assert entry["total_steps"] == 2 and entry["kind"] == "train"
    assert logs[0]["loss"] == pytest.approx(LN2, abs=1e-3)

    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert json.loads((out / "train_config.json").read_text())["max_steps"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and losses(metrics["log_history"]) == history

    model, _ = load_model(str(model_dir), model_cache, adapter_path=result.adapter_dir, device="cpu", dtype="fp32")
    assert isinstance(model, PeftModel)
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained, not the zero init


@pytest.mark.model
def test_cancel_after_first_step_then_resume(preference_file, tmp_path, model_dir):
    out = tmp_path / "run"
    config = tiny_config(preference_file, out, model_dir)
    polls = []

    def should_stop() -> bool:  # polled at the end of every optimiser step: stop at the end of step 1
        polls.append(1)
        return True

    result = train(config, should_stop=should_stop)
    assert len(polls) == 1
    assert result.cancelled and result.global_step == 1 and result.adapter_dir is None
    assert result.last_checkpoint and Path(result.last_checkpoint).name == "checkpoint-1"
    assert json.loads((out / "metrics.json").read_text())["status"] == "cancelled"
    assert not (out / "adapter_model.safetensors").exists()

    config.resume_from_checkpoint = True
    resumed = train(config)
    assert not resumed.cancelled and resumed.global_step == 2
    history = losses(resumed.log_history)
    assert len(history) == 2 and history[0] == pytest.approx(LN2, abs=1e-3)
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.model
def test_cli_and_merge(preference_file, tmp_path, model_dir, model_cache, capsys):
    import torch

    from training.ml.generate import DecodingSettings, generate_batch
    from training.ml.models import load_model

    out = tmp_path / "cli"
    config = tmp_path / "run.json"
    config.write_text(json.dumps(tiny_config(preference_file, out, model_dir).to_dict()))
    assert main(["--config", str(config), "--set", "max_steps=1", "--set", "learning_rate=1e-3"]) == 0
    printed = capsys.readouterr().out
    assert "step 1/1" in printed and "done: 1/1" in printed

    merged_dir = merge_adapter(model_dir, out, tmp_path / "merged", cache_root=model_cache, dtype="fp32")
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "tokenizer.json").is_file()
    conversation = [[{"role": "system", "content": "Extract a competency profile."},
                     {"role": "user", "content": "Abstract 1: We study coral reefs."}]]
    settings = DecodingSettings(temperature=0, num_candidates=1, max_new_tokens=12)
    with torch.no_grad():
        peft_out = generate_batch(*load_model(str(model_dir), model_cache, adapter_path=out, device="cpu",
                                              dtype="fp32"), conversation, settings)
        merged_out = generate_batch(*load_model(str(merged_dir), model_cache, device="cpu", dtype="fp32"),
                                    conversation, settings)
    assert merged_out[0][0].text == peft_out[0][0].text
