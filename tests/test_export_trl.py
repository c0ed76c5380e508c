"""An exported snapshot trains as it is: datasets.load_dataset + TRL's DPOTrainer, one real step."""

from pathlib import Path

import pytest
from django.conf import settings

from annotation.export.dataset import export_dataset
from annotation.models import DatasetExport
from tests.labels_factory import World, profile_text

pytestmark = [pytest.mark.django_db, pytest.mark.model]


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def test_dpo_trainer_runs_a_step_on_an_exported_jsonl_with_its_provenance_columns(alice, bob, tmp_path):
    import datasets
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from training.ml.models import default_model_dir, load_tokenizer

    world = World()
    campaign = world.campaign("c")
    for index in range(4):
        comparison = world.comparison(
            world.sample(f"s{index}", documents=1),
            text_a=profile_text("Protein science", "Folding", "Docking", "Assays"),
            text_b=f"def f():\n    return {index}",
        )
        world.vote(campaign, comparison, alice, "a")
        world.vote(campaign, comparison, bob, "a")
    export = DatasetExport.objects.create(name="trl", policy="expert", test_fraction=0)
    export_dataset(export)
    train = datasets.load_dataset("json", data_files=str(Path(export.path) / "train.jsonl"), split="train",
                                  cache_dir=str(tmp_path / "hf"))
    assert train.num_rows == 4 and "votes" in train.column_names

    model_dir = str(default_model_dir(settings.MODEL_CACHE_DIR))
    args = DPOConfig(
        output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2, learning_rate=5e-5,
        # Short texts: the extraction system prompt (~230 tokens) plus one sentence of abstract and a profile.
        max_length=384, use_cpu=True, bf16=False, activation_checkpointing=False, gradient_checkpointing=False,
        report_to="none", logging_steps=1, save_strategy="no", disable_tqdm=True, dataloader_pin_memory=False,
    )
    trainer = DPOTrainer(
        model=model_dir, args=args, train_dataset=train, processing_class=load_tokenizer(model_dir),
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    trainer.train()
    (log, *_) = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.train_dataset.num_rows == 4  # no pair was dropped for length
    assert log["loss"] == pytest.approx(0.6931, abs=0.01)  # ln 2: the adapter starts as the reference
