"""Fixtures for the plain ML package: no Django, no database; the real SmolLM2 from the local cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Set before transformers / huggingface_hub are imported by any test: the Hub is never reachable here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[2]

SYSTEM = {
    "role": "system",
    "content": "You extract competency profiles from scientific abstracts. Answer with a Domain line and "
               "3 to 8 competencies.",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "model: loads the real SmolLM2-135M model (slow)")


@pytest.fixture(scope="session")
def model_cache() -> Path:
    return Path(os.environ.get("COMPX_MODEL_CACHE", REPO / "var" / "models"))


@pytest.fixture(scope="session")
def model_dir(model_cache: Path) -> Path:
    from training.ml.models import default_model_dir

    return default_model_dir(model_cache)  # converts from GGUF on the very first run (~20 s)


@pytest.fixture(scope="session")
def fp32_model(model_dir: Path, model_cache: Path):
    """fp32 on CPU: bf16 matmuls round differently per batch shape, which would blur padding checks."""
    from training.ml.models import load_model

    return load_model(str(model_dir), model_cache, device="cpu", dtype="fp32")


@pytest.fixture
def conversations() -> list[list[dict[str, str]]]:
    # Different lengths on purpose, so a batch needs left padding.
    return [
        [SYSTEM, {"role": "user", "content": "Abstract 1: We train graph neural networks to predict protein folds."}],
        [SYSTEM, {"role": "user", "content": "Abstract 1: Nitrogen fixation by legume root nodules was measured at "
                  "twelve European field sites with metagenomic sequencing and isotope labelling over three years."}],
        [SYSTEM, {"role": "user", "content": "Abstract 1: Bayesian inference of galaxy cluster masses."}],
    ]


def write_preference_jsonl(path: Path, n: int = 6) -> Path:
    """A tiny conversational preference file with provenance columns that training must drop."""
    topics = ["protein folding", "soil nitrogen", "galaxy clusters", "battery cathodes", "malaria vaccines",
              "dialect speech recognition", "coral reefs", "graph algorithms"]
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            topic = topics[i % len(topics)]
            fh.write(json.dumps({
                "prompt": [{"role": "system", "content": "Extract a competency profile."},
                           {"role": "user", "content": f"Abstract 1: We study {topic}."}],
                "chosen": [{"role": "assistant",
                            "content": f'Domain: "{topic}"\n\nCompetencies:\n- Modelling: models {topic}.'}],
                "rejected": [{"role": "assistant", "content": "Domain: code\n\ndef f(): pass"}],
                "vote_id": i,
                "source": "expert",
                "judge": {"name": "panel", "agreement": 0.8},
            }) + "\n")
    return path


@pytest.fixture
def preference_file(tmp_path: Path) -> Path:
    return write_preference_jsonl(tmp_path / "train.jsonl")


@pytest.fixture
def make_preference_file(tmp_path: Path):
    def make(name: str = "pairs.jsonl", n: int = 6) -> Path:
        return write_preference_jsonl(tmp_path / name, n)

    return make
