"""Model cache conversion and loading."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from training.ml import models
from training.ml.models import (
    DEFAULT_MODEL,
    GEMMA_MODEL,
    SOURCE_MARKER,
    OfflineModel,
    default_model_dir,
    offline_model,
    offline_model_dir,
    resolve_model,
)

REPO = Path(__file__).resolve().parents[2]


def test_import_is_light_and_django_free():
    code = (
        "import sys, training.ml, training.ml.models, training.ml.generate, training.ml.dpo; "
        "heavy = [m for m in ('django', 'torch', 'transformers', 'trl', 'peft') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _fake_convert(calls: list, delay: float = 0.0, fail: bool = False):
    def convert(gguf_file: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        (out_dir / "model.safetensors").write_bytes(b"partial")
        time.sleep(delay)
        if fail:
            raise RuntimeError("disk full")
        (out_dir / SOURCE_MARKER).write_text("{}")

    return convert


def test_conversion_crash_leaves_no_half_cache(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(models, "_convert_gguf", _fake_convert(calls, fail=True))
    with pytest.raises(RuntimeError, match="disk full"):
        default_model_dir(tmp_path)
    assert not (tmp_path / DEFAULT_MODEL).exists()
    assert not list(tmp_path.glob(f".{DEFAULT_MODEL}.tmp-*"))

    # A folder without the marker (written by something else, or a pre-rename crash) is not trusted.
    (tmp_path / DEFAULT_MODEL).mkdir()
    (tmp_path / f".{DEFAULT_MODEL}.tmp-stale").mkdir()
    monkeypatch.setattr(models, "_convert_gguf", _fake_convert(calls))
    target = default_model_dir(tmp_path)
    assert (target / SOURCE_MARKER).is_file()
    assert not list(tmp_path.glob(f".{DEFAULT_MODEL}.tmp-*"))


def test_a_reassembled_gguf_is_converted_and_then_removed(tmp_path, monkeypatch):
    written: list[Path] = []

    def reassemble(scratch: Path) -> Path:
        written.append(scratch / "model.gguf")
        written[-1].write_bytes(b"GGUF" * 10)
        return written[-1]

    monkeypatch.setitem(models.OFFLINE_MODELS, GEMMA_MODEL, OfflineModel(GEMMA_MODEL, "some-dist", reassemble))
    calls: list = []
    monkeypatch.setattr(models, "_convert_gguf", _fake_convert(calls))
    target = offline_model_dir(tmp_path, "gemma")
    assert target == tmp_path / GEMMA_MODEL and calls == [calls[0]]
    assert '"some-dist"' in (target / SOURCE_MARKER).read_text()
    assert not written[0].exists() and not list(tmp_path.glob(".*tmp-*"))
    assert offline_model_dir(tmp_path, GEMMA_MODEL) == target and len(calls) == 1  # converted once
    with pytest.raises(ValueError, match="unknown offline model"):
        offline_model_dir(tmp_path, "llama")


def test_concurrent_callers_convert_once(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(models, "_convert_gguf", _fake_convert(calls, delay=0.5))
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(default_model_dir(tmp_path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(results)) == 1 and (results[0] / SOURCE_MARKER).is_file()


@pytest.mark.model
def test_real_conversion_is_idempotent(model_dir, model_cache, monkeypatch):
    weights = model_dir / "model.safetensors"
    assert weights.is_file() and (model_dir / "tokenizer.json").is_file() and (model_dir / SOURCE_MARKER).is_file()
    before = weights.stat().st_mtime_ns

    def no_reconvert(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(models, "_convert_gguf", no_reconvert)
    assert default_model_dir(model_cache) == model_dir
    assert weights.stat().st_mtime_ns == before


def test_resolve_model_passes_through_paths_and_hub_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "offline_model_dir", lambda root, name: Path(root) / offline_model(name).name)
    for alias in ("", "default", DEFAULT_MODEL, None):
        assert resolve_model(alias, tmp_path) == str(tmp_path / DEFAULT_MODEL)
    for alias in ("gemma", GEMMA_MODEL):
        assert resolve_model(alias, tmp_path) == str(tmp_path / GEMMA_MODEL)
    assert resolve_model("microsoft/Phi-3-mini-128k-instruct", tmp_path) == "microsoft/Phi-3-mini-128k-instruct"
    assert resolve_model(str(tmp_path), tmp_path) == str(tmp_path)


def test_pick_device_and_dtype():
    import torch

    device = models.pick_device()
    assert device in ("cpu", "cuda")
    assert models.pick_dtype("cpu") == torch.bfloat16
    assert models.pick_dtype("cpu", training=True) == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        models._parse_dtype("int3")


@pytest.mark.model
def test_load_model_and_process_cache(model_dir, model_cache):
    models.clear_model_cache()
    model, tokenizer = models.get_model("default", model_cache, device="cpu")
    assert models.get_model("default", model_cache, device="cpu")[0] is model  # loaded once per process
    assert not model.training
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert tokenizer.chat_template  # the ChatML template survives the GGUF conversion
    models.clear_model_cache()
