"""DPO + LoRA training: TRL's parsing and its round trip, a real two-step run, failure, cancel and resume, merge,
and two processes under accelerate."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training.ml.dpo import (
    CONFIG_FILE,
    METRICS_FILE,
    check,
    config_values,
    last_checkpoint,
    load_config,
    load_pairs,
    main,
    make_parser,
    merge_adapter,
    train,
)

REPO = Path(__file__).resolve().parents[2]
LN2 = math.log(2)
ON_LOG_KEYS = {"step", "total_steps", "epoch", "loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
               "rewards/accuracies", "learning_rate", "elapsed_s"}


def tiny(dataset: Path, out: Path, model_dir: Path, **overrides):
    # Short pairs and a tiny max_length: a step takes seconds on two CPU cores.
    values = dict(dataset_path=str(dataset), output_dir=str(out), model_name_or_path=str(model_dir), max_steps=2,
                  max_length=96, per_device_train_batch_size=2)
    return load_config({**values, **overrides})


def losses(log_history):
    return [entry["loss"] for entry in log_history if "loss" in entry]


def test_the_pairs_keep_only_prompt_chosen_and_rejected(preference_file):
    dataset = load_pairs(preference_file)
    assert dataset.column_names == ["prompt", "chosen", "rejected"]
    assert len(dataset) == 6
    assert dataset[0]["chosen"] == [{"role": "assistant", "content": dataset[0]["chosen"][0]["content"]}]


def test_bad_pairs_say_where(tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = {"prompt": [{"role": "user", "content": "x"}], "chosen": [{"role": "assistant", "content": "y"}],
            "rejected": [{"role": "assistant", "content": "z"}]}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "chosen": []}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: 'chosen' must hold exactly one assistant message"):
        load_pairs(bad)
    bad.write_text(json.dumps({"prompt": good["prompt"], "chosen": good["chosen"]}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: no rejected column"):
        load_pairs(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: JSON parse error"):
        load_pairs(bad)


def test_a_config_file_sets_defaults_and_flags_win(tmp_path, preference_file):
    config = tmp_path / "run.yaml"
    config.write_text(f"dataset_path: {preference_file}\noutput_dir: {tmp_path / 'out'}\nmax_steps: 7\n"
                      "loss_type: robust\nlabel_smoothing: 0.1\nlora_r: 8\n")
    script_args, training_args, model_args = make_parser().parse_args_and_config(
        ["--config", str(config), "--max_steps", "3", "--lora_target_modules", "q_proj", "v_proj"])
    assert script_args.dataset_path == str(preference_file)
    assert training_args.max_steps == 3 and training_args.loss_type == ["robust"]
    assert training_args.label_smoothing == 0.1
    assert model_args.lora_r == 8 and model_args.lora_target_modules == ["q_proj", "v_proj"]
    # CompX's defaults where the file is silent (PLATFORM.md): a learning rate for LoRA, fp32 and use_cpu on CPU.
    assert training_args.learning_rate == 5e-5 and model_args.use_peft
    assert training_args.activation_checkpointing is False and training_args.report_to == []
    assert training_args.use_cpu and training_args.bf16 is False and model_args.dtype == "float32"


def test_a_failed_run_writes_its_metrics_and_a_config_that_reloads(preference_file, tmp_path, capsys):
    # A hub id on an offline machine: the run fails at its first step, fast, but the record of it is complete.
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"dataset_path": str(preference_file), "output_dir": str(out),
                                      "model_name_or_path": "no-such-org/no-such-model", "loss_type": "ipo", "beta": 0.3,
                                      "lora_target_modules": ["q_proj"], "eval_strategy": "steps"}))
    parsed = make_parser().parse_args_and_config(["--config", str(config), "--max_steps", "4", "--bf16", "false"])
    with pytest.raises(OSError):
        main(["--config", str(config), "--max_steps", "4", "--bf16", "false"])

    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["status"] == "failed" and metrics["error"].startswith("OSError: ")
    assert "Traceback" in metrics["traceback"] and metrics["log_history"] == []
    saved = out / CONFIG_FILE
    assert yaml.safe_load(saved.read_text())["max_steps"] == 4  # the flag, not only the file
    assert make_parser().parse_args_and_config(["--config", str(saved)]) == parsed
    assert load_config(yaml.safe_load(saved.read_text())) == parsed
    assert config_values(*load_config(config_values(*parsed))) == config_values(*parsed)


def test_bad_values_name_their_field(preference_file, tmp_path, capsys):
    base = {"dataset_path": str(preference_file), "learning_rate": 5e-5}
    check(base)
    cases = [
        ({"learning_rate": 0}, "learning_rate"),
        ({"dataset_path": str(tmp_path / "missing.jsonl")}, "dataset_path: file not found"),
        ({"dataset_path": ""}, "dataset_path: is required"),
        ({"eval_dataset_path": str(tmp_path / "missing.jsonl")}, "eval_dataset_path"),
        ({"loss_type": "exo_pair"}, "label_smoothing"),
        ({"loss_type": ["exo_pair"], "label_smoothing": 0.0}, "label_smoothing"),
        ({"lora_target_modules": ["q_proj", "lm_head"]}, "lora_target_modules"),
        ({"resume_from_checkpoint": str(tmp_path)}, "resume_from_checkpoint"),
    ]
    for overrides, says in cases:
        with pytest.raises(ValueError, match=says):
            check({**base, **overrides})
    check({**base, "loss_type": "exo_pair", "label_smoothing": 1e-3})
    with pytest.raises(ValueError, match=r"not used by the HfArgumentParser: \['lr'\]"):
        load_config({**base, "lr": 1e-4})

    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset_path", str(tmp_path / "nope.jsonl"), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "dataset_path: file not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_newest_complete_checkpoint_is_the_one_to_resume(tmp_path):
    assert last_checkpoint(tmp_path) is None
    for step, complete in [(3, True), (10, True), (12, False)]:  # checkpoint-12 was being written when it died
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-old").mkdir()
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"


@pytest.mark.model
def test_two_step_run_saves_a_reloadable_adapter(preference_file, tmp_path, model_dir, model_cache):
    import torch
    from peft import PeftModel

    from training.ml.models import load_model

    logs = []
    out = tmp_path / "run"
    result = train(*tiny(preference_file, out, model_dir), on_log=logs.append)

    assert not result.cancelled and result.global_step == 2 and result.max_steps == 2
    history = losses(result.log_history)
    assert len(history) == 2
    assert history[0] == pytest.approx(LN2, abs=1e-3)  # adapter starts at zero: policy == reference
    steps = [entry for entry in logs if entry["kind"] != "status"]
    assert [entry["step"] for entry in steps] == [1, 2]
    for entry in steps:
        assert ON_LOG_KEYS <= entry.keys()
        assert entry["total_steps"] == 2 and entry["kind"] == "train"
    assert steps[0]["loss"] == pytest.approx(LN2, abs=1e-3)
    # Between the logging steps, where the run stands: the model loaded, then each step under way.
    assert [entry["kind"] for entry in logs][0] == "status" and all(entry["message"] for entry in logs
                                                                     if entry["kind"] == "status")

    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert yaml.safe_load((out / CONFIG_FILE).read_text())["max_steps"] == 2
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["status"] == "completed" and losses(metrics["log_history"]) == history
    assert metrics["processes"] == 1 and metrics["device"] == "cpu"

    adapter = PeftModel.from_pretrained(load_model(str(model_dir), model_cache, device="cpu", dtype="fp32")[0],
                                        str(result.adapter_dir))
    lora_b = [p for name, p in adapter.named_parameters() if "lora_B" in name]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained, not the zero init
    # load_model folds the adapter into the weights: the trained layers differ from the base model's.
    tuned, _ = load_model(str(model_dir), model_cache, adapter_path=result.adapter_dir, device="cpu", dtype="fp32")
    base, _ = load_model(str(model_dir), model_cache, device="cpu", dtype="fp32")
    tuned_weights, base_weights = dict(tuned.named_parameters()), dict(base.named_parameters())
    assert not isinstance(tuned, PeftModel) and tuned_weights.keys() == base_weights.keys()
    assert any(not torch.equal(weight, base_weights[name]) for name, weight in tuned_weights.items())


@pytest.mark.model
def test_a_failure_mid_run_keeps_the_steps_it_made(preference_file, tmp_path, model_dir):
    out = tmp_path / "run"
    polls = []

    def should_stop() -> bool:  # asked after every step: the second time, the worker "loses its disk"
        polls.append(1)
        if len(polls) == 2:
            raise RuntimeError("disk full")
        return False

    with pytest.raises(RuntimeError, match="disk full"):
        train(*tiny(preference_file, out, model_dir, max_steps=3), should_stop=should_stop)
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["status"] == "failed" and metrics["error"] == "RuntimeError: disk full"
    assert metrics["global_step"] == 2 and len(losses(metrics["log_history"])) == 1


@pytest.mark.model
def test_cancel_after_first_step_then_resume(preference_file, tmp_path, model_dir):
    out = tmp_path / "run"
    script_args, training_args, model_args = tiny(preference_file, out, model_dir)
    polls = []

    def should_stop() -> bool:  # asked at the end of every optimiser step: stop at the end of step 1
        polls.append(1)
        return True

    result = train(script_args, training_args, model_args, should_stop=should_stop)
    assert len(polls) == 1
    assert result.cancelled and result.global_step == 1 and result.adapter_dir is None
    assert result.last_checkpoint == str(out / "checkpoint-1")
    assert json.loads((out / METRICS_FILE).read_text())["status"] == "cancelled"
    assert not (out / "adapter_model.safetensors").exists()

    script_args.resume = True
    resumed = train(script_args, training_args, model_args)
    assert not resumed.cancelled and resumed.global_step == 2
    history = losses(resumed.log_history)
    assert len(history) == 2 and history[0] == pytest.approx(LN2, abs=1e-3)  # step 1 comes from the checkpoint
    assert (out / "adapter_model.safetensors").is_file()
    assert yaml.safe_load((out / CONFIG_FILE).read_text())["resume"] is True


@pytest.mark.model
def test_the_command_line_trains_and_merges(preference_file, tmp_path, model_dir, model_cache, capsys):
    import torch

    from training.ml.generate import DecodingSettings, generate_batch
    from training.ml.models import load_model

    out = tmp_path / "cli"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(config_values(*tiny(preference_file, out, model_dir))))
    assert main(["--config", str(config), "--max_steps", "1", "--learning_rate", "1e-3", "--merge"]) == 0
    printed = capsys.readouterr().out
    assert "step 1/1" in printed and "done: 1/1" in printed

    merged_dir = out / "merged"
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
    # The merge function on its own writes the same standalone model.
    again = merge_adapter(model_dir, out, tmp_path / "merged-again", cache_root=model_cache, dtype="float32")
    assert (again / "model.safetensors").is_file()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.model
def test_two_processes_share_the_run_and_only_the_main_one_writes(preference_file, tmp_path, model_dir):
    # The command the README gives for a node, on two CPU processes: gloo instead of NCCL.
    out = tmp_path / "run"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "training.ml.dpo",
               "--dataset_path", str(preference_file), "--output_dir", str(out), "--model_name_or_path", str(model_dir),
               "--max_steps", "2", "--max_length", "96", "--per_device_train_batch_size", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # Its own session, so that a hang takes the launcher's workers down with it.
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        printed, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the two processes did not end within 600 s:\n" + proc.communicate()[0][-5000:])
    assert proc.returncode == 0, printed[-5000:]

    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["status"] == "completed" and metrics["processes"] == 2 and metrics["backend"] == "gloo"
    # 6 pairs, 2 per process and step: each step sees 4 of them, so one epoch is two steps.
    assert [entry["epoch"] for entry in metrics["log_history"] if "loss" in entry] == [0.5, 1.0]
    assert losses(metrics["log_history"])[0] == pytest.approx(LN2, abs=1e-3)
    # Progress and the summary come from the main process alone.
    assert printed.count("step 1/2") == 1 and printed.count("done: 2/2") == 1
    assert (out / "adapter_model.safetensors").is_file()
