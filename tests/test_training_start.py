"""Starting a run: the admin form validates every field, the command calls the same code, roles are checked."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from annotation.models import DatasetExport, ExportPolicy, JobStatus
from tests.training_factory import form_data, make_export
from training.models import TrainingRun
from training.runs import CPU_DEFAULTS

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.training_factory")]

ADD = "/admin/training/trainingrun/add/"


@pytest.fixture
def export(tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    return make_export(tmp_path / "export")


def test_the_form_offers_cpu_defaults_for_the_default_model(client_for, admin_user, export):
    page = client_for(admin_user).get(ADD).content.decode()
    assert 'value="default"' in page and 'value="q_proj,k_proj,v_proj,o_proj"' in page
    assert 'name="learning_rate" value="5e-05"' in page
    for loss in ("sigmoid", "robust", "ipo"):
        assert f'value="{loss}"' in page
    assert export.name in page


def test_posting_the_form_queues_a_run_with_the_whole_config(client_for, admin_user, export,
                                                              django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(admin_user).post(ADD, form_data(export, max_steps=3, loss_type="ipo", beta=0.3,
                                                              use_test_split=True, name="ipo try", precision="auto"))
    run = TrainingRun.objects.get()
    assert response["Location"] == f"/training/runs/{run.pk}/"
    assert len(callbacks) == 1  # the task is sent once the run row is committed
    assert run.name == "ipo try" and run.status == JobStatus.QUEUED and run.created_by == admin_user
    assert run.total == 3 and run.base_model == "default"
    config = run.config
    assert config["loss_type"] == "ipo" and config["beta"] == 0.3 and config["max_steps"] == 3
    assert config["dataset_path"].endswith("export/train.jsonl")
    assert config["eval_dataset_path"].endswith("export/test.jsonl")
    assert config["output_dir"] == run.output_dir and run.output_dir.endswith(f"training/run-{run.pk}")
    assert config["lora_target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert config["eval_strategy"] == "steps" and config["eval_steps"] == config["save_steps"]
    # Precision "auto" leaves dtype and bf16 to the worker's machine; fp32 pins them.
    assert "bf16" not in config and "dtype" not in config and "use_cpu" not in config
    assert config["activation_checkpointing"] is False  # the form's "gradient checkpointing" box, unticked


def test_the_stored_config_is_what_the_command_line_reads(client_for, admin_user, export):
    from training.ml.dpo import load_config

    client_for(admin_user).post(ADD, form_data(export, precision="fp32", target_modules="q_proj",
                                              gradient_checkpointing=True, learning_rate=1e-4))
    script_args, training_args, model_args = load_config(TrainingRun.objects.get().config)
    assert script_args.dataset_path.endswith("export/train.jsonl") and script_args.eval_dataset_path is None
    assert training_args.learning_rate == 1e-4 and training_args.activation_checkpointing is True
    assert training_args.bf16 is False and model_args.dtype == "float32"
    assert model_args.use_peft and model_args.lora_target_modules == "q_proj"  # TRL's way of storing one module


@pytest.mark.parametrize(("overrides", "field", "says"), [
    ({"learning_rate": 0}, "learning_rate", "greater than or equal"),
    ({"lora_r": 0}, "lora_r", "greater than or equal"),
    ({"max_length": 8}, "max_length", "greater than or equal"),
    ({"loss_type": "bogus"}, "loss_type", "Select a valid choice"),
    ({"precision": "fp8"}, "precision", "Select a valid choice"),
    ({"target_modules": "q_proj, lm head"}, "target_modules", "separated by commas"),
    ({"target_modules": "lm_head"}, "target_modules", "lm_head"),
    ({"model_name_or_path": "/nowhere/model"}, "model_name_or_path", "not a model folder"),
    ({"model_name_or_path": "not a model"}, "model_name_or_path", "hub id"),
    ({"loss_type": "exo_pair", "label_smoothing": 0}, "label_smoothing", "exo_pair"),
])
def test_bad_values_are_refused_on_their_field(client_for, admin_user, export, overrides, field, says):
    response = client_for(admin_user).post(ADD, form_data(export, **overrides))
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors and says in " ".join(errors[field]), errors
    assert not TrainingRun.objects.exists()


def test_exports_training_cannot_read_are_refused(client_for, admin_user, export, tmp_path):
    kto = make_export(tmp_path / "kto", name="kto")
    DatasetExport.objects.filter(pk=kto.pk).update(ties_as_kto=True)
    parquet = DatasetExport.objects.create(name="pq", policy=ExportPolicy.EXPERT, status=JobStatus.SUCCEEDED,
                                           format="parquet", path=str(tmp_path / "empty"))
    running = DatasetExport.objects.create(name="busy", policy=ExportPolicy.EXPERT, status=JobStatus.RUNNING)
    client = client_for(admin_user)
    assert "unpaired (KTO)" in str(client.post(ADD, form_data(kto)).context["form"].errors["export"])
    assert "no train.jsonl" in str(client.post(ADD, form_data(parquet)).context["form"].errors["export"])
    assert "valid choice" in str(client.post(ADD, form_data(running)).context["form"].errors["export"])
    assert not TrainingRun.objects.exists()


def test_an_export_without_train_pairs_is_refused_before_a_run_starts(client_for, admin_user, tmp_path):
    # A small campaign's pairs can all land in the test split: the form says so instead of a run failing at step 0.
    test_only = make_export(tmp_path / "test-only", name="test-only", n=0, test_n=2)
    response = client_for(admin_user).post(ADD, form_data(test_only))
    errors = str(response.context["form"].errors["export"])
    assert "no train pairs (0 train · 2 test)" in errors and "test fraction 0" in errors
    assert not TrainingRun.objects.exists()
    with pytest.raises(CommandError, match="no train pairs"):
        call_command("start_training", "--export", str(test_only.pk), "--no-wait", stdout=StringIO())


def test_the_command_starts_the_same_run(export, django_capture_on_commit_callbacks):
    out = StringIO()
    with django_capture_on_commit_callbacks() as callbacks:
        call_command("start_training", "--export", str(export.pk), "--max-steps", "4", "--loss-type", "robust",
                     "--set", "label_smoothing=0.1", "--set", "lora_alpha=8", "--no-wait", stdout=out)
    run = TrainingRun.objects.get()
    assert len(callbacks) == 1 and f"Run #{run.pk}" in out.getvalue()
    assert run.config["max_steps"] == 4 and run.config["loss_type"] == ["robust"]  # a list, as TRL's CLI reads it
    assert run.config["label_smoothing"] == 0.1 and run.config["lora_alpha"] == 8
    assert run.config["max_steps"] == 4 and isinstance(run.config["max_steps"], int)
    # Everything not given is the form's CPU default.
    assert run.config["max_length"] == CPU_DEFAULTS["max_length"]
    assert json.loads(json.dumps(run.config)) == run.config


def test_the_command_reports_bad_values(export):
    with pytest.raises(CommandError, match="learning_rate"):
        call_command("start_training", "--export", export.name, "--learning-rate", "-1", "--no-wait")
    with pytest.raises(CommandError, match="unknown field"):
        call_command("start_training", "--export", export.name, "--set", "lr=1", "--no-wait")
    with pytest.raises(CommandError, match="max_steps"):
        call_command("start_training", "--export", export.name, "--max-steps", "many", "--no-wait")
    with pytest.raises(CommandError, match="no export"):
        call_command("start_training", "--export", "nope", "--no-wait")
    assert not TrainingRun.objects.exists()


@pytest.mark.parametrize("persona", ["alice", "charlie"])
def test_only_admins_can_start_runs(client_for, request, persona, export):
    client = client_for(request.getfixturevalue(persona))
    response = client.post(ADD, form_data(export))
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert not TrainingRun.objects.exists()


def test_anonymous_users_cannot_start_runs(client, export):
    assert client.post(ADD, form_data(export))["Location"].startswith("/admin/login/")
    assert not TrainingRun.objects.exists()
